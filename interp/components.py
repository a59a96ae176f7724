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
    L5.BLOCK       the whole decoder layer: a unit that layer dropping removes (not a tensor)

The same names are used everywhere a place in the model is named: droppable units are
``L5.ATTN`` / ``L5.MLP`` / ``L5.BLOCK``; the nodes of an edge graph are components (an edge into
``L3.Q1`` enters head 1's query through its input) plus ``EMBED`` and ``LOGITS``, and an edge is
``"L2.H0->L3.Q1"``; a transcoder attribution graph's nodes are ``L3.TC.12@5``, ``L3.H1@5``,
``L3.TC_ERR@5`` (read from older graphs as ``L3.ERR@5``), ``EMBED@5`` and ``TARGET``.

Latents and error terms exist only while a dictionary is spliced in (``interp.splicing``); the
model, not the config, says how many latents there are.

Any of them may end in ``@12`` to restrict it to one token position (the query position for
``A``): ``@12`` counts from each prompt's first token, ``@-1`` from its end (every prompt's last
token, whatever its length), and ``@IO`` is a position a task names in each prompt (IOI: ``S1``,
``IO``, ``S2``, ``END``; see ``interp.positions``). A :class:`Site` is the whole tensor a
component lives in (kind + layer); the component picks a slice of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from interp.config import ModelConfig

@dataclass(frozen=True)
class Kind:
    """One activation kind: everything the parser, the backends and the analyses need to know.

    ``token``: its name in the Component syntax (``H`` in ``L5.H3``); ``bound``: the config field
    that bounds its index (``"dictionary"``: the spliced dictionary's width; None: no index);
    ``index_axis`` / ``position_axis``: the axes of the site tensor an index / a position select
    (batch is axis 0); ``hook``: its TransformerLens hook name (None: not a bridge hook point);
    ``port``: the nnsight trace port that serves it (None: handled outside the trace);
    ``sublayer``: ``"attn"`` or ``"mlp"`` when it lives inside that sublayer."""

    token: str
    bound: str | None = None
    index_axis: int | None = None
    position_axis: int = 1
    hook: str | None = None
    port: str | None = None
    sublayer: str | None = None


ACTIVATION_KINDS: dict[str, Kind] = {
    "resid_pre": Kind("RESID_PRE", hook="blocks.{layer}.hook_resid_pre", port="resid_pre"),
    "resid_mid": Kind("RESID_MID", hook="blocks.{layer}.hook_resid_mid"),
    "resid_post": Kind("RESID_POST", hook="blocks.{layer}.hook_resid_post", port="resid_post"),
    "attn_out": Kind("ATTN", hook="blocks.{layer}.hook_attn_out", port="attn", sublayer="attn"),
    "mlp_out": Kind("MLP", hook="blocks.{layer}.hook_mlp_out", port="mlp_out", sublayer="mlp"),
    "z": Kind("H", "n_heads", 2, hook="blocks.{layer}.attn.hook_z", port="z", sublayer="attn"),
    "q": Kind("Q", "n_heads", 2, hook="blocks.{layer}.attn.hook_q", port="qkv", sublayer="attn"),
    "k": Kind("K", "n_kv_heads", 2, hook="blocks.{layer}.attn.hook_k", port="qkv", sublayer="attn"),
    "v": Kind("V", "n_kv_heads", 2, hook="blocks.{layer}.attn.hook_v", port="qkv", sublayer="attn"),
    "pattern": Kind("A", "n_heads", 1, position_axis=2, hook="blocks.{layer}.attn.hook_pattern", port="attn",
                    sublayer="attn"),
    "mlp_post": Kind("N", "d_mlp", 2, hook="blocks.{layer}.mlp.hook_post", port="mlp_post", sublayer="mlp"),
    "expert": Kind("E", "n_experts", 2, sublayer="mlp"),  # interp.experts: torch hooks on the experts module
    "tc": Kind("TC", "dictionary", 2),  # interp.splicing: edits of the spliced host site
    "sae": Kind("SAE", "dictionary", 2),
    "tc_error": Kind("TC_ERR"),
    "sae_error": Kind("SAE_ERR"),
    # a whole decoder layer: a unit layer dropping removes (L5.BLOCK), not a tensor one can read
    "block": Kind("BLOCK"),
}
# Old spellings the parser still reads: transcoder graphs wrote their error nodes L3.ERR@5.
_TOKEN_ALIASES = {"ERR": "TC_ERR"}
# The nnsight trace visits its ports in this order (the order the forward computes them).
PORT_ORDER = ("resid_pre", "qkv", "z", "attn", "mlp_post", "mlp_out", "resid_post")

