"""Component names: one hashable type for every place in a model that analyses talk about.

Syntax (case-insensitive on input, canonical upper case on output)::

    L5.RESID_PRE   residual stream entering block 5          [batch, pos, d_model]
    L5.RESID_MID   residual stream between attention and MLP [batch, pos, d_model]
    L5.RESID_POST  residual stream leaving block 5           [batch, pos, d_model]
    L5.ATTN        attention sublayer output                 [batch, pos, d_model]
    L5.MLP         MLP sublayer output                       [batch, pos, d_model]
    L5.H3          head 3's output z (before W_O)            [batch, pos, n_heads, d_head]
    L5.Q3          head 3's query (before rotary)            [batch, pos, n_heads, d_head]
    L5.K1 / L5.V1  key / value of KV group 1                 [batch, pos, n_kv_heads, d_head]
    L5.A3          head 3's attention pattern                [batch, n_heads, query_pos, key_pos]
    L2.N1043       MLP neuron 1043 (post-activation)         [batch, pos, d_mlp]
    L2.E5          routed expert 5's share of a mixture-of-experts MLP's output  [batch, pos, n_experts, d_model]
    L3.TC.1234     latent 1234 of the transcoder spliced at layer 3's MLP  [batch, pos, d_sae]
    L3.SAE.1234    latent 1234 of the SAE spliced at layer 3 [batch, pos, d_sae]
    L3.TC_ERR      error term of that transcoder / SAE       [batch, pos, d_model]
    L3.SAE_ERR

Latents and error terms exist only while a dictionary is spliced in (``interp.splicing``); the
model, not the config, says how many latents there are.

Any of them may end in ``@12`` to restrict it to one token position (the query position for
``A``). A :class:`Site` is the whole tensor a component lives in (kind + layer); the component
picks a slice of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from interp.config import ModelConfig

# kind -> (syntax token, whether it takes an index, which config field bounds the index)
_KINDS: dict[str, tuple[str, str | None]] = {
    "resid_pre": ("RESID_PRE", None),
    "resid_mid": ("RESID_MID", None),
    "resid_post": ("RESID_POST", None),
    "attn_out": ("ATTN", None),
    "mlp_out": ("MLP", None),
    "z": ("H", "n_heads"),
    "q": ("Q", "n_heads"),
    "k": ("K", "n_kv_heads"),
    "v": ("V", "n_kv_heads"),
    "pattern": ("A", "n_heads"),
    "mlp_post": ("N", "d_mlp"),
    "expert": ("E", "n_experts"),
    "tc": ("TC", "dictionary"),
    "sae": ("SAE", "dictionary"),
    "tc_error": ("TC_ERR", None),
    "sae_error": ("SAE_ERR", None),
}
FEATURE_KINDS = ("tc", "sae")
SPLICE_KINDS = FEATURE_KINDS + tuple(f"{kind}_error" for kind in FEATURE_KINDS)
_TOKEN_TO_KIND = {token: kind for kind, (token, _) in _KINDS.items()}
KINDS = tuple(_KINDS)
# The axis of the site tensor that a component's index selects (batch is axis 0).
INDEX_AXIS = {"z": 2, "q": 2, "k": 2, "v": 2, "pattern": 1, "mlp_post": 2, "expert": 2, "tc": 2, "sae": 2}
# The axis that a component's position selects.
POSITION_AXIS = {kind: (2 if kind == "pattern" else 1) for kind in KINDS}

_PATTERN = re.compile(
    r"^L(?P<layer>\d+)\.(?:(?P<named>RESID_PRE|RESID_MID|RESID_POST|ATTN|MLP|TC_ERR|SAE_ERR)"
    r"|(?P<indexed>H|Q|K|V|A|N|E|TC\.|SAE\.)(?P<index>\d+))(?:@(?P<pos>-?\d+))?$"
)


class ComponentError(ValueError):
    """A component name that does not parse or does not exist in the model."""


@dataclass(frozen=True, order=True)
class Site:
    """A whole activation tensor: one kind at one layer (e.g. all heads' z at layer 5)."""

    kind: str
    layer: int

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ComponentError(f"unknown activation kind {self.kind!r}; known: {', '.join(KINDS)}")


@dataclass(frozen=True, order=True)
class Component:
    """A named place in the model, optionally at one token position.

    ``index`` is the head (z, q, pattern), the KV group (k, v) or the neuron (mlp_post);
    ``position`` is a token position (``None`` = every position).
    """

    kind: str
    layer: int
    index: int | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ComponentError(f"unknown component kind {self.kind!r}; known: {', '.join(KINDS)}")
        needs_index = _KINDS[self.kind][1] is not None
        if needs_index and self.index is None:
            raise ComponentError(f"component kind {self.kind!r} needs an index (head/group/neuron/latent)")
        if not needs_index and self.index is not None:
            raise ComponentError(f"component kind {self.kind!r} takes no index")

    @classmethod
    def parse(cls, text: "str | Component") -> "Component":
        """Parse ``"L5.H3@12"``-style names; a Component passes through unchanged."""
        if isinstance(text, Component):
            return text
        match = _PATTERN.match(str(text).strip().upper())
        if match is None:
            raise ComponentError(
                f"cannot parse component {text!r}: expected e.g. L5.H3, L5.MLP, L5.ATTN, "
                "L5.RESID_PRE, L5.Q3, L5.K1, L5.A3, L2.N1043, L2.E5, L3.TC.1234, L3.SAE.1234, L3.TC_ERR, "
                "optionally with @position"
            )
        token = match["named"] or match["indexed"].rstrip(".")
        index = int(match["index"]) if match["index"] is not None else None
        position = int(match["pos"]) if match["pos"] is not None else None
        return cls(_TOKEN_TO_KIND[token], int(match["layer"]), index, position)

    def __str__(self) -> str:
        token = _KINDS[self.kind][0] + ("." if self.kind in FEATURE_KINDS else "")
        text = f"L{self.layer}.{token}{'' if self.index is None else self.index}"
        return text if self.position is None else f"{text}@{self.position}"

    @property
    def site(self) -> Site:
        return Site(self.kind, self.layer)

    def at(self, position: int | None) -> "Component":
        """The same component restricted to one position (or to all, with ``None``)."""
        return Component(self.kind, self.layer, self.index, position)

    def validate(self, config: "ModelConfig", n_positions: int | None = None) -> "Component":
        """Raise a one-line :class:`ComponentError` if this component is not in the model (the
        latents of spliced dictionaries are checked by ``Model.validate``, which knows them)."""
        if not 0 <= self.layer < config.n_layers:
            raise ComponentError(f"component {self} is out of range: the model has {config.n_layers} layers")
        if self.kind == "expert" and not config.n_experts:
            raise ComponentError(f"component {self} does not exist: {config.name} has dense MLPs, no experts")
        if self.kind == "mlp_post" and config.n_experts:
            raise ComponentError(f"component {self} does not exist: {config.name}'s MLPs are mixtures of "
                                 f"{config.n_experts} experts (name an expert's output instead, e.g. L{self.layer}.E0)")
        bound_field = _KINDS[self.kind][1]
        if bound_field is not None and bound_field != "dictionary":
            bound = getattr(config, bound_field)
            if not 0 <= self.index < bound:
                raise ComponentError(f"component {self} is out of range: the model has {bound_field}={bound}")
        if self.kind == "resid_mid" and config.parallel_attn_mlp:
            raise ComponentError(f"component {self} does not exist: this model runs attention and MLP in parallel")
        if self.position is not None and n_positions is not None and not -n_positions <= self.position < n_positions:
            raise ComponentError(f"component {self} is out of range: the prompts have {n_positions} tokens")
        return self


# ----------------------------------------------------------------------------- granularities
# One enumeration function per granularity; each yields components in a fixed order whose
# array shape is given by ``granularity_shape``.

GRANULARITIES = {
    "resid": "residual stream entering each block, by layer x position",
    "attn_out": "attention output, by layer",
    "attn_out_pos": "attention output, by layer x position",
    "mlp_out": "MLP output, by layer",
    "mlp_out_pos": "MLP output, by layer x position",
    "block": "resid_pre, attention and MLP output, by kind x layer x position",
    "heads": "head output z over all positions, by layer x head",
    "heads_pos": "head output z, by layer x head x position",
    "q": "query of each head over all positions, by layer x head",
    "k": "key of each KV group over all positions, by layer x KV group",
    "v": "value of each KV group over all positions, by layer x KV group",
    "q_pos": "query, by layer x head x position",
    "k_pos": "key, by layer x KV group x position",
    "v_pos": "value, by layer x KV group x position",
    "pattern": "attention pattern of each head, by layer x head",
    "neurons": "MLP neurons (post-activation) over all positions, by layer x neuron",
    "experts": "routed experts' outputs of mixture-of-experts MLPs over all positions, by layer x expert",
    "experts_pos": "routed experts' outputs, by layer x expert x position",
    "features": "latents of the spliced dictionaries over all positions, by dictionary x latent",
    "features_pos": "latents of the spliced dictionaries, by dictionary x latent x position",
}
SPLICE_GRANULARITIES = ("features", "features_pos")  # enumerated by the model, which knows its splices


def _check_granularity(granularity: str, config: "ModelConfig | None" = None) -> None:
    if granularity not in GRANULARITIES:
        raise ComponentError(f"unknown granularity {granularity!r}; known: {', '.join(GRANULARITIES)}")
    if config is not None and granularity in ("experts", "experts_pos") and not config.n_experts:
        raise ComponentError(f"granularity {granularity!r} does not exist for {config.name}: it has dense MLPs, no experts")
    if config is not None and granularity == "neurons" and config.n_experts:
        raise ComponentError(f"granularity 'neurons' does not exist for {config.name}: its MLPs are mixtures of "
                             f"{config.n_experts} experts (granularity 'experts' patches each expert's output)")
    if granularity in SPLICE_GRANULARITIES:
        raise ComponentError(f"granularity {granularity!r} is enumerated from the model's spliced dictionaries "
                             "(interp.splicing.feature_components)")


def granularity_shape(config: "ModelConfig", granularity: str, n_positions: int, layers: list[int] | None = None) -> tuple[int, ...]:
    """Shape of the score array for a granularity, matching ``enumerate_components`` order."""
    _check_granularity(granularity, config)
    n_layers = len(layers) if layers is not None else config.n_layers
    per = {
        "resid": (n_positions,), "attn_out": (), "attn_out_pos": (n_positions,), "mlp_out": (),
        "mlp_out_pos": (n_positions,), "heads": (config.n_heads,),
        "heads_pos": (config.n_heads, n_positions), "q": (config.n_heads,),
        "k": (config.n_kv_heads,), "v": (config.n_kv_heads,),
        "q_pos": (config.n_heads, n_positions), "k_pos": (config.n_kv_heads, n_positions),
        "v_pos": (config.n_kv_heads, n_positions), "pattern": (config.n_heads,),
        "neurons": (config.d_mlp,), "experts": (config.n_experts,),
        "experts_pos": (config.n_experts, n_positions),
    }
    if granularity == "block":
        return (3, n_layers, n_positions)
    return (n_layers, *per[granularity])


def enumerate_components(config: "ModelConfig", granularity: str, n_positions: int, layers: list[int] | None = None) -> list[Component]:
    """Every component of one granularity, in row-major order of ``granularity_shape``."""
    _check_granularity(granularity, config)
    layer_list = list(range(config.n_layers)) if layers is None else layers
    for layer in layer_list:
        if not 0 <= layer < config.n_layers:
            raise ComponentError(f"layer {layer} is out of range: the model has {config.n_layers} layers")
    if granularity == "block":
        return [
            Component(kind, layer, None, pos)
            for kind in ("resid_pre", "attn_out", "mlp_out")
            for layer in layer_list
            for pos in range(n_positions)
        ]
    return list(_per_layer(config, granularity, n_positions, layer_list))


def _per_layer(config: "ModelConfig", granularity: str, n_positions: int, layers: list[int]) -> Iterator[Component]:
    positions = range(n_positions)
    indexed = {"heads": ("z", config.n_heads), "q": ("q", config.n_heads), "k": ("k", config.n_kv_heads),
               "v": ("v", config.n_kv_heads), "pattern": ("pattern", config.n_heads),
               "neurons": ("mlp_post", config.d_mlp), "experts": ("expert", config.n_experts)}
    for layer in layers:
        if granularity == "resid":
            yield from (Component("resid_pre", layer, None, p) for p in positions)
        elif granularity in ("attn_out", "mlp_out"):
            yield Component(granularity, layer)
        elif granularity in ("attn_out_pos", "mlp_out_pos"):
            yield from (Component(granularity[:-4], layer, None, p) for p in positions)
        elif granularity in indexed:
            kind, count = indexed[granularity]
            yield from (Component(kind, layer, i) for i in range(count))
        else:  # heads_pos, q_pos, k_pos, v_pos, experts_pos
            kind, count = {"heads_pos": ("z", config.n_heads), "q_pos": ("q", config.n_heads),
                           "k_pos": ("k", config.n_kv_heads), "v_pos": ("v", config.n_kv_heads),
                           "experts_pos": ("expert", config.n_experts)}[granularity]
            yield from (Component(kind, layer, i, p) for i in range(count) for p in positions)
