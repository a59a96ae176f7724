"""Token ids of several texts in one batch: padded to one length, with the mask that says which
tokens are real.

Texts of different lengths share a forward pass by padding: ``"left"`` puts the padding before
each text (every text ends at the last position), ``"right"`` after it (every text starts at
position 0). The attention mask keeps real tokens from attending to padding, and position ids are
counted over real tokens only (``interp.backends.base.position_ids``), so a padded row gives the
numbers the text gives alone, whichever side is padded. Padding positions hold garbage that no
real position reads; every analysis leaves them out of means, caches and training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

PADDING_SIDES = ("left", "right")


class PaddingError(ValueError):
    """Token rows that cannot be padded as asked (no rows, an empty row, an unknown side)."""


@dataclass(frozen=True)
class Tokens:
    """``ids`` [n, pos] and ``mask`` [n, pos] bool (True = a real token), or ``mask`` None when no
    row is padded. ``model.run(tokens)``, ``run_with_cache`` and ``gradients`` take one directly."""

    ids: torch.Tensor
    mask: torch.Tensor | None = None

    @classmethod
    def pad(cls, rows: Sequence[Sequence[int]], pad_id: int, side: str = "left",
            device: str | torch.device = "cpu") -> "Tokens":
        """Rows of token ids padded with ``pad_id`` on ``side`` to the longest; ``mask`` is None
        when every row has the same length (nothing is padded)."""
        if side not in PADDING_SIDES:
            raise PaddingError(f"unknown padding side {side!r}; known: {', '.join(PADDING_SIDES)}")
        if not rows:
            raise PaddingError("no token rows to pad")
        empty = next((i for i, row in enumerate(rows) if len(row) == 0), None)
        if empty is not None:
            raise PaddingError(f"row {empty} has no tokens")
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            where = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, where] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, where] = True
        return cls(ids.to(device), None if bool(mask.all()) else mask.to(device))


def pad_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else its end-of-text token, else 0 (the mask,
    not the id, keeps padding out of every computation)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def logit_reads(reads: torch.Tensor | None, width: int, start: int = 0) -> dict:
    """``RunSpec`` keywords that unembed positions ``reads`` [n, k] (padded coordinates) of a run
    whose input starts at position ``start`` of rows ``width`` long: ``logits_to_keep=k`` when every
    row reads its last k positions (the common case, and the cheapest), else ``logit_positions``.
    ``reads`` None: the last position of every row."""
    if reads is None:
        return {"logits_to_keep": 1}
    k = reads.shape[1]
    tail = torch.arange(width - k, width, device=reads.device)
    if bool((reads == tail).all()):
        return {"logits_to_keep": k}
    if bool((reads < start).any()):
        raise ValueError(f"a run starting at position {start} cannot read logits at position {int(reads.min())}")
    return {"logit_positions": reads - start}
