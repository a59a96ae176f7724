"""Checking an attribution ranking: exact patching of its top nodes, and a bound on what the
unverified rest could hide (AtP*'s subsampling diagnostic, Kramar et al. 2024, section 4)."""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from interp import shortcuts
from interp.backends.base import Edit
from interp.components import INDEX_AXIS, POSITION_AXIS, Component, Site
from interp.corruption import first_differences, target_and_source
from interp.hf_compat import kv_prefix
from interp.metrics import task_metric
from interp.model import Model, component_index
from interp.patching import activation_patching, slot_rows
from interp.results import Result
from interp.tasks import Task


def _run_settings(result: Result) -> dict:
    keys = ("direction", "corruption", "noise_std", "seed")
    return {key: result.settings[key] for key in keys} | {"metric": result.metric}


def _frame_of(result: Result) -> str:
    return result.settings.get("positions", "auto")


def verify_top(model: Model, task: Task, result: Result, k: int, progress: bool = True, reference=None) -> Result:
    """Exactly patch the ``k`` highest-ranked components of an attribution result.

    Adds ``arrays["exact"]`` (normalized exact effect, NaN where not verified) and
    ``extra["verification"]`` (components, estimates, exact effects, cost) to ``result``.
    """
    if k < 1:
        raise ValueError(f"--verify-top must be at least 1, got {k}")
    order = result.ranking()[:k]
    components = [result.components[i] for i in order]
    exact = activation_patching(model, task, result.granularity, components=components, progress=progress,
                                positions=_frame_of(result), reference=reference,
                                ablated_sites=result.settings.get("ablated_sites"), **_run_settings(result))
    column = np.full(len(result.components), np.nan)
    column[order] = exact.scores
    result.arrays["exact"] = column
    estimates = result.scores[order]
    result.extra["verification"] = {
        "k": len(order), "components": components, "estimate": estimates.tolist(), "exact": exact.scores.tolist(),
        "max_abs_error": float(np.max(np.abs(estimates - exact.scores))),
        "forward_passes": exact.n_forward_passes, "forward_equivalents": exact.extra["forward_equivalents"],
        "seconds": exact.wall_seconds,
    }
    return result


def _subset_edit(site_components: list[tuple[int, Component]], included: torch.Tensor, source: torch.Tensor,
                 n_rows: int, token_rows: dict, start: int) -> Edit:
    """Replace, in variant v's rows, every component whose ``included[v, node]`` is set (a
    positioned one at its token in each row that has it after ``start``)."""
    n_variants = included.shape[0]
    mask = torch.zeros(n_variants, *source.shape, dtype=torch.bool, device=source.device)
    for node, component in site_components:
        variants = included[:, node].nonzero()[:, 0].to(source.device)
        if not len(variants):
            continue
        if component.position is None:
            index = (variants, *component_index(component, source.dim()))
            mask[index] = True
            continue
        tokens = token_rows[component.position].to(source.device)
        rows = (tokens >= start).nonzero()[:, 0]
        index = [slice(None)] * source.dim()
        index[0] = rows
        index[POSITION_AXIS[component.kind]] = tokens[rows] - start
        if component.index is not None:
            index[INDEX_AXIS[component.kind]] = component.index
        for v in variants.tolist():
            mask[v][tuple(index)] = True
    rows_mask = mask.reshape(n_variants * n_rows, *source.shape[1:])
    tiled = source.repeat(n_variants, *[1] * (source.dim() - 1))
    return lambda activation: torch.where(rows_mask, tiled.to(activation.dtype), activation)


