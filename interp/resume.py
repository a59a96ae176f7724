"""Resume a forward pass at layer l and position p from a recorded run.

A patch at layer l and position p cannot change anything at earlier layers, nor (in a causal
model) at earlier positions. So a patched run can skip layers < l, whose effect is replayed from
the recorded residual stream, and positions < p, whose keys and values come from the recorded KV
cache. Works for any backend: it swaps entries of the model's decoder-layer list for the
duration of one forward.
"""

from __future__ import annotations

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
    """A decoder layer that returns its input (as a 1-tuple where the real layer returns a tuple)."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states


class _Replay(_PassThrough):
    def __init__(self, value: torch.Tensor, as_tuple: bool = False) -> None:
        super().__init__(as_tuple)
        self.value = value

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return super().forward(self.value)


@contextmanager
def layers_replayed(layers: torch.nn.ModuleList, start_layer: int, resid: torch.Tensor | None,
                    as_tuple: bool = False) -> Iterator[None]:
    """Within the block, layers < ``start_layer`` do no work; the last of them returns ``resid``
    (``as_tuple``: in a 1-tuple, as the model's own layers do)."""
    if start_layer == 0:
        yield
        return
    originals = [layers[i] for i in range(start_layer)]
    try:
        for i in range(start_layer - 1):
            layers[i] = _PassThrough(as_tuple)
        layers[start_layer - 1] = _Replay(resid, as_tuple)
        yield
    finally:
        for i, module in enumerate(originals):
            layers[i] = module


@contextmanager
def layers_after_skipped(layers: torch.nn.ModuleList, last_layer: int, as_tuple: bool = False) -> Iterator[None]:
    """Within the block, layers > ``last_layer`` do no work (for reads that end at ``last_layer``;
    the logits are then meaningless)."""
    originals = {i: layers[i] for i in range(last_layer + 1, len(layers))}
    try:
        for i in originals:
            layers[i] = _PassThrough(as_tuple)
        yield
    finally:
        for i, module in originals.items():
            layers[i] = module
