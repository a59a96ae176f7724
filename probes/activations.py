"""Residual-stream activations of a probe dataset, every layer, at each example's read position."""

from __future__ import annotations

import numpy as np
import torch

from interp.components import Site
from interp.model import Model


@torch.no_grad()
def residual_activations(model: Model, tokens: torch.Tensor, positions: torch.Tensor, batch_size: int = 16,
                         mask: torch.Tensor | None = None) -> np.ndarray:
    """[n_layers, n_examples, d_model] float32: the residual stream leaving each layer
    (``L{l}.RESID_POST``) of ``tokens`` [n, pos] (padded under ``mask``, True = real token) at each
    example's read position ``positions`` [n] (e.g. a :class:`~probes.dataset.ProbeDataset`'s; a
    position on padding is refused). Runs inside any active ``model.patch``."""
    if mask is not None and not bool(mask[torch.arange(len(tokens)), positions].all()):
        bad = int((~mask[torch.arange(len(tokens)), positions]).nonzero()[0])
        raise ValueError(f"example {bad} is read at position {int(positions[bad])}, which is padding")
    sites = [Site("resid_post", layer) for layer in range(model.config.n_layers)]
    out = np.zeros((len(sites), len(tokens), model.config.d_model), dtype=np.float32)
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size].to(model.device)
        read = positions[start:start + batch_size]
        batch_mask = None if mask is None else mask[start:start + batch_size].to(model.device)
        _, cache = model.run_with_cache(batch, sites, attention_mask=batch_mask)
        rows = torch.arange(len(batch))
        for k, site in enumerate(sites):
            out[k, start:start + len(batch)] = cache[site][rows, read.to(cache[site].device)].float().cpu().numpy()
    return out
