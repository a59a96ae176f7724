"""Drop attention sublayers, MLP sublayers or whole blocks, reversibly.

A dropped sublayer skips its pre-norm, its module and the norm after it (Gemma-2/3, OLMo-2): they
are swapped for stand-ins that do no work (a norm passes its input through, the module returns
zeros, so the residual stream goes on unchanged), and the original modules are put back when the ``dropped`` block ends, so the model
is restored bit-exactly. A dropped attention layer never computes keys and values and its KV
cache entry holds one number per position (it only counts positions), so during generation it
costs neither attention time nor real cache memory: that is where the speed-up comes from.

Units are named like components: ``L5.ATTN``, ``L5.MLP``, and ``L5.BLOCK`` (both of layer 5).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Union

import torch

from interp import hf_compat
from interp.architectures import get_path
from interp.components import Component, ComponentError
from interp.config import ModelConfig

UNIT_KINDS = ("attn", "mlp", "block")
_UNIT_OF_KIND = {"attn_out": "attn", "mlp_out": "mlp", "block": "block"}  # Component kind -> unit kind
_KIND_OF_UNIT = {unit: kind for kind, unit in _UNIT_OF_KIND.items()}


class DropError(ValueError):
    """A unit that does not exist, or a drop request that cannot be met."""


@dataclass(frozen=True, order=True)
class Unit:
    """A droppable piece of layer ``layer``: its attention sublayer, its MLP sublayer or the whole block."""

    kind: str
    layer: int

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise DropError(f"unknown unit kind {self.kind!r}; known: {', '.join(UNIT_KINDS)}")

    @classmethod
    def parse(cls, text: Union[str, "Unit", Component]) -> "Unit":
        """``L5.ATTN``, ``L5.MLP`` or ``L5.BLOCK``, read by the one Component parser."""
        if isinstance(text, Unit):
            return text
        try:
            component = Component.parse(text)
        except ComponentError:
            component = None
        if component is None or component.kind not in _UNIT_OF_KIND or component.index is not None \
                or component.position is not None:
            raise DropError(f"cannot parse unit {text!r}: expected e.g. L5.ATTN, L5.MLP or L5.BLOCK")
        return cls(_UNIT_OF_KIND[component.kind], component.layer)

    @property
    def component(self) -> Component:
        """The unit as a component (``L5.ATTN``, ``L5.MLP``, ``L5.BLOCK``)."""
        return Component(_KIND_OF_UNIT[self.kind], self.layer)

    def __str__(self) -> str:
        return str(self.component)

    def validate(self, config: ModelConfig) -> "Unit":
        if not 0 <= self.layer < config.n_layers:
            raise DropError(f"unit {self} is out of range: the model has {config.n_layers} layers")
        return self

    @property
    def sublayers(self) -> tuple["Unit", ...]:
        """The attention and/or MLP sublayers this unit stands for."""
        return (Unit("attn", self.layer), Unit("mlp", self.layer)) if self.kind == "block" else (self,)


def units_of(config: ModelConfig, kind: str) -> list[Unit]:
    """Every unit of one kind (``attn``, ``mlp``, ``block``), by layer."""
    if kind not in UNIT_KINDS:
        raise DropError(f"unknown unit kind {kind!r}; known: {', '.join(UNIT_KINDS)}")
    return [Unit(kind, layer) for layer in range(config.n_layers)]


def sublayers_of(units: Iterable[Union[Unit, str]], config: ModelConfig) -> list[Unit]:
    """Validated units expanded to sorted, distinct attention/MLP sublayers."""
    return sorted({s for u in units for s in Unit.parse(u).validate(config).sublayers})


def sublayer_counts(units: Iterable[Union[Unit, str]]) -> tuple[int, int]:
    """(attention sublayers, MLP sublayers) that ``units`` drop, each counted once."""
    sublayers = {s for u in units for s in Unit.parse(u).sublayers}
    return sum(s.kind == "attn" for s in sublayers), sum(s.kind == "mlp" for s in sublayers)


class _SkippedNorm(torch.nn.Module):
    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class _SkippedMLP(torch.nn.Module):
    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class _SkippedAttention(torch.nn.Module):
    """Returns (zeros, no attention weights). With a KV cache it appends one number per position
    as key and value (1 head of size 1), so layer ``layer_idx`` of the cache still counts the
    positions seen (Hugging Face reads sequence lengths and mask sizes from the cache, from layer
    0 by default) at 1/(2 n_kv_heads d_head) of a real layer's cache memory."""

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = kwargs["hidden_states"]
        cache = hf_compat.cache_in(kwargs)
        if cache is not None:
            batch, positions = hidden_states.shape[:2]
            placeholder = hidden_states.new_zeros(batch, 1, positions, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None


def _sublayer_modules(layout, kind: str) -> list[tuple[str, str]]:
    """(path in the layer, role) of what a dropped sublayer swaps out: its pre-norm, the module,
    and the norm its output passes before the residual add (where the family has them)."""
    if kind == "attn":
        parts = [(layout.attn_norm, "norm"), (layout.attn, "attn"), (layout.attn_post_norm, "norm")]
    else:
        parts = [(layout.mlp_norm, "norm"), (layout.mlp, "mlp"), (layout.mlp_post_norm, "norm")]
    shared = layout.attn_norm if layout.attn_norm == layout.mlp_norm else None  # a parallel block's shared pre-norm
    return [(path, role) for path, role in parts if path and path != shared]


def _owner_and_name(layer: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    parent, _, name = path.rpartition(".")
    return hf_compat.executing_layer(get_path(layer, parent) if parent else layer), name


@contextmanager
def dropped(model, units: Iterable[Union[Unit, str]]) -> Iterator[object]:
    """Within the block, ``model`` runs without the given units (``Unit``s or names like "L5.ATTN")."""
    if model.remote:
        from interp.model import RemoteUnsupportedError

        raise RemoteUnsupportedError("dropping layers swaps modules of the local copy, which NDIF does not run; "
                                     "drop layers of a local model")
    sublayers = sublayers_of(units, model.config)
    layers = model.decoder_layers()
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    for unit in sublayers:
        for path, role in _sublayer_modules(model.layout, unit.kind):
            owner, name = _owner_and_name(hf_compat.executing_layer(layers[unit.layer]), path)
            stand_in = {"norm": _SkippedNorm, "mlp": _SkippedMLP}.get(role)
            swaps.append((owner, name, stand_in() if stand_in else _SkippedAttention(unit.layer)))
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    try:
        for owner, name, stand_in in swaps:
            setattr(owner, name, stand_in)
        yield model
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def parameter_count(model, units: Iterable[Union[Unit, str]]) -> int:
    """Parameters (norms + module) that dropping ``units`` removes from the forward pass."""
    layers = model.decoder_layers()
    unique: dict[int, int] = {}
    for unit in sublayers_of(units, model.config):
        layer = hf_compat.executing_layer(layers[unit.layer])
        for path, _ in _sublayer_modules(model.layout, unit.kind):
            unique.update({id(p): p.numel() for p in get_path(layer, path).parameters()})
    return sum(unique.values())
