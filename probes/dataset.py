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

from interp.batch import Tokens, pad_id
from interp.jsonl import read_jsonl
from interp.model import Model
from interp.tasks import Task


class ProbeDataError(ValueError):
    """A labelled dataset that cannot be probed."""


@dataclass
class ProbeDataset:
    """``tokens`` [n, pos] (right-padded), ``mask`` [n, pos] (True = a real token; None when
    nothing is padded), ``positions`` [n] (index read per example, always a real token),
    ``labels`` [n] ints, ``groups`` [n] ints, ``word_types`` [n] ints, ``label_names`` by label."""

    name: str
    tokens: torch.Tensor
    positions: torch.Tensor
    labels: np.ndarray
    groups: np.ndarray
    word_types: np.ndarray
    label_names: list[str]
    mask: torch.Tensor | None = None

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
        """Clean (label 1) vs corrupt (label 0) prompts of a task, each read at its own last token;
        each pair is one group, so no prompt pair is in both train and test. For IOI this asks
        which name is repeated; for greater-than, which start year the prompt has.

        The word type of an example (what the control task assigns random labels to) is its token
        where the pair differs (e.g. the repeated name), so selectivity measures what the probe
        reads beyond the identity of that token; pairs that do not differ fall back to the last token.
        """
        if not task.has_corrupt:
            raise ProbeDataError(f"task {task.name!r} has no corrupt prompts to probe against its clean ones")
        n = len(task)
        prompts = list(task.prompt_ids) + list(task.corrupt_ids)
        padded = Tokens.pad(prompts, task.pad_token, "right")
        lengths = torch.tensor([len(p) for p in prompts])
        labels = np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]
        groups = np.r_[np.arange(n), np.arange(n)]
        where = []
        for clean, corrupt in zip(task.prompt_ids, task.corrupt_ids):
            differs = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
            where.append(differs[0] if differs else len(clean) - 1)
        where_t = torch.tensor(where).repeat(2)
        word_types = padded.ids[torch.arange(2 * n), where_t].numpy().copy()
        return cls(f"{task.name}:clean-vs-corrupt", padded.ids, lengths - 1, labels, groups, word_types,
                   ["corrupt", "clean"], padded.mask)

    @classmethod
    def from_jsonl(cls, model: Model, path: str | Path) -> "ProbeDataset":
        """One JSON object per line: ``text``, ``label`` (any string or number), optional ``group``
        (default: the line) and ``position`` (token index read; default the last token)."""
        path = Path(path)
        if not path.is_file():
            raise ProbeDataError(f"probe dataset not found: {path}")
        rows = read_jsonl(path, ProbeDataError, ("text", "label"))
        ids = [model.tokenizer(r["text"], add_special_tokens=True)["input_ids"] for r in rows]
        empty = next((number for number, i in enumerate(ids) if not i), None)
        if empty is not None:
            raise ProbeDataError(f"row {empty} of {path}: field 'text' has no tokens")
        padded = Tokens.pad(ids, pad_id(model.tokenizer), "right")
        tokens = padded.ids
        positions = []
        for number, (row, i) in enumerate(zip(rows, ids)):
            position = row.get("position", len(i) - 1)
            if isinstance(position, bool) or not isinstance(position, int):
                raise ProbeDataError(f"row {number} of {path}: field 'position' must be a token index, got {position!r}")
            if not -len(i) <= position < len(i):
                raise ProbeDataError(f"row {number} of {path}: position {position} is outside its {len(i)} tokens")
            positions.append(position % len(i))
        names = sorted({str(r["label"]) for r in rows})
        labels = np.array([names.index(str(r["label"])) for r in rows])
        group_names = [str(r.get("group", k)) for k, r in enumerate(rows)]
        groups = np.unique(group_names, return_inverse=True)[1]
        positions_t = torch.tensor(positions)
        word_types = tokens[torch.arange(len(tokens)), positions_t].numpy().copy()
        return cls(path.stem, tokens, positions_t, labels, groups, word_types, names, padded.mask)
