"""The computational graph that edge-level circuit discovery scores.

Upstream nodes write into the residual stream: the embeddings (``EMBED``), every attention head
(``L3.H1``: z_h W_O^h) and every MLP (``L3.MLP``). Downstream nodes read it, each through its own
copy of the residual stream: each head's query (``L3.Q1``), each KV group's key and value
(``L3.K0``, ``L3.V0``), each MLP's input (``L3.MLP``) and the unembedding (``LOGITS``). An edge
u -> d exists when u writes before d reads: u's layer is below d's, or u is a head of d's own layer
feeding d's MLP in a sequential (not parallel attention/MLP) block. Edge names read
``"L2.H0->L3.K0"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interp.components import Component
from interp.config import ModelConfig

EMBED = "EMBED"
LOGITS = "LOGITS"


class EdgeError(ValueError):
    """An edge or node name that is not in the graph."""


@dataclass(frozen=True)
class NodeRef:
    """Where a node sits: ``kind`` in embed/head/mlp (upstream) or q/k/v/mlp/logits (downstream)."""

    name: str
    kind: str
    layer: int  # -1 for EMBED, n_layers for LOGITS
    index: int | None = None  # head (q) or KV group (k, v)

    @property
    def component(self) -> Component | None:
        """The node as a Component (None for EMBED and LOGITS); its name is that component's."""
        return None if self.name in (EMBED, LOGITS) else Component.parse(self.name)


def parse_edge(name: str) -> tuple[str, str]:
    """``"L2.H0->L3.Q1"`` -> its two node names, each ``EMBED``, ``LOGITS`` or a Component in
    canonical spelling (read by the one Component parser, so ``l2.h0->l3.q1`` is the same edge)."""
    upstream, arrow, downstream = str(name).partition("->")
    if not arrow:
        raise EdgeError(f"cannot parse edge {name!r}: expected e.g. L2.H0->L3.Q1")

    def node(text: str) -> str:
        text = text.strip().upper()
        if text in (EMBED, LOGITS):
            return text
        try:
            return str(Component.parse(text))
        except ValueError:
            raise EdgeError(f"cannot parse edge {name!r}: {text!r} is not a node (EMBED, LOGITS or a component)") from None

    return node(upstream), node(downstream)


class EdgeGraph:
    """Node lists and the [n_upstream, n_downstream] mask of edges that exist."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        n_layers = config.n_layers
        self.upstream: list[NodeRef] = [NodeRef(EMBED, "embed", -1)]
        self.downstream: list[NodeRef] = []
        for layer in range(n_layers):
            self.upstream += [NodeRef(str(Component("z", layer, h)), "head", layer, h) for h in range(config.n_heads)]
            self.upstream.append(NodeRef(str(Component("mlp_out", layer)), "mlp", layer))
            self.downstream += [NodeRef(str(Component("q", layer, h)), "q", layer, h) for h in range(config.n_heads)]
            for kind in ("k", "v"):
                self.downstream += [NodeRef(str(Component(kind, layer, g)), kind, layer, g) for g in range(config.n_kv_heads)]
            self.downstream.append(NodeRef(str(Component("mlp_out", layer)), "mlp", layer))
        self.downstream.append(NodeRef(LOGITS, "logits", n_layers))
        self.upstream_index = {node.name: i for i, node in enumerate(self.upstream)}
        self.downstream_index = {node.name: i for i, node in enumerate(self.downstream)}
        up_layer = np.array([node.layer for node in self.upstream])
        up_head = np.array([node.kind == "head" for node in self.upstream])
        down_layer = np.array([node.layer for node in self.downstream])
        down_mlp = np.array([node.kind == "mlp" for node in self.downstream])
        same_layer_ok = up_head[:, None] & down_mlp[None, :] & (not config.parallel_attn_mlp)
        self.valid = (up_layer[:, None] < down_layer[None, :]) | ((up_layer[:, None] == down_layer[None, :]) & same_layer_ok)

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def upstream_slice(self, layer: int) -> slice:
        """Upstream rows of ``layer``'s heads and MLP (row 0 is EMBED)."""
        per = self.config.n_heads + 1
        return slice(1 + layer * per, 1 + (layer + 1) * per)

    def downstream_slice(self, layer: int, kind: str) -> slice:
        """Downstream columns of ``layer``'s q, k, v or mlp nodes."""
        c = self.config
        start = layer * (c.n_heads + 2 * c.n_kv_heads + 1)
        offsets = {"q": (0, c.n_heads), "k": (c.n_heads, c.n_kv_heads), "v": (c.n_heads + c.n_kv_heads, c.n_kv_heads),
                   "mlp": (c.n_heads + 2 * c.n_kv_heads, 1)}
        if kind == "logits":
            return slice(len(self.downstream) - 1, len(self.downstream))
        offset, count = offsets[kind]
        return slice(start + offset, start + offset + count)

    def edge_names(self) -> list[str]:
        """Names of the existing edges, row-major over (upstream, downstream)."""
        rows, cols = np.nonzero(self.valid)
        return [f"{self.upstream[u].name}->{self.downstream[d].name}" for u, d in zip(rows, cols)]

    def edge_index(self, name: str) -> tuple[int, int]:
        """(upstream row, downstream column) of an edge name like ``"L0.H1->L1.K0"``."""
        try:
            source, target = parse_edge(name.replace(" ", ""))
        except EdgeError:
            source = target = None
        if source not in self.upstream_index or target not in self.downstream_index:
            raise EdgeError(f"edge {name!r} is not in the graph: expected e.g. 'EMBED->L0.Q0', 'L0.H1->L1.K0', 'L1.MLP->LOGITS'")
        u, d = self.upstream_index[source], self.downstream_index[target]
        if not self.valid[u, d]:
            raise EdgeError(f"edge {name!r} does not exist: {source} does not write before {target} reads")
        return u, d
