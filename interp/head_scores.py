"""Attention patterns and the standard head scores (previous-token, induction, duplicate-token).

Scores are measured on sequences of BOS + a random half repeated once: a previous-token head
attends from each position to the one before it, an induction head from each second-half token to
the token after its first occurrence, and a duplicate-token head to the first occurrence itself.
"""

from __future__ import annotations

import numpy as np
import torch

from interp.components import Site
from interp.model import Model
from interp.toy_models import induction_scores, ordinary_token_range, previous_token_scores, repeated_random_tokens


def duplicate_token_scores(pattern: torch.Tensor, half_length: int) -> torch.Tensor:
    """Mean attention from each second-half token to its first occurrence.

    pattern: [batch, heads, pos, pos] on BOS + two copies of a length-``half_length`` sequence.
    Returns [heads], in [0, 1].
    """
    queries = torch.arange(1 + half_length, 1 + 2 * half_length)
    return pattern[:, :, queries, queries - half_length].mean(dim=(0, 2))


def attention_patterns(model: Model, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention patterns [layers, batch, heads, query_pos, key_pos] of ``tokens`` [batch, pos]
    (or :class:`~interp.batch.Tokens`); under ``attention_mask`` the rows and columns of padding
    are zero, so no padded token enters a score."""
    sites = [Site("pattern", layer) for layer in range(model.config.n_layers)]
    _, cache = model.run_with_cache(tokens, sites, attention_mask=attention_mask)
    patterns = torch.stack([cache[site] for site in sites])
    mask = attention_mask if attention_mask is not None else getattr(tokens, "mask", None)
    if mask is not None:
        real = mask.bool().to(patterns.device)
        patterns = patterns * (real[:, None, :, None] & real[:, None, None, :]).to(patterns.dtype)
    return patterns


def repeated_tokens(model: Model, n_sequences: int = 8, half_length: int = 20, seed: int = 0) -> torch.Tensor:
    """[n, 1 + 2 * half_length]: a start token, then a random half of ordinary tokens repeated once."""
    low, high = ordinary_token_range(model.config.d_vocab)
    start = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else 0
    return repeated_random_tokens(n_sequences, half_length, seed, low, high, start).to(model.device)


def head_scores(model: Model, n_sequences: int = 8, half_length: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """``previous_token``, ``induction`` and ``duplicate_token`` scores, each [layers, heads]."""
    patterns = attention_patterns(model, repeated_tokens(model, n_sequences, half_length, seed))
    return {
        "previous_token": torch.stack([previous_token_scores(p) for p in patterns]).cpu().numpy(),
        "induction": torch.stack([induction_scores(p, half_length) for p in patterns]).cpu().numpy(),
        "duplicate_token": torch.stack([duplicate_token_scores(p, half_length) for p in patterns]).cpu().numpy(),
    }