FEATURE_KINDS = ("tc", "sae")
SPLICE_KINDS = FEATURE_KINDS + tuple(f"{kind}_error" for kind in FEATURE_KINDS)
KINDS = tuple(ACTIVATION_KINDS)
_TOKEN_TO_KIND = {k.token: kind for kind, k in ACTIVATION_KINDS.items()}
INDEX_AXIS = {kind: k.index_axis for kind, k in ACTIVATION_KINDS.items() if k.index_axis is not None}
POSITION_AXIS = {kind: k.position_axis for kind, k in ACTIVATION_KINDS.items()}


def _alternatives(tokens) -> str:
    return "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))


# Dictionary latents are written with a dot before the index (L3.TC.1234), other indices without.
_PATTERN = re.compile(
    r"^L(?P<layer>\d+)\.(?:(?P<named>"
    + _alternatives([k.token for k in ACTIVATION_KINDS.values() if k.bound is None] + list(_TOKEN_ALIASES)) + ")"
    r"|(?P<indexed>" + _alternatives(k.token + ("." if k.bound == "dictionary" else "")
                                     for k in ACTIVATION_KINDS.values() if k.bound is not None) + r")(?P<index>\d+))"
    r"(?:@(?P<pos>-?\d+|[A-Z][A-Z0-9_]*))?$"
)


class ComponentError(ValueError):
    """A component name that does not parse or does not exist in the model."""


@dataclass(frozen=True, order=True)
class Site:
    """A whole activation tensor: one kind at one layer (e.g. all heads' z at layer 5)."""

    kind: str
    layer: int

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATION_KINDS:
            raise ComponentError(f"unknown activation kind {self.kind!r}; known: {', '.join(KINDS)}")


@dataclass(frozen=True, order=True)
class Component:
    """A named place in the model, optionally at one token position.

    ``index`` is the head (z, q, pattern), the KV group (k, v) or the neuron (mlp_post);
    ``position`` is a token position (``None`` = every position): an int counted from the first
    token (>= 0) or from the end (< 0, -1 = the last token), or a name a task supplies per prompt
    (upper case, e.g. ``"IO"``).
    """

    kind: str
    layer: int
    index: int | None = None
    position: int | str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATION_KINDS:
            raise ComponentError(f"unknown component kind {self.kind!r}; known: {', '.join(KINDS)}")
        needs_index = ACTIVATION_KINDS[self.kind].bound is not None
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
                "L5.BLOCK, optionally with @position (@12, @-1 or a named position such as @IO)"
            )
        token = match["named"] or match["indexed"].rstrip(".")
        token = _TOKEN_ALIASES.get(token, token)
        index = int(match["index"]) if match["index"] is not None else None
        position = match["pos"]
        if position is not None and position.lstrip("-").isdigit():
            position = int(position)
        return cls(_TOKEN_TO_KIND[token], int(match["layer"]), index, position)

    def __str__(self) -> str:
        token = ACTIVATION_KINDS[self.kind].token + ("." if self.kind in FEATURE_KINDS else "")
        text = f"L{self.layer}.{token}{'' if self.index is None else self.index}"
        return text if self.position is None else f"{text}@{self.position}"

    @property
    def site(self) -> Site:
        return Site(self.kind, self.layer)

    def at(self, position: int | str | None) -> "Component":
        """The same component restricted to one position (or to all, with ``None``)."""
        return Component(self.kind, self.layer, self.index, position)

    def validate(self, config: "ModelConfig", n_positions: int | None = None) -> "Component":
        """Raise a one-line :class:`ComponentError` if this component is not in the model (the
        latents of spliced dictionaries are checked by ``Model.validate``, which knows them)."""
        if not 0 <= self.layer < config.n_layers:
            raise ComponentError(f"component {self} is out of range: the model has {config.n_layers} layers")
        if self.kind == "block":
            raise ComponentError(f"{self} names a whole layer, a unit for layer dropping, not an activation; "
                                 f"read L{self.layer}.RESID_POST instead")
        if self.kind == "expert" and not config.n_experts:
            raise ComponentError(f"component {self} does not exist: {config.name} has dense MLPs, no experts")
        if self.kind == "mlp_post" and config.n_experts:
            raise ComponentError(f"component {self} does not exist: {config.name}'s MLPs are mixtures of "
                                 f"{config.n_experts} experts (name an expert's output instead, e.g. L{self.layer}.E0)")
        bound_field = ACTIVATION_KINDS[self.kind].bound
        if bound_field is not None and bound_field != "dictionary":
            bound = getattr(config, bound_field)
            if not 0 <= self.index < bound:
                raise ComponentError(f"component {self} is out of range: the model has {bound_field}={bound}")
        if self.kind == "resid_mid" and config.parallel_attn_mlp:
            raise ComponentError(f"component {self} does not exist: this model runs attention and MLP in parallel")
        if (isinstance(self.position, int) and n_positions is not None
                and not -n_positions <= self.position < n_positions):
            raise ComponentError(f"component {self} is out of range: the prompts have {n_positions} tokens")
        return self


