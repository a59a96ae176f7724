"""Run a model with chosen edges patched, and the faithfulness of circuits.

Each downstream node d reads its own residual stream: the run's residual stream plus, for every
edge u -> d that is patched, (u's activation from the source run - u's activation in this run).
Heads get their q/k/v recomputed from that input (``interp.sublayers``), MLPs their output, the
unembedding its final residual; nodes with no patched input edge run untouched. Patching every
edge gives the source run exactly; patching none gives the target run.

Faithfulness of a circuit C (the edges kept): run with every edge outside C patched from the
corrupt run and report (L(C) - L(empty)) / (L(full) - L(empty)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from circuits.edge_attribution import EdgeScores
from circuits.edge_graph import EdgeGraph
from circuits.edge_runs import upstream_outputs, upstream_sites
from circuits.circuit_selection import prune_dangling, top_edges
from interp.backends.base import Edit
from interp.components import Site
from interp.corruption import RunInput, prompt_chunks, target_and_source
from interp.metrics import task_metric
from interp.model import Model
from interp.sublayers import Sublayers
from interp.tasks import Task


class _EdgePatcher:
    """The edits of one forward in which ``patched`` [n_up, n_down] edges carry ``source`` values."""

    def __init__(self, sublayers: Sublayers, graph: EdgeGraph, patched: np.ndarray, source: torch.Tensor) -> None:
        self.sub, self.graph = sublayers, graph
        self.patched = torch.from_numpy(patched & graph.valid).to(device=source.device, dtype=source.dtype)
        # source - this run's value, per upstream row; rows fill in as the forward reaches them
        # (upstream rows are in execution order, so a node only ever reads a filled prefix)
        self.difference = source.clone()
        self.resid_pre: dict[int, torch.Tensor] = {}
        self.attn_out: dict[int, torch.Tensor] = {}

    def _record(self, row: int | slice, value: torch.Tensor) -> None:
        self.difference[row] -= value.to(self.difference.dtype)

    def _delta(self, columns: slice, upto: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(input change [n_cols, batch, pos, d_model], which columns change) for downstream
        ``columns``, whose writers are the upstream rows below ``upto``."""
        patched = self.patched[:upto, columns]
        changed = patched.any(0)
        if not changed.any():
            return None, changed
        return torch.einsum("ubpd,un->nbpd", self.difference[:upto], patched), changed

    def edits(self) -> dict[Site, list[Edit]]:
        c = self.graph.config
        edits: dict[Site, list[Edit]] = {Site("resid_post", c.n_layers - 1): [self._logits_edit()]}
        for layer in range(c.n_layers):
            edits[Site("resid_pre", layer)] = [self._capture_resid(layer)]
            for kind in ("q", "k", "v"):
                edits[Site(kind, layer)] = [self._qkv_edit(layer, kind)]
            edits[Site("z", layer)] = [self._capture_heads(layer)]
            edits[Site("attn_out", layer)] = [self._capture_attn(layer)]
            edits[Site("mlp_out", layer)] = [self._mlp_edit(layer)]
        return edits

    def _capture_resid(self, layer: int) -> Edit:
        def edit(value: torch.Tensor) -> torch.Tensor:
            self.resid_pre[layer] = value
            if layer == 0:
                self._record(0, value)
            return value
        return edit

    def _capture_heads(self, layer: int) -> Edit:
        rows = slice(self.graph.upstream_slice(layer).start, self.graph.upstream_slice(layer).stop - 1)

        def edit(z: torch.Tensor) -> torch.Tensor:
            self._record(rows, self.sub.head_outputs(layer, z).permute(2, 0, 1, 3))
            return z
        return edit

    def _capture_attn(self, layer: int) -> Edit:
        def edit(value: torch.Tensor) -> torch.Tensor:
            self.attn_out[layer] = value
            return value
        return edit

    def _qkv_edit(self, layer: int, kind: str) -> Edit:
        position = ("q", "k", "v").index(kind)
        upto = self.graph.upstream_slice(layer).start

        def edit(value: torch.Tensor) -> torch.Tensor:
            delta, changed = self._delta(self.graph.downstream_slice(layer, kind), upto)
            if delta is None:
                return value
            index = changed.nonzero()[:, 0]
            inputs = self.resid_pre[layer][None] + delta[index].to(value.dtype)
            recomputed = self.sub.attention_inputs(layer, inputs)[position]  # [n_changed, b, p, heads, d_head]
            value = value.clone()
            value[:, :, index] = recomputed[torch.arange(len(index)), :, :, index].permute(1, 2, 0, 3)
            return value
        return edit

    def _mlp_edit(self, layer: int) -> Edit:
        row = self.graph.upstream_slice(layer).stop - 1

        def edit(value: torch.Tensor) -> torch.Tensor:
            delta, _ = self._delta(self.graph.downstream_slice(layer, "mlp"), row)
            if delta is not None:
                resid = self.sub.mlp_input(layer, self.resid_pre[layer], self.attn_out[layer])
                value = self.sub.mlp_output(layer, resid + delta[0].to(value.dtype))
            self._record(row, value)
            return value
        return edit

    def _logits_edit(self) -> Edit:
        def edit(value: torch.Tensor) -> torch.Tensor:
            delta, _ = self._delta(self.graph.downstream_slice(0, "logits"), len(self.graph.upstream))
            return value if delta is None else value + delta[0].to(value.dtype)
        return edit


