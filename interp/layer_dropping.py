"""Drop attention sublayers, MLP sublayers or whole blocks, reversibly.

A dropped sublayer skips its pre-norm and its module: both are swapped for stand-ins that do no
work (the norm passes its input through, the module returns zeros, so the residual stream goes on
unchanged), and the original modules are put back when the ``dropped`` block ends, so the model
is restored bit-exactly. A dropped attention layer never computes keys and values and its KV
cache entry holds one number per position (it only counts positions), so during generation it
costs neither attention time nor real cache memory: that is where the speed-up comes from.

Units are named like components: ``L5.ATTN``, ``L5.MLP``, and ``L5.BLOCK`` (both of layer 5).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Union

import torch

from interp.architectures import decoder_layers, layout_for
from interp.config import ModelConfig

UNIT_KINDS = ("attn", "mlp", "block")
_UNIT_PATTERN = re.compile(r"^L(?P<layer>\d+)\.(?P<kind>ATTN|MLP|BLOCK)$")


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
    def parse(cls, text: Union[str, "Unit"]) -> "Unit":
        if isinstance(text, Unit):
            return text
        match = _UNIT_PATTERN.match(str(text).strip().upper())
        if match is None:
            raise DropError(f"cannot parse unit {text!r}: expected e.g. L5.ATTN, L5.MLP or L5.BLOCK")
        return cls(match["kind"].lower(), int(match["layer"]))

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind.upper()}"

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
        cache = kwargs.get("past_key_values", kwargs.get("layer_past"))
        if cache is not None:
            batch, positions = hidden_states.shape[:2]
            placeholder = hidden_states.new_zeros(batch, 1, positions, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None


def _executing_layer(layer: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``forward`` runs a decoder layer (a TransformerLens block bridge runs
    the Hugging Face layer it wraps)."""
    return getattr(layer, "original_component", None) or layer


@contextmanager
def dropped(model, units: Iterable[Union[Unit, str]]) -> Iterator[object]:
    """Within the block, ``model`` runs without the given units (``Unit``s or names like "L5.ATTN")."""
    sublayers = sublayers_of(units, model.config)
    layout = layout_for(model.config.architecture)
    layers = decoder_layers(model.hf_model, model.config.architecture)
    swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    for unit in sublayers:
        owner = _executing_layer(layers[unit.layer])
        if unit.kind == "attn":
            swaps += [(owner, layout.attn_norm, _SkippedNorm()), (owner, layout.attn, _SkippedAttention(unit.layer))]
        else:
            swaps += [(owner, layout.mlp_norm, _SkippedNorm()), (owner, layout.mlp, _SkippedMLP())]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    try:
        for owner, name, stand_in in swaps:
            setattr(owner, name, stand_in)
        yield model
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def parameter_count(model, units: Iterable[Union[Unit, str]]) -> int:
    """Parameters (pre-norm + module) that dropping ``units`` removes from the forward pass."""
    layout = layout_for(model.config.architecture)
    layers = decoder_layers(model.hf_model, model.config.architecture)
    unique: dict[int, int] = {}
    for unit in sublayers_of(units, model.config):
        owner = _executing_layer(layers[unit.layer])
        names = (layout.attn_norm, layout.attn) if unit.kind == "attn" else (layout.mlp_norm, layout.mlp)
        for name in names:
            unique.update({id(p): p.numel() for p in getattr(owner, name).parameters()})
    return sum(unique.values())
