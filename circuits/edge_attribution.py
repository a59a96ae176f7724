"""Edge attribution patching: EAP (Syed et al.) and EAP-IG (Hanna et al. 2024).

EAP scores edge u -> d as (u(source) - u(target)) . dL/d(input of d), the gradient taken on the
target run (noising: target = clean, source = corrupt), summed over positions and averaged over
prompts: the first-order estimate of the metric change when that one edge carries the source
activation. EAP-IG averages the gradient over ``steps`` points on the straight line between the
source and target input embeddings, alpha = k / steps for k = 0 .. steps - 1 (the reference
code's left Riemann sum, which starts at the source input); EAP is the special case of one point
at the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from circuits.edge_graph import EdgeGraph
from circuits.edge_runs import downstream_gradients, gradient_sites, upstream_outputs, upstream_sites
from interp.components import Site
from interp.corruption import RunInput, check_settings, clean_and_corrupt, prompt_chunks, target_and_source
from interp.metrics import task_metric
from interp.model import Model
from interp.resources import require
from interp.sublayers import Sublayers
from interp.tasks import Task

METHODS = ("eap", "eap-ig")


@dataclass
class EdgeScores:
    """Scores of every edge of ``graph``, [n_upstream, n_downstream] in metric units (0 where no
    edge exists), with the metric of both runs (means over prompts)."""

    graph: EdgeGraph
    method: str
    scores: np.ndarray
    target_metric: float
    source_metric: float
    direction: str
    steps: int
    n_forward_passes: int
    n_backward_passes: int
    wall_seconds: float
    settings: dict = field(default_factory=dict)
    reference: object = None  # a mean ablation's reference set (``interp.ablation.MeanReference``)

    @property
    def clean_metric(self) -> float:
        return clean_and_corrupt(self.direction, self.target_metric, self.source_metric)[0]

    @property
    def corrupt_metric(self) -> float:
        return clean_and_corrupt(self.direction, self.target_metric, self.source_metric)[1]

    def normalized(self) -> np.ndarray:
        """Scores in the units of exact patching: 1 = the whole target-to-source difference."""
        difference = self.source_metric - self.target_metric
        if abs(difference) < 1e-8:
            raise ValueError(f"the clean and corrupt runs give the same metric ({self.target_metric:.4g}): nothing to normalize")
        return self.scores / difference

    def edge_vector(self) -> np.ndarray:
        """Normalized scores of the existing edges, in ``graph.edge_names()`` order."""
        return self.normalized()[self.graph.valid]

    def node_scores(self) -> np.ndarray:
        """Per upstream node, the sum of its outgoing edge scores (normalized): its AtP estimate,
        since dL/d(node output) is the sum of the gradients at everything it feeds."""
        return self.normalized().sum(axis=1)


CPU_BATCH_TOKENS = 256


def _check(method: str, steps: int) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown edge attribution method {method!r}; known: {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"EAP-IG needs at least 1 step, got {steps}")


def _read(model: Model, run: RunInput, sites: set[Site]) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
    with torch.no_grad():
        out = model.forward(run.spec(reads=sites))
    return out.logits, out.activations


def _gradient_run(model: Model, run: RunInput, embedding: torch.Tensor | None, sites: set[Site], metric) -> tuple:
    """One forward + backward on ``run`` (its input embedding replaced by ``embedding`` if given);
    returns (activations, gradients) at ``sites`` and the metric [batch]."""
    edits = {} if embedding is None else {Site("resid_pre", 0): [lambda _: embedding]}
    with torch.enable_grad():
        out = model.forward(run.spec(edits=edits, reads=sites | {Site("resid_pre", 0)}, keep_grad=True))
        values = metric(out.logits)
        values.sum().backward()
    grads = {site: (a.grad if a.grad is not None else torch.zeros_like(a)) for site, a in out.activations.items()}
    model.hf_model.zero_grad(set_to_none=True)
    return {site: a.detach() for site, a in out.activations.items()}, grads, values.detach()


def edge_attribution(
    model: Model,
    task: Task,
    method: str = "eap-ig",
    *,
    steps: int = 5,
    direction: str = "noising",
    metric: str = "logit_diff",
    corruption: str = "tokens",
    noise_std: float = 3.0,
    seed: int = 0,
    batch_size: int | None = None,
    reference=None,
    progress: bool = True,
) -> EdgeScores:
    """Score every edge of the model's graph with EAP or EAP-IG (``steps`` interpolation points).

    With an ablation (``corruption`` zero, mean over ``reference``, or resample) the source run
    has every upstream node (embeddings, head outputs, MLP outputs) ablated at once, and EAP-IG
    integrates from the ablated embedding.

    Costs, per batch of prompts: EAP one source forward and one target forward + backward;
    EAP-IG one source forward, one target forward and ``steps`` forward + backward passes.
    ``batch_size`` (rows per batch) defaults to all rows on a GPU and to about
    :data:`CPU_BATCH_TOKENS` tokens on a CPU, where larger batches are slower per token (their
    [nodes, batch, pos, d_model] tensors outgrow the caches: 32 prompts of 32 tokens took 9.9 s at
    once and 4.5 s in batches of 8, ``benchmarks/scaling.py``). The batches' scores add up exactly.
    """
    _check(method, steps)
    if batch_size is None and torch.device(model.device).type == "cpu":
        batch_size = max(1, CPU_BATCH_TOKENS // task.n_positions)
    check_settings(model, task, direction, corruption, reference)
    start = time.perf_counter()
    graph = EdgeGraph(model.config)
    sublayers = Sublayers(model).for_edges(method.upper())
    metric_of, n_forward = task_metric(metric, model, task)
    target, source = target_and_source(model, task, direction, corruption, noise_std, seed, sites=upstream_sites(graph),
                                       reference=reference)
    n_prompts = len(task)
    n_steps = 1 if method == "eap" else steps
    chunk_rows = min(batch_size or task.n_rows, task.n_rows)
    c = model.config
    require(4.0 * chunk_rows * task.n_positions * ((2 * len(graph.upstream) + len(graph.downstream)) * c.d_model
                                                  + c.n_layers * (14 * c.d_model + 4 * c.d_mlp + 3 * c.n_heads * task.n_positions)),
            f"{method} on {chunk_rows} rows of {task.n_positions} positions at once", "give a smaller --batch-size")
    scores = torch.zeros(len(graph.upstream), len(graph.downstream), dtype=torch.float64)
    target_metric, source_metric = torch.zeros(n_prompts), torch.zeros(n_prompts)
    n_backward = 0
    bar = tqdm(total=n_prompts * n_steps, desc=method, disable=not progress, unit="pass")
    for chunk in prompt_chunks(target, source, batch_size, task):
        prompts, row_ids, chunk_target, chunk_source = chunk.prompts.cpu(), chunk.row_ids, chunk.target, chunk.source

        def chunk_metric(logits: torch.Tensor) -> torch.Tensor:
            return metric_of(logits, row_ids)

        source_logits, source_acts = _read(model, chunk_source, upstream_sites(graph))
        source_metric[prompts] = chunk.fold(chunk_metric(source_logits)).cpu()
        gradient = None
        if method == "eap":
            sites = upstream_sites(graph) | gradient_sites(graph)
            activations, grads, values = _gradient_run(model, chunk_target, None, sites, chunk_metric)
            target_acts = activations
            gradient = downstream_gradients(sublayers, graph, activations, grads)
            n_forward += 2
            bar.update(len(prompts))
        else:
            target_logits, target_acts = _read(model, chunk_target, upstream_sites(graph))
            values = chunk_metric(target_logits)
            source_embedding = source_acts[Site("resid_pre", 0)]
            target_embedding = target_acts[Site("resid_pre", 0)]
            for k in range(n_steps):
                point = source_embedding + (k / n_steps) * (target_embedding - source_embedding)
                activations, grads, _ = _gradient_run(model, chunk_target, point, gradient_sites(graph), chunk_metric)
                step_gradient = downstream_gradients(sublayers, graph, activations, grads)
                gradient = step_gradient if gradient is None else gradient + step_gradient
                bar.update(len(prompts))
            gradient /= n_steps
            n_forward += 2 + n_steps
        n_backward += n_steps
        target_metric[prompts] = chunk.fold(values).cpu()
        difference = upstream_outputs(sublayers, graph, source_acts) - upstream_outputs(sublayers, graph, target_acts)
        if chunk_target.mask is not None:  # padding carries no edge (its gradient is 0 anyway)
            difference = difference * chunk_target.mask[None, :, :, None].to(difference.dtype)
        # rows of one prompt add up (an answer row's log-probability minus a wrong-answer row's)
        scores += torch.einsum("ubpd,vbpd->uv", difference, gradient).double().cpu()
    bar.close()
    scores = (scores / n_prompts).numpy() * graph.valid
    return EdgeScores(
        graph=graph, method=method, scores=scores, target_metric=target_metric.mean().item(),
        source_metric=source_metric.mean().item(), direction=direction, steps=n_steps,
        n_forward_passes=n_forward, n_backward_passes=n_backward, wall_seconds=time.perf_counter() - start,
        settings=task.settings_under({"direction": direction, "corruption": corruption, "noise_std": noise_std,
                                      "seed": seed, "metric": metric, "n_prompts": n_prompts,
                                      "backend": model.backend.name,
                                      **({"reference": reference.label} if reference is not None else {})}),
        reference=reference,
    )
