"""First-order effects per node from one layer's gradients: plain AtP, and the QK fix for
query and key nodes (values, head outputs, MLPs, neurons and the residual stream keep AtP).

A node is a slice of a site tensor (``interp.components``); its AtP estimate is
sum over the slice of (source - target) * dL/d(activation) on the target run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from interp.attention_geometry import AttentionGeometry
from interp.attribution.qk_fix import all_keys_fix, key_fix, query_fix
from interp.components import INDEX_AXIS, POSITION_AXIS, Component, Site

QK_KINDS = ("q", "k")


@dataclass(frozen=True)
class NodeSelector:
    """Where each of a list of components sits in a [batch, index, position] tensor.

    ``positions`` [rows, n] is each positioned component's token in each row of the task, in the
    coordinates of the run (already shifted by the run's start), and ``inside`` [rows, n] whether
    that row has it there (False where the prompt lacks the position, or it lies before the run's
    start, where the two runs agree); components over every position sum them."""

    index: torch.Tensor  # [n] head/group/neuron (0 for kinds without one)
    positions: torch.Tensor  # [rows, n]
    inside: torch.Tensor  # [rows, n] bool
    positioned: torch.Tensor  # [n] bool: the component is one position, not all of them

    @classmethod
    def of(cls, components: list[Component], token_rows: dict, n_rows: int, start: int) -> "NodeSelector":
        """``token_rows``: each position the components use -> its token [rows] (-1: absent)."""
        positions = torch.zeros(n_rows, len(components), dtype=torch.long)
        inside = torch.zeros(n_rows, len(components), dtype=torch.bool)
        for i, c in enumerate(components):
            if c.position is not None:
                tokens = token_rows[c.position]
                inside[:, i] = tokens >= start
                positions[:, i] = (tokens - start).clamp(min=0)
        return cls(torch.tensor([c.index or 0 for c in components]), positions, inside,
                   torch.tensor([c.position is not None for c in components]))

    def pick(self, by_index_position: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[batch, index, position] of the task's ``rows`` -> [batch, n]; a component without a
        position sums them, one with a position reads its token in each row (0 where the row
        lacks it)."""
        device = by_index_position.device
        rows = rows.to(self.positions.device)
        positions, inside = self.positions[rows].to(device), self.inside[rows].to(device)
        batch = torch.arange(by_index_position.shape[0], device=device)[:, None]
        one = by_index_position[batch, self.index.to(device)[None], positions]
        one = torch.where(inside, one, torch.zeros_like(one))
        every = by_index_position.sum(-1)[:, self.index.to(device)]
        return torch.where(self.positioned.to(device), one, every)


def per_node(products: torch.Tensor, kind: str, selector: NodeSelector, rows: torch.Tensor) -> torch.Tensor:
    """Sum a site-shaped tensor of the task's ``rows`` over each selected component's slice: [batch, n]."""
    axes = [0] + ([INDEX_AXIS[kind]] if kind in INDEX_AXIS else []) + [POSITION_AXIS[kind]]
    rest = [a for a in range(products.dim()) if a not in axes]
    n_index = products.shape[INDEX_AXIS[kind]] if kind in INDEX_AXIS else 1
    shape = (products.shape[0], n_index, products.shape[POSITION_AXIS[kind]], -1)
    folded = products.permute(*axes, *rest).reshape(shape).sum(-1)  # [batch, index, position]
    return selector.pick(folded, rows)


class NodeEstimator:
    """Estimates for a fixed list of components, given target and source activations.

    The runs hold positions ``start`` on of the task's rows; ``token_rows`` maps each position the
    components use to its token [rows] (``interp.positions``). ``bind`` takes one batch of rows'
    (detached) activations of every site in :meth:`activation_sites`; :meth:`grad_sites` says which
    gradients :meth:`estimate` needs.
    """

    def __init__(self, model, components: list[Component], qk_fix: bool, token_rows: dict, n_rows: int,
                 start: int = 0) -> None:
        self.config = model.config
        self.qk_fix = qk_fix
        self.by_site: dict[Site, list[int]] = defaultdict(list)
        for i, c in enumerate(components):
            self.by_site[c.site].append(i)
        self.selectors = {site: NodeSelector.of([components[i] for i in indices], token_rows, n_rows, start)
                          for site, indices in self.by_site.items()}
        self.qk_layers = sorted({c.layer for c in components if qk_fix and c.kind in QK_KINDS})
        self.geometry = AttentionGeometry.of(model) if self.qk_layers else None

    def activation_sites(self) -> set[Site]:
        """Sites whose activations the two runs must record."""
        sites = set(self.by_site)
        for layer in self.qk_layers:
            sites |= {Site(kind, layer) for kind in ("q", "k", "v", "pattern", "z")}
        return sites

    def grad_sites(self) -> set[Site]:
        """Sites whose gradients :meth:`estimate` reads."""
        sites = {s for s in self.by_site if not (self.qk_fix and s.kind in QK_KINDS)}
        return sites | {Site("z", layer) for layer in self.qk_layers}

    def bind(self, target: dict[Site, torch.Tensor], source: dict[Site, torch.Tensor], rows: torch.Tensor,
             mask: torch.Tensor | None = None) -> None:
        """Record one batch of the task's ``rows``' activations (and check the QK geometry on them);
        ``mask`` [batch, positions of the run]: real tokens (padding contributes nothing)."""
        self.rows = rows
        self.deltas = {}
        for s in self.by_site:
            delta = (source[s] - target[s]).float()
            if mask is not None:  # positions are on axis 1, or 2 for patterns (queries)
                axis = POSITION_AXIS[s.kind]
                keep = mask.to(delta.device).reshape(mask.shape[0], *[1] * (axis - 1), mask.shape[1],
                                                     *[1] * (delta.dim() - axis - 1))
                delta = delta * keep
            self.deltas[s] = delta
        self.attention = {}
        for layer in self.qk_layers:
            geometry = self.geometry.at(layer, target[Site("q", layer)].shape[1], mask)
            q, k = geometry.rotate(target[Site("q", layer)], target[Site("k", layer)])
            geometry.check(q, k, target[Site("pattern", layer)])
            q_new, k_new = geometry.rotate(source[Site("q", layer)], source[Site("k", layer)])
            groups = self.config.n_heads // self.config.n_kv_heads
            v = target[Site("v", layer)].double().repeat_interleave(groups, dim=2)
            self.attention[layer] = (geometry, q, k, v, q_new, k_new)

    def estimate(self, layer: int, grads: dict[Site, torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
        """(component indices, estimates [batch, len(indices)]) for every node site of ``layer``."""
        out = []
        for site, indices in self.by_site.items():
            if site.layer != layer:
                continue
            if self.qk_fix and site.kind in QK_KINDS:
                values = self._qk(site, grads[Site("z", layer)].double())
            else:
                values = per_node(self.deltas[site] * grads[site].float(), site.kind, self.selectors[site], self.rows)
            out.append((indices, values.float()))
        return out

    def _qk(self, site: Site, grad_o: torch.Tensor) -> torch.Tensor:
        geometry, q, k, v, q_new, k_new = self.attention[site.layer]
        selector = self.selectors[site]
        if site.kind == "q":
            return selector.pick(query_fix(geometry, q, k, v, q_new, grad_o).permute(0, 2, 1), self.rows)
        groups = self.config.n_heads // self.config.n_kv_heads
        by_head = key_fix(geometry, q, k, v, k_new, grad_o).permute(0, 2, 1)  # [b, heads, pos]
        by_group = by_head.reshape(by_head.shape[0], -1, groups, by_head.shape[-1]).sum(2)
        if selector.positioned.all():
            return selector.pick(by_group, self.rows)
        # a key node over every position changes whole rows at once: recompute them
        whole = all_keys_fix(geometry, q, k, v, k_new, grad_o)  # [b, heads]
        whole = whole.reshape(whole.shape[0], -1, groups).sum(-1)  # [b, groups]
        return torch.where(selector.positioned, selector.pick(by_group, self.rows), whole[:, selector.index])
