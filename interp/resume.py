"""Resume a forward pass at layer l and position p from a recorded run.

A patch at layer l and position p cannot change anything at earlier layers, nor (in a causal
model) at earlier positions. So a patched run can skip layers < l, whose effect is replayed from
the recorded residual stream, and positions < p, whose keys and values come from the recorded KV
cache. Works for any backend: it swaps entries of the model's decoder-layer list for the
duration of one forward.
"""

from __future__ import annotations

import copy
import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch


@dataclass
class Resume:
    """Where a forward starts.

    ``resid``: the residual stream entering ``layer`` at positions >= ``position``,
    [batch, pos - position, d_model]; ``past_key_values``: a KV cache holding positions
    < ``position`` for every layer >= ``layer`` (None when ``position`` is 0).
    """

    layer: int
    position: int
    resid: torch.Tensor | None
    past_key_values: Any = None


class _PassThrough(torch.nn.Module):
    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class _Replay(torch.nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.value


@contextmanager
def layers_replayed(layers: torch.nn.ModuleList, start_layer: int, resid: torch.Tensor | None) -> Iterator[None]:
    """Within the block, layers < ``start_layer`` do no work; the last of them returns ``resid``."""
    if start_layer == 0:
        yield
        return
    originals = [layers[i] for i in range(start_layer)]
    try:
        for i in range(start_layer - 1):
            layers[i] = _PassThrough()
        layers[start_layer - 1] = _Replay(resid)
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module


@contextmanager
def layers_after_skipped(layers: torch.nn.ModuleList, last_layer: int) -> Iterator[None]:
    """Within the block, layers > ``last_layer`` do no work (for reads that end at ``last_layer``;
    the logits are then meaningless)."""
    originals = {i: layers[i] for i in range(last_layer + 1, len(layers))}
    try:
        for i in originals:
            layers[i] = _PassThrough()
        yield
    finally:
        for i, module in originals.items():
            layers[i] = module


def kv_prefix(cache: Any, position: int, batch_index: torch.Tensor) -> Any:
    """A copy of ``cache`` cut to positions < ``position``, with rows picked by ``batch_index``."""
    if position == 0:
        return None
    prefix = copy.deepcopy(cache)
    length = prefix.get_seq_length()
    if position < length:
        prefix.crop(position - length)
    prefix.batch_select_indices(batch_index.to(prefix.layers[0].keys.device))
    return read_only(prefix)


def read_only(cache: Any) -> Any:
    """``cache`` whose layers hand each forward the keys and values extended by the new positions
    without keeping them: the forward leaves the cache as it was, and no layer's extended K/V is
    held until the forward ends (at 144 sequences on SmolLM2 that was about 90 MB)."""
    for layer in cache.layers:
        layer.__class__ = _read_only_class(type(layer))
    return cache


@functools.cache
def _read_only_class(layer_class: type) -> type:
    """A subclass of a cache layer class whose ``update`` restores the layer's state afterwards."""

    def update(self, *args, **kwargs):
        state = dict(vars(self))
        try:
            return layer_class.update(self, *args, **kwargs)
        finally:
            vars(self).clear()
            vars(self).update(state)

    return type(f"ReadOnly{layer_class.__name__}", (layer_class,), {"update": update})