def run_with_patched_edges(model: Model, run: RunInput, patched: np.ndarray, source_upstream: torch.Tensor,
                           sublayers: Sublayers | None = None) -> torch.Tensor:
    """Logits at the last position [batch, d_vocab] of ``run`` (or, when the run names the positions
    its metric reads, ``run.reads``, at those: [batch, k, d_vocab]) with the ``patched`` edges
    ([n_up, n_down] bool) carrying ``source_upstream`` ([n_up, batch, pos, d_model], from
    ``upstream_outputs`` on the source run)."""
    graph = EdgeGraph(model.config)
    if patched.shape != graph.valid.shape:
        raise ValueError(f"edge mask has shape {patched.shape}; this model's graph needs {graph.valid.shape}")
    patcher = _EdgePatcher(sublayers or Sublayers(model).for_edges("edge patching"), graph, patched, source_upstream)
    with torch.no_grad():
        logits = model.forward(run.spec(edits=patcher.edits())).logits
    return logits[:, -1] if run.reads is None else logits


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-n circuits of one scoring, n in ``sizes`` (edges selected before
    pruning); ``kept`` counts the edges left after dangling ones are pruned."""

    method: str
    sizes: list[int]
    kept: list[int]
    metric: list[float]
    faithfulness: list[float]
    full_metric: float
    empty_metric: float

    def to_dict(self) -> dict:
        return asdict(self)


def patched_metrics(model: Model, task: Task, settings: dict, masks: list[np.ndarray], *, batch_size: int | None = None,
                    progress: bool = True, label: str = "circuits", per_prompt: bool = False,
                    reference=None) -> np.ndarray:
    """The task metric of the target run with every edge outside each circuit in ``masks``
    ([n_up, n_down] bool, True = kept) patched from the source run: [n_masks] means over prompts,
    or [n_masks, n_prompts] with ``per_prompt``. ``settings`` are an :class:`EdgeScores`' (metric,
    direction, corruption, noise_std, seed)."""
    graph = EdgeGraph(model.config)
    metric_of, _ = task_metric(settings["metric"], model, task)
    target, source = target_and_source(model, task, settings["direction"], settings["corruption"],
                                       settings["noise_std"], settings["seed"], sites=upstream_sites(graph),
                                       reference=reference)
    sublayers = Sublayers(model).for_edges("edge patching")
    n_prompts = len(task)
    values = np.zeros((len(masks), n_prompts))
    bar = tqdm(total=len(masks) * n_prompts, desc=label, disable=not progress, unit="run")
    for chunk in prompt_chunks(target, source, batch_size, task):
        with torch.no_grad():
            out = model.forward(chunk.source.spec(reads=upstream_sites(graph)))
        source_upstream = upstream_outputs(sublayers, graph, out.activations)
        prompts = chunk.prompts.cpu().numpy()
        for i, keep in enumerate(masks):
            logits = run_with_patched_edges(model, chunk.target, graph.valid & ~keep, source_upstream, sublayers)
            values[i, prompts] = chunk.fold(metric_of(logits, chunk.row_ids)).cpu().numpy()
            bar.update(len(prompts))
    bar.close()
    return values if per_prompt else values.mean(axis=1)


def circuit_faithfulness(model: Model, task: Task, settings: dict, circuits: list[np.ndarray], *,
                         batch_size: int | None = None, progress: bool = True,
                         label: str = "faithfulness", reference=None) -> tuple[list[float], list[float], float, float]:
    """(faithfulness, metric) of each circuit, and the full and empty circuits' metrics:
    faithfulness = (L(C) - L(empty)) / (L(full) - L(empty)), all means over prompts."""
    graph = EdgeGraph(model.config)
    masks = [graph.valid.copy(), *circuits, np.zeros_like(graph.valid)]
    means = patched_metrics(model, task, settings, masks, batch_size=batch_size, progress=progress, label=label,
                            reference=reference)
    full, empty = float(means[0]), float(means[-1])
    metrics = [float(x) for x in means[1:-1]]
    return [(x - empty) / (full - empty) for x in metrics], metrics, full, empty


def faithfulness_curve(model: Model, task: Task, scores: EdgeScores, sizes: list[int], *,
                       batch_size: int | None = None, progress: bool = True) -> FaithfulnessCurve:
    """Faithfulness of the circuits made of the top-n edges of ``scores`` (by |score|, dangling
    edges pruned) for each n in ``sizes``, with the same run settings as the scoring."""
    graph = scores.graph
    bad = [n for n in sizes if n < 0]
    if bad:
        raise ValueError(f"circuit sizes must be >= 0, got {bad[0]}")
    circuits = [prune_dangling(graph, top_edges(graph, scores.scores, n)) for n in sizes]
    faithfulness, metrics, full, empty = circuit_faithfulness(model, task, scores.settings, circuits, batch_size=batch_size,
                                                              progress=progress, label=f"faithfulness {scores.method}",
                                                              reference=scores.reference)
    return FaithfulnessCurve(method=scores.method, sizes=[int(n) for n in sizes], kept=[int(c.sum()) for c in circuits],
                             metric=metrics, faithfulness=faithfulness, full_metric=full, empty_metric=empty)
