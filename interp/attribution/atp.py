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

from interp import shortcuts
from interp.attribution.backward import TracedRun, layer_gradients, n_units, traced_run, units_below
from interp.attribution.estimates import QK_KINDS, NodeEstimator
from interp.corruption import RunInput, check_settings, clean_and_corrupt, first_difference, prompt_chunks, target_and_source
from interp.metrics import normalized, task_metric
from interp.model import Model
from interp.patching import ablation_settings, frame_settings, present_in_prompts, resolve_components, slot_rows
from interp.resources import require
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
    positions: str = "auto",
    reference=None,
    progress: bool = True,
) -> Result:
    """AtP or AtP* estimates for every component of ``granularity`` (or of ``components``).

    Args:
        method: "atp" (plain) or "atp*" (QK fix + GradDrop); ``qk_fix`` and ``grad_drop``
            override its parts (``grad_drop``: "block", "sublayer", False; True = the method's).
        direction, metric, corruption, noise_std, seed, layers, positions, reference: as in exact
            patching (an ablation ablates every node's site at once in the source run).
        batch_size: sequences per forward/backward (whole prompts; default: all at once).
        from_first_difference: in a causal model, run the positions before the first one where
            the two runs' inputs differ once, without a graph, and the forwards and backwards
            from there on (same estimates, less work; nodes before it get exactly 0). Off where
            the QK fix or attention-pattern nodes read every key position.

    Returns a :class:`Result` (``method`` "atp" or "atp*") whose ``scores`` are the signed
    normalized estimates, with arrays ``per_prompt`` [n_prompts, n_components] (NaN where a
    component does not exist in a prompt) and ``importance`` [n_components] (the ranking key: E|I|
    for AtP, the GradDrop score for AtP*, normalized by |clean - corrupt|), and ``n_backward_passes``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")
    default_qk, default_drop = METHODS[method]
    drop = default_drop if grad_drop is True else (grad_drop or None)
    check_settings(model, task, direction, corruption, reference)
    start_time = time.perf_counter()
    n_prompts, (n_rows, n_positions) = len(task), task.clean_tokens.shape
    frame = task.frame(positions)
    nodes, shape, axes = resolve_components(model, granularity, frame, layers, components)
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
    ablated = {c.site for c in nodes}
    target, source = target_and_source(model, task, direction, corruption, noise_std, seed, sites=ablated,
                                       reference=reference)
    start = _first_changed_position(model, nodes, use_qk, target, source, task) if from_first_difference else 0
    token_rows = slot_rows(frame, nodes)
    per_token = model.config.n_layers * (14 * model.config.d_model + 4 * model.config.d_mlp
                                         + 3 * model.config.n_heads * n_positions) + n_units(model.config.n_layers, drop)
    chunk_rows = min(batch_size or n_rows, n_rows)
    require(4.0 * chunk_rows * (n_positions - start) * per_token, f"{method} on {chunk_rows} rows of {n_positions - start} "
            "positions at once (the graph of every layer)", "give a smaller --batch-size")
    live = [i for i, c in enumerate(nodes) if c.position is None or bool((token_rows[c.position] >= start).any())]
    estimator = NodeEstimator(model, [nodes[i] for i in live], use_qk, token_rows, n_rows, start)
    live_index = torch.tensor(live, dtype=torch.long)

    estimates = torch.zeros(n_prompts, len(nodes))
    dropped = torch.zeros(n_prompts, len(nodes))
    target_metric, source_metric = torch.zeros(n_prompts), torch.zeros(n_prompts)
    units = n_units(model.config.n_layers, drop)
    lowest = min(c.layer for c in nodes)
    block_backwards = n_chunks = 0
    check_cost = 0.0
    bar = tqdm(total=n_prompts, desc=f"{method} {granularity}", disable=not progress, unit="prompt")
    for chunk in prompt_chunks(target, source, batch_size, task):
        prompts, row_ids, chunk_target, chunk_source = chunk.prompts.cpu(), chunk.row_ids, chunk.target, chunk.source
        n_chunks += 1

        def chunk_metric(logits: torch.Tensor) -> torch.Tensor:
            return metric_of(logits, row_ids)

        prefix = chunk_target.prefix_cache(model, start)  # the positions both runs share, once
        n_forward += bool(start)
        with torch.no_grad():
            source_out = model.forward(chunk_source.spec(start, reads=estimator.activation_sites(), past_key_values=prefix))
        source_metric[prompts] = chunk.fold(chunk_metric(source_out.logits)).cpu()
        mask = None if chunk_target.mask is None else chunk_target.mask[:, start:]

        def estimated(run: TracedRun) -> tuple[list, int, int]:
            """Where the forward ran: the estimates of every (layer, unit), the block backwards that
            did arithmetic, and those spent checking the batched ones."""
            estimator.bind({s: a.detach() for s, a in run.activations.items()}, source_out.activations, row_ids, mask)
            found, blocks = [], 0
            for layer, unit, grads in layer_gradients(run, estimator.grad_sites(), drop, lowest):
                blocks += unit != (layer, "block")  # a block dropped at its own layer: the skip path, no arithmetic
                found += [(layer, unit, live, values.detach()) for live, values in estimator.estimate(layer, grads)]
            return found, blocks, run.checked_backwards

        metric_values, (found, blocks, checked_backwards) = traced_run(
            model, chunk_target.spec(start, reads=estimator.activation_sites() | estimator.grad_sites(),
                                     past_key_values=prefix), chunk_metric, drop, estimated)
        target_metric[prompts] = chunk.fold(metric_values).cpu()
        if n_chunks == 1:  # once per call: both runs' metrics through the shortcuts against the plain computation
            name = (f"starting both runs at position {start} on a shared KV prefix" if start else "") + \
                   (" and " if start else "") + "unembedding only the positions the metric reads"
            where = f"{task.name!r} on {model.config.name}, {model.backend.name} backend"
            for label, shortcut, whole in (("target", metric_values, chunk_target), ("source", chunk_metric(source_out.logits),
                                                                                  chunk_source)):
                checked, plain = whole.plain_metric(model, metric_of, row_ids)
                shortcuts.check(f"{name} ({label} run)", shortcut[checked], plain, where, dtype=model.dtype)
                check_cost += (checked.stop - checked.start) / len(row_ids)
            n_forward += 2
        n_forward += 2
        block_backwards += blocks
        for layer, unit, live_indices, values in found:
            indices = live_index[live_indices]
            per_prompt = chunk.fold(values).cpu()  # a prompt's estimate: its rows' summed (before any |.|)
            if unit is None:
                estimates[prompts[:, None], indices] = per_prompt
                dropped[prompts[:, None], indices] += units_below(layer, drop) * per_prompt.abs()
            else:
                dropped[prompts[:, None], indices] += per_prompt.abs()
        check_cost += 2.0 * checked_backwards / model.config.n_layers * (n_positions - start) / n_positions
        bar.update(len(prompts))
    bar.close()

    target_mean, source_mean = target_metric.mean().item(), source_metric.mean().item()
    difference = source_mean - target_mean
    present = present_in_prompts(task, nodes, token_rows)
    per_prompt_estimates = torch.where(present, estimates / difference, torch.full_like(estimates, float("nan")))
    everywhere = normalized(target_mean + estimates.mean(0), target_mean, source_mean)
    scores = torch.where(present.all(0), everywhere, per_prompt_estimates.nanmean(0))
    ranking = dropped / (units - 1) if drop else estimates.abs()
    ranking = torch.where(present, ranking, torch.full_like(ranking, float("nan")))
    importance = torch.where(present.all(0), ranking.mean(0), ranking.nanmean(0)) / abs(difference)
    clean, corrupt = clean_and_corrupt(direction, target_metric, source_metric)
    n_backward = n_chunks * (1 + units)
    share = (n_positions - start) / n_positions  # of each target/source forward and backward
    chosen = "atp*" if use_qk and drop else "+".join(["atp"] + ["qk"] * use_qk + ["graddrop"] * bool(drop))
    return Result(
        method=chosen, model=model.config.name, task=task.name, metric=metric, granularity=granularity,
        components=[str(c) for c in nodes], scores=scores.numpy().astype(np.float64), shape=shape, axes=axes,
        clean_metric=clean.mean().item(), corrupt_metric=corrupt.mean().item(),
        wall_seconds=time.perf_counter() - start_time, n_forward_passes=n_forward, n_backward_passes=n_backward,
        settings=task.settings_under({"direction": direction, "corruption": corruption, "noise_std": noise_std, "seed": seed,
                                      "layers": layers, "n_prompts": n_prompts, "backend": model.backend.name,
                                      "qk_fix": use_qk, "grad_drop": drop, **frame_settings(task, frame),
                                      **ablation_settings(corruption, ablated, reference)}),
        tokens=list(task.first_tokens), position_labels=list(frame.labels) if "position" in axes else [],
        arrays={"per_prompt": per_prompt_estimates.numpy(), "importance": importance.numpy().astype(np.float64),
                "clean_metric": clean.numpy(), "corrupt_metric": corrupt.numpy()},
        extra={"forward_equivalents": metric_forwards + n_chunks * (start / n_positions + 2 * share)
               + 2.0 * block_backwards / model.config.n_layers * share + check_cost,
               "check_forward_equivalents": check_cost,
               "first_differing_position": start, "unchanged_components": len(nodes) - len(live),
               "clean_prompts": task.clean_prompts, "corrupt_prompts": task.corrupt_prompts},
    )


def _first_changed_position(model: Model, nodes: list, qk_fix: bool, target: RunInput, source: RunInput, task: Task) -> int:
    """Where the runs can start (0 when a node needs every key position's activations): the first
    position where any row's inputs differ, and no later than the first position whose logits
    the metric reads."""
    reads_every_key = any(c.kind == "pattern" or (qk_fix and c.kind in QK_KINDS) for c in nodes)
    if not model.config.causal or reads_every_key:
        return 0
    return min(first_difference(target, source), target.tokens.shape[1] - 1, int(task.reads.min()))
