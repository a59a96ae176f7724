"""Token positions shared by prompts of different lengths.

A position-resolved sweep (``heads_pos``, ``resid``, ``*_pos``) needs one set of positions that
means something in every prompt. A :class:`PositionFrame` gives it, in one of three kinds:

* ``"start"``: position p is each prompt's p-th token (``L5.H3@3``);
* ``"end"``: position -k is each prompt's k-th token from its end (``L5.H3@-1`` is every prompt's
  last token);
* ``"named"``: positions the task names in each prompt (IOI: ``L5.H3@S2``; a JSONL task's optional
  ``positions`` field), in the order the task gives them.

``"auto"`` is ``"start"`` when every prompt has the same length (so component names and numbers
stay what they always were) and ``"end"`` otherwise. Whatever the kind, any component's position
resolves through :meth:`PositionFrame.rows` to one token per row of the padded batch, or to -1
in a row whose prompt has no such token (a prompt shorter than ``@-12``): there the component does
not exist, and analyses leave that prompt out of its mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FRAMES = ("auto", "start", "end", "named")


class PositionError(ValueError):
    """A position that no prompt has, or a named position a prompt lacks."""


@dataclass(frozen=True)
class PositionFrame:
    """The positions of a sweep: ``slots`` (Component positions: ints or names), one ``labels``
    entry per slot for figures, and ``index`` [rows, slots]: the token each slot is in each row of
    the padded batch (-1 where that row's prompt has no such token).

    ``starts`` / ``ends`` [rows]: where each row's prompt begins and ends (exclusive) in the padded
    row; ``names`` [prompts] maps each prompt's named positions to token offsets in the prompt;
    ``row_prompt`` [rows]: the prompt of each row."""

    kind: str
    slots: tuple
    labels: tuple[str, ...]
    index: torch.Tensor
    starts: torch.Tensor
    ends: torch.Tensor
    names: tuple[dict, ...]
    row_prompt: torch.Tensor

    def rows(self, position: int | str) -> torch.Tensor:
        """The token [rows] of ``position`` in each row (-1 where its prompt has none)."""
        if isinstance(position, str):
            return named_rows(position, self.names, self.starts, self.row_prompt)
        lengths = self.ends - self.starts
        offset = torch.full_like(lengths, position) if position >= 0 else lengths + position
        inside = (offset >= 0) & (offset < lengths)
        return torch.where(inside, self.starts + offset, torch.full_like(offset, -1))

    def check(self, position: int | str, component: str) -> None:
        """A one-line :class:`PositionError` if no prompt has ``position`` (or a prompt lacks a named one)."""
        rows = self.rows(position)  # named positions raise there, naming the prompt
        if not bool((rows >= 0).any()):
            longest = int((self.ends - self.starts).max())
            raise PositionError(f"component {component} is out of range: the longest prompt has {longest} tokens")


def named_rows(name: str, names: tuple[dict, ...], starts: torch.Tensor, row_prompt: torch.Tensor) -> torch.Tensor:
    """The token [rows] of the named position ``name`` in each row."""
    if not any(names):
        raise PositionError(f"position @{name} is a named position, and this task names none "
                            "(IOI names S1, IO, S2, END; a JSONL task may give a 'positions' field)")
    offsets = []
    for prompt in row_prompt.tolist():
        if name not in names[prompt]:
            known = ", ".join(sorted(names[prompt])) or "none"
            raise PositionError(f"prompt {prompt} has no named position {name!r} (it names {known})")
        offsets.append(names[prompt][name])
    return starts + torch.tensor(offsets, dtype=torch.long, device=starts.device)


def build_frame(kind: str, starts: torch.Tensor, ends: torch.Tensor, names: tuple[dict, ...], row_prompt: torch.Tensor,
                first_tokens: list[str]) -> PositionFrame:
    """The frame of ``kind`` for rows whose prompts span ``starts`` .. ``ends`` (exclusive);
    ``first_tokens`` are the first prompt's tokens as strings (for labels)."""
    if kind not in FRAMES:
        raise PositionError(f"unknown position frame {kind!r}; known: {', '.join(FRAMES)}")
    lengths = ends - starts
    longest = int(lengths.max())
    if kind == "auto":
        kind = "start" if bool((lengths == longest).all()) else "end"
    first = first_tokens
    if kind == "start":
        slots: tuple = tuple(range(longest))
        labels = tuple(f"{p}: {first[p]!r}"[:24] if p < len(first) else str(p) for p in slots)
    elif kind == "end":
        slots = tuple(range(-longest, 0))
        labels = tuple(f"{p}: {first[len(first) + p]!r}"[:24] if len(first) + p >= 0 else str(p) for p in slots)
    else:
        order: list[str] = []
        for prompt_names in names:
            order += [name for name in prompt_names if name not in order]
        if not order:
            raise PositionError("--positions named needs a task that names positions (IOI names S1, IO, S2, END; "
                                "a JSONL task may give a 'positions' field)")
        slots = tuple(order)
        labels = tuple(order)
    frame = PositionFrame(kind, slots, labels, torch.empty(0), starts, ends, names, row_prompt)
    index = torch.stack([frame.rows(slot) for slot in slots], dim=1) if slots else torch.empty(len(starts), 0, dtype=torch.long)
    return PositionFrame(kind, slots, labels, index, starts, ends, names, row_prompt)