def diagnose(model: Model, task: Task, result: Result, *, samples: int = 256, p: float = 0.1,
             confidence: float = 0.95, seed: int = 0, batch_variants: int = 8, progress: bool = True,
             reference=None) -> Result:
    """Bound the largest effect an unverified component could have.

    ``samples`` forwards each jointly patch a random subset of the unverified components
    (each included with probability ``p``); per component, the Welch upper confidence bound of
    |mean(effect | included) - mean(effect | excluded)| at ``confidence``. Adds
    ``extra["diagnostic"]`` with the largest bound, normalized like ``scores``, and
    ``arrays["diagnostic_effects"]`` [samples] (each sample's mean metric change, unnormalized). Components at
    positions before the first one where the runs' inputs differ (causal models), in every prompt,
    have no effect at all and are left out (``n_unchanged``).
    """
    if not 0 < p < 1:
        raise ValueError(f"--diagnose-p must be between 0 and 1, got {p}")
    if samples < 4:
        raise ValueError(f"--diagnose-samples must be at least 4, got {samples}")
    began = time.perf_counter()
    settings = _run_settings(result)
    metric_of, metric_forwards = task_metric(settings.pop("metric"), model, task)
    n_forward = metric_forwards
    ablated = result.settings.get("ablated_sites")
    target, source = target_and_source(model, task, **settings, reference=reference,
                                       sites=None if ablated is None else {Site(*site) for site in ablated})
    first = first_differences(target, source).cpu() if model.config.causal else torch.zeros(task.n_rows, dtype=torch.long)
    parsed = [Component.parse(name) for name in result.components]
    frame = task.frame(_frame_of(result))
    token_rows = slot_rows(frame, parsed)
    verified = set(np.flatnonzero(~np.isnan(result.arrays["exact"]))) if "exact" in result.arrays else set()
    unchanged = {i for i, c in enumerate(parsed)
                 if c.position is not None and not bool((token_rows[c.position] >= first).any())}
    rest = [i for i in range(len(parsed)) if i not in verified | unchanged]
    if not rest:
        raise ValueError("every component was verified exactly: nothing is left to diagnose")
    n_rows, n_positions = task.clean_tokens.shape
    # runs start at the first differing position (no later than the first logit read), the
    # positions before it a shared KV cache
    if any(parsed[i].kind == "pattern" for i in rest) or not model.config.causal or model.full_forwards:
        start = 0
    else:
        start = min(int(first.min()), n_positions - 1, int(task.reads.min()))
    components = [parsed[i] for i in rest]
    sites = {c.site for c in components}
    prefix = target.prefix_cache(model, start)
    with torch.no_grad():
        source_out = model.forward(source.spec(start, reads=sites, past_key_values=prefix))
    source_acts = source_out.activations
    # the unpatched runs' metrics, per prompt, as the result recorded them
    target_run, source_run = ("clean", "corrupt") if settings["direction"] == "noising" else ("corrupt", "clean")
    target_metric = torch.as_tensor(result.arrays[f"{target_run}_metric"])
    where = f"the diagnostic of {task.name!r} on {model.config.name}, {model.backend.name} backend"
    shortcuts.check(f"the source run started at position {start} on a shared KV prefix",
                    task.fold(metric_of(source_out.logits).cpu()), torch.as_tensor(result.arrays[f"{source_run}_metric"]),
                    where, dtype=model.dtype)
    generator = torch.Generator().manual_seed(seed)
    included = torch.rand(samples, len(components), generator=generator) < p
    effects = torch.empty(samples)
    by_site: dict[Site, list[tuple[int, Component]]] = {}
    for node, component in enumerate(components):
        by_site.setdefault(component.site, []).append((node, component))
    bar = tqdm(total=samples, desc="diagnostic", disable=not progress, unit="sample")
    for first_sample in range(0, samples, batch_variants):
        chunk = included[first_sample:first_sample + batch_variants]
        check = first_sample == 0  # once: an unpatched variant through the same shortcut
        if check:
            chunk = torch.cat([chunk, torch.zeros(1, chunk.shape[1], dtype=torch.bool)])
        n_variants = chunk.shape[0]
        edits = {site: [_subset_edit(members, chunk, source_acts[site], n_rows, token_rows, start)]
                 for site, members in by_site.items()}
        rows = torch.arange(n_rows).repeat(n_variants)
        with torch.no_grad():
            logits = model.forward(target.spec(start, n_variants, edits=edits,
                                               past_key_values=kv_prefix(prefix, start, repeats=n_variants) if start else None)).logits
        patched = metric_of(logits, rows).view(n_variants, n_rows)
        change = torch.stack([task.fold(row).cpu() for row in patched]) - target_metric  # [variants, prompts]
        if check:
            shortcuts.check(f"the target run started at position {start} on a shared KV prefix", change[-1] + target_metric,
                            target_metric, where, dtype=model.dtype)
            change = change[:-1]
            n_variants -= 1
        effects[first_sample:first_sample + n_variants] = change.mean(1)
        n_forward += 1
        bar.update(n_variants)
    bar.close()

    bounds = np.zeros(len(components))
    values = effects.numpy().astype(np.float64)
    for node in range(len(components)):
        inside, outside = values[included[:, node].numpy()], values[~included[:, node].numpy()]
        if len(inside) < 2 or len(outside) < 2:
            bounds[node] = np.inf  # too few samples to say anything about this node
            continue
        var_in, var_out = inside.var(ddof=1) / len(inside), outside.var(ddof=1) / len(outside)
        standard_error = np.sqrt(var_in + var_out)
        bounds[node] = abs(inside.mean() - outside.mean())
        if standard_error > 0:  # Welch-Satterthwaite degrees of freedom
            dof = (var_in + var_out) ** 2 / (var_in ** 2 / (len(inside) - 1) + var_out ** 2 / (len(outside) - 1))
            bounds[node] += stats.t.ppf(confidence, dof) * standard_error
    difference = abs(result.corrupt_metric - result.clean_metric)
    if np.isinf(bounds).all():
        raise ValueError(f"no component was both included and excluded twice in {samples} samples at p={p}; "
                         "raise --diagnose-samples or --diagnose-p")
    worst = int(np.argmax(np.where(np.isinf(bounds), -np.inf, bounds)))
    result.arrays["diagnostic_effects"] = values  # each sample's mean change of the metric over prompts
    result.extra["diagnostic"] = {
        "bound": float(bounds[worst] / difference), "component": str(parsed[rest[worst]]),
        "confidence": confidence, "samples": samples, "p": p, "n_unverified": len(components),
        "n_unchanged": len(unchanged - verified),
        "n_without_enough_samples": int(np.isinf(bounds).sum()), "forward_passes": n_forward + 1 + bool(start),
        # the source suffix, the samples and the unpatched check variant
        "forward_equivalents": metric_forwards + (start + (2 + samples) * (n_positions - start)) / n_positions,
        "first_differing_position": start,
        "seconds": time.perf_counter() - began,
        "note": "jointly patched components may interact; the bound assumes their effects add",
    }
    return result