# ----------------------------------------------------------------------------- granularities
_AXIS_OF_BOUND = {"n_heads": "head", "n_kv_heads": "kv_group", "d_mlp": "neuron", "n_experts": "expert"}


@dataclass(frozen=True)
class Granularity:
    """What one component of a sweep is, and how the sweep's scores fold into a grid.

    A granularity enumerates ``Component(kind, layer, index, position)`` for every kind in
    ``kinds``, layer, index (when the kind has one: ``range(config.<bound>)``) and position (when
    ``per_position``), in that row-major order; the grid's axes are ``axes`` (a ``kind`` axis first
    when there are several kinds). ``spliced`` granularities are enumerated from the model's
    spliced dictionaries instead (``interp.splicing.feature_components``)."""

    name: str
    description: str
    kinds: tuple[str, ...]
    per_position: bool = False
    spliced: bool = False

    @property
    def axes(self) -> list[str]:
        if self.spliced:
            return ["dictionary", "latent"] + (["position"] if self.per_position else [])
        bound = ACTIVATION_KINDS[self.kinds[0]].bound
        return ((["kind"] if len(self.kinds) > 1 else []) + ["layer"] + ([_AXIS_OF_BOUND[bound]] if bound else [])
                + (["position"] if self.per_position else []))

    def check(self, config: "ModelConfig | None" = None) -> None:
        """One-line errors where the granularity does not exist on ``config``'s model."""
        if config is not None and "expert" in self.kinds and not config.n_experts:
            raise ComponentError(f"granularity {self.name!r} does not exist for {config.name}: it has dense MLPs, no experts")
        if config is not None and "mlp_post" in self.kinds and config.n_experts:
            raise ComponentError(f"granularity {self.name!r} does not exist for {config.name}: its MLPs are mixtures of "
                                 f"{config.n_experts} experts (granularity 'experts' patches each expert's output)")
        if self.spliced:
            raise ComponentError(f"granularity {self.name!r} is enumerated from the model's spliced dictionaries "
                                 "(interp.splicing.feature_components)")

    def _count(self, config: "ModelConfig") -> int | None:
        bound = ACTIVATION_KINDS[self.kinds[0]].bound
        return getattr(config, bound) if bound else None

    def shape(self, config: "ModelConfig", n_positions: "int | Sequence[int | str]",
              layers: list[int] | None = None) -> tuple[int, ...]:
        """The grid the scores fold into, matching :meth:`components`' order."""
        self.check(config)
        count = self._count(config)
        n_positions = n_positions if isinstance(n_positions, int) else len(n_positions)
        return (((len(self.kinds),) if len(self.kinds) > 1 else ()) + (len(layers) if layers is not None else config.n_layers,)
                + ((count,) if count is not None else ()) + ((n_positions,) if self.per_position else ()))

    def components(self, config: "ModelConfig", n_positions: "int | Sequence[int | str]",
                   layers: list[int] | None = None) -> list[Component]:
        """Every component, in row-major order of :meth:`shape`. ``n_positions``: a count (positions
        0 .. n-1) or the positions themselves (``interp.positions.PositionFrame.slots``)."""
        self.check(config)
        layer_list = list(range(config.n_layers)) if layers is None else list(layers)
        for layer in layer_list:
            if not 0 <= layer < config.n_layers:
                raise ComponentError(f"layer {layer} is out of range: the model has {config.n_layers} layers")
        count = self._count(config)
        indices = [None] if count is None else range(count)
        slots = (range(n_positions) if isinstance(n_positions, int) else list(n_positions)) if self.per_position else [None]
        return [Component(kind, layer, index, position) for kind in self.kinds for layer in layer_list
                for index in indices for position in slots]


