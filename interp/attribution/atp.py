"""Attribution patching: AtP and AtP* (Kramar et al. 2024) for every node type of the patching engine.

AtP estimates each node's patching effect as (n(source) - n(target)) . dL/dn on the target run,
for all nodes at once from one target forward + backward and one source forward, batched over
prompts. AtP* adds the QK fix (exact softmax for queries and keys, ``interp.attribution.qk_fix``)
and GradDrop (``interp.attribution.backward``): a node's importance is
E[ 1/(U-1) * sum_u |I_u(n)| ] where I_u is its estimate with residual-stream write u dropped from
the backward (U = layers, or sublayers). Rank by importance; ``scores`` keep the signed estimate
in the units of exact patching (0 = no effect, 1 = the whole clean-vs-corrupt difference).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.attribution.backward import layer_gradients, n_units, traced_run, units_below
from interp.attribution.estimates import QK_KINDS, NodeEstimator
from interp.backends.base import RunSpec
from interp.corruption import RunInput, check_settings, clean_and_corrupt, first_difference, prompt_chunks, target_and_source
from interp.metrics import normalized, task_metric
from interp.model import Model
from interp.patching import resolve_components
from interp.results import Result
from interp.tasks import Task

# method -> (QK fix, GradDrop unit)
METHODS = {"atp": (False, None), "atp*": (True, "block")}


def attribution_patching(
    model: Model,
    task: Task,
    granularity: str = "heads",
    *,
    method: str = "atp*",
    qk_fix: bool | None = None,
    grad_drop: str | None | bool = True,
    direction: str = "noising",
    metric: str = "logit_diff",
    corruption: str = "tokens",
    noise_std: float = 3.0,
    seed: int = 0,
    layers: list[int] | None = None,
    components: list | None = None,
    batch_size: int | None = None,
    from_first_difference: bool = True,
    progress: bool = True,
) -> Result:
    """AtP or AtP* estimates for every component of ``granularity`` (or of ``components``).

    Args:
        method: "atp" (plain) or "atp*" (QK fix + GradDrop); ``qk_fix`` and ``grad_drop``
            override its parts (``grad_drop``: "block", "sublayer", False; True = the method's).
        direction, metric, corruption, noise_std, seed, layers: as in exact patching.
        batch_size: prompts per forward/backward (default: all at once).
        from_first_difference: in a causal model, run the positions before the first one where
            the two runs' inputs differ once, without a graph, and the forwards and backwards
            from there on (same estimates, less work; nodes before it get exactly 0). Off where
            the QK fix or attention-pattern nodes read every key position.

    Returns a :class:`Result` (``method`` "atp" or "atp*") whose ``scores`` are the signed
    normalized estimates, with arrays ``per_prompt`` [n_prompts, n_components] and
    ``importance`` [n_components] (the ranking key: E|I| for AtP, the GradDrop score for AtP*,
    normalized by |clean - corrupt|), and ``n_backward_passes``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")
    default_qk, default_drop = METHODS[method]
    drop = default_drop if grad_drop is True else (grad_drop or None)
    check_settings(model, task, direction, corruption)
    start_time = time.perf_counter()
    n_prompts, n_positions = task.clean_tokens.shape
    nodes, shape, axes = resolve_components(model, granularity, n_positions, layers, components)
    hosts = model.splice_hosts()
    inside = [c for c in nodes if c.site in hosts and hosts[c.site].kind not in ("attn_out", "mlp_out")]
    if inside:
        raise ValueError(f"attribution patching reaches a dictionary's latents through the attention or MLP output it "
                         f"replaces; {inside[0]} belongs to one spliced at {hosts[inside[0].site]} (use exact patching)")
    if qk_fix and not any(c.kind in QK_KINDS for c in nodes):
        raise ValueError(f"the QK fix applies to query and key nodes only; granularity {granularity!r} has none")
    use_qk = default_qk if qk_fix is None else qk_fix
    if drop is not None and model.config.n_layers < 2:
        raise ValueError("GradDrop needs at least two layers to drop in turn")
    metric_of, metric_forwards = task_metric(metric, model, task)
    n_forward = metric_forwards
    target, source = target_and_source(model, task, direction, corruption, noise_std, seed)
    start = _first_changed_position(model, nodes, use_qk, target, source) if from_first_difference else 0
    live = [i for i, c in enumerate(nodes) if c.position is None or c.position >= start]
    estimator = NodeEstimator(model, [nodes[i] if nodes[i].position is None else nodes[i].at(nodes[i].position - start)
                                      for i in live], use_qk)
    live_index = torch.tensor(live, dtype=torch.long)

    estimates = torch.zeros(n_prompts, len(nodes))
    dropped = torch.zeros(n_prompts, len(nodes))
    target_metric, source_metric = torch.zeros(n_prompts), torch.zeros(n_prompts)
    units = n_units(model.config.n_layers, drop)
    lowest = min(c.layer for c in nodes)
    step = batch_size or n_prompts
    block_backwards = 0
    bar = tqdm(total=n_prompts, desc=f"{method} {granularity}", disable=not progress, unit="prompt")
    for chunk in prompt_chunks(target, source, batch_size):
        rows, row_ids, chunk_target, chunk_source = chunk.rows, chunk.row_ids, chunk.target, chunk.source

        def chunk_metric(logits: torch.Tensor) -> torch.Tensor:
            return metric_of(logits, row_ids)

        prefix = chunk_target.prefix_cache(model, start)  # the positions both runs share, once
        n_forward += bool(start)
        with torch.no_grad():
            suffix_source = chunk_source.positions(start)
            source_out = model.forward(RunSpec(suffix_source.tokens, edits=suffix_source.edits(), reads=estimator.activation_sites(),
                                               logits_to_keep=1, past_key_values=prefix))
        source_metric[rows] = chunk_metric(source_out.logits[:, -1]).cpu()
        suffix_target = chunk_target.positions(start)
        run = traced_run(model, suffix_target.tokens, suffix_target.edits(),
                         estimator.activation_sites() | estimator.grad_sites(), chunk_metric, drop, prefix)
        target_metric[rows] = run.metric.cpu()
        estimator.bind({s: a.detach() for s, a in run.activations.items()}, source_out.activations)
        n_forward += 2
        for layer, unit, grads in layer_gradients(run, estimator.grad_sites(), drop, lowest):
            block_backwards += unit != (layer, "block")  # a block dropped at its own layer: the skip path, no arithmetic
            for live_indices, values in estimator.estimate(layer, grads):
                indices = live_index[live_indices]
                if unit is None:
                    estimates[rows, indices] = values.cpu()
                    dropped[rows, indices] += units_below(layer, drop) * values.abs().cpu()
                else:
                    dropped[rows, indices] += values.abs().cpu()
        del run
        bar.update(row_ids.numel())
    bar.close()

    target_mean, source_mean = target_metric.mean().item(), source_metric.mean().item()
    difference = source_mean - target_mean
    scores = normalized(target_mean + estimates.mean(0), target_mean, source_mean)
    importance = (dropped / (units - 1) if drop else estimates.abs()).mean(0) / abs(difference)
    clean, corrupt = clean_and_corrupt(direction, target_metric, source_metric)
    n_chunks = -(-n_prompts // step)
    n_backward = n_chunks * (1 + units)
    share = (n_positions - start) / n_positions  # of each target/source forward and backward
    chosen = "atp*" if use_qk and drop else "+".join(["atp"] + ["qk"] * use_qk + ["graddrop"] * bool(drop))
    return Result(
        method=chosen, model=model.config.name, task=task.name, metric=metric, granularity=granularity,
        components=[str(c) for c in nodes], scores=scores.numpy().astype(np.float64), shape=shape, axes=axes,
        clean_metric=clean.mean().item(), corrupt_metric=corrupt.mean().item(),
        wall_seconds=time.perf_counter() - start_time, n_forward_passes=n_forward, n_backward_passes=n_backward,
        settings={"direction": direction, "corruption": corruption, "noise_std": noise_std, "seed": seed,
                  "layers": layers, "n_prompts": n_prompts, "backend": model.backend.name, "qk_fix": use_qk,
                  "grad_drop": drop, **task.settings},
        tokens=model.to_str_tokens(task.clean_tokens[0]),
        arrays={"per_prompt": (estimates / difference).numpy(), "importance": importance.numpy().astype(np.float64),
                "clean_metric": clean.numpy(), "corrupt_metric": corrupt.numpy()},
        extra={"forward_equivalents": metric_forwards + n_chunks * (start / n_positions + 2 * share)
               + 2.0 * block_backwards / model.config.n_layers * share,
               "first_differing_position": start, "unchanged_components": len(nodes) - len(live),
               "clean_prompts": task.clean_prompts, "corrupt_prompts": task.corrupt_prompts},
    )


def _first_changed_position(model: Model, nodes: list, qk_fix: bool, target: RunInput, source: RunInput) -> int:
    """Where the runs can start (0 when a node needs every key position's activations)."""
    reads_every_key = any(c.kind == "pattern" or (qk_fix and c.kind in QK_KINDS) for c in nodes)
    if not model.config.causal or reads_every_key:
        return 0
    return min(first_difference(target, source), target.tokens.shape[1] - 1)
