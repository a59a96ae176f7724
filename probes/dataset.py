"""Labelled examples for probing: token ids, the position to read, a label, a group and a word type.

``groups`` keep related examples (e.g. the clean and corrupt version of one prompt pair) on the
same side of every train/test split; ``word_types`` (the token read, by default) carry the
control task's random labels (Hewitt & Liang).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interp.jsonl import read_jsonl
from interp.model import Model
from interp.tasks import Task


class ProbeDataError(ValueError):
    """A labelled dataset that cannot be probed."""


@dataclass
class ProbeDataset:
    """``tokens`` [n, pos] (right-padded with ``pad``), ``positions`` [n] (index read per example),
    ``labels`` [n] ints, ``groups`` [n] ints, ``word_types`` [n] ints, ``label_names`` by label."""

    name: str
    tokens: torch.Tensor
    positions: torch.Tensor
    labels: np.ndarray
    groups: np.ndarray
    word_types: np.ndarray
    label_names: list[str]

    def __post_init__(self) -> None:
        n = len(self.tokens)
        for field_name in ("positions", "labels", "groups", "word_types"):
            if len(getattr(self, field_name)) != n:
                raise ProbeDataError(f"dataset {self.name!r}: {field_name} has {len(getattr(self, field_name))} "
                                     f"entries for {n} examples")
        if len(np.unique(self.labels)) < 2:
            raise ProbeDataError(f"dataset {self.name!r} has a single label; a probe needs at least two")
        if len(np.unique(self.groups)) < 2:
            raise ProbeDataError(f"dataset {self.name!r} has a single group; train and test need different groups")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_task(cls, task: Task) -> "ProbeDataset":
        """Clean (label 1) vs corrupt (label 0) prompts of a task, read at the last position; each
        pair is one group, so no prompt pair is in both train and test. For IOI this asks which
        name is repeated; for greater-than, which start year the prompt has.

        The word type of an example (what the control task assigns random labels to) is its token
        where the pair differs (e.g. the repeated name), so selectivity measures what the probe
        reads beyond the identity of that token; pairs that do not differ fall back to the last token.
        """
        n = len(task)
        tokens = torch.cat([task.clean_tokens, task.corrupt_tokens]).cpu()
        last = torch.full((2 * n,), task.n_positions - 1)
        labels = np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]
        groups = np.r_[np.arange(n), np.arange(n)]
        differs = (task.clean_tokens != task.corrupt_tokens).cpu()
        where = torch.where(differs.any(1), differs.int().argmax(1), task.n_positions - 1).repeat(2)
        word_types = tokens[torch.arange(2 * n), where].numpy().copy()
        return cls(f"{task.name}:clean-vs-corrupt", tokens, last, labels, groups, word_types, ["corrupt", "clean"])

    @classmethod
    def from_jsonl(cls, model: Model, path: str | Path) -> "ProbeDataset":
        """One JSON object per line: ``text``, ``label`` (any string or number), optional ``group``
        (default: the line) and ``position`` (token index read; default the last token)."""
        path = Path(path)
        if not path.is_file():
            raise ProbeDataError(f"probe dataset not found: {path}")
        rows = read_jsonl(path, ProbeDataError, ("text", "label"))
        ids = [model.tokenizer(r["text"], add_special_tokens=True)["input_ids"] for r in rows]
        width = max(len(i) for i in ids)
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        tokens = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
        positions = []
        for number, (row, i) in enumerate(zip(rows, ids)):
            position = int(row.get("position", len(i) - 1))
            if not -len(i) <= position < len(i):
                raise ProbeDataError(f"row {number} of {path}: position {position} is outside its {len(i)} tokens")
            positions.append(position % len(i))
        names = sorted({str(r["label"]) for r in rows})
        labels = np.array([names.index(str(r["label"])) for r in rows])
        group_names = [str(r.get("group", k)) for k, r in enumerate(rows)]
        groups = np.unique(group_names, return_inverse=True)[1]
        positions_t = torch.tensor(positions)
        word_types = tokens[torch.arange(len(tokens)), positions_t].numpy().copy()
        return cls(path.stem, tokens, positions_t, labels, groups, word_types, names)