GRANULARITIES: dict[str, Granularity] = {g.name: g for g in (
    Granularity("resid", "residual stream entering each block, by layer x position", ("resid_pre",), True),
    Granularity("attn_out", "attention output, by layer", ("attn_out",)),
    Granularity("attn_out_pos", "attention output, by layer x position", ("attn_out",), True),
    Granularity("mlp_out", "MLP output, by layer", ("mlp_out",)),
    Granularity("mlp_out_pos", "MLP output, by layer x position", ("mlp_out",), True),
    Granularity("block", "resid_pre, attention and MLP output, by kind x layer x position",
                ("resid_pre", "attn_out", "mlp_out"), True),
    Granularity("heads", "head output z over all positions, by layer x head", ("z",)),
    Granularity("heads_pos", "head output z, by layer x head x position", ("z",), True),
    Granularity("q", "query of each head over all positions, by layer x head", ("q",)),
    Granularity("k", "key of each KV group over all positions, by layer x KV group", ("k",)),
    Granularity("v", "value of each KV group over all positions, by layer x KV group", ("v",)),
    Granularity("q_pos", "query, by layer x head x position", ("q",), True),
    Granularity("k_pos", "key, by layer x KV group x position", ("k",), True),
    Granularity("v_pos", "value, by layer x KV group x position", ("v",), True),
    Granularity("pattern", "attention pattern of each head, by layer x head", ("pattern",)),
    Granularity("neurons", "MLP neurons (post-activation) over all positions, by layer x neuron", ("mlp_post",)),
    Granularity("experts", "routed experts' outputs of mixture-of-experts MLPs over all positions, by layer x expert",
                ("expert",)),
    Granularity("experts_pos", "routed experts' outputs, by layer x expert x position", ("expert",), True),
    Granularity("features", "latents of the spliced dictionaries over all positions, by dictionary x latent",
                FEATURE_KINDS, spliced=True),
    Granularity("features_pos", "latents of the spliced dictionaries, by dictionary x latent x position",
                FEATURE_KINDS, True, spliced=True),
)}
SPLICE_GRANULARITIES = tuple(name for name, g in GRANULARITIES.items() if g.spliced)


def get_granularity(name: str) -> Granularity:
    if name not in GRANULARITIES:
        raise ComponentError(f"unknown granularity {name!r}; known: {', '.join(GRANULARITIES)}")
    return GRANULARITIES[name]


def granularity_shape(config: "ModelConfig", granularity: str, n_positions: "int | Sequence[int | str]",
                      layers: list[int] | None = None) -> tuple[int, ...]:
    """Shape of the score array for a granularity, matching ``enumerate_components`` order."""
    return get_granularity(granularity).shape(config, n_positions, layers)


def enumerate_components(config: "ModelConfig", granularity: str, n_positions: "int | Sequence[int | str]",
                         layers: list[int] | None = None) -> list[Component]:
    """Every component of one granularity, in row-major order of ``granularity_shape``
    (``n_positions``: a count, or the positions of a :class:`~interp.positions.PositionFrame`)."""
    return get_granularity(granularity).components(config, n_positions, layers)
