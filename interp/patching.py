"""Activation patching: one generic sweep over the components of a granularity.

For each component n, the target run gets n's activation from the source run and the metric is
recorded (noising: corrupt -> clean run; denoising: clean -> corrupt run). Exact, and cheap:

* many patched variants share one forward, stacked on the batch axis (variant-major: row
  ``v * n_prompts + i`` is prompt i under variant v);
* a patch at layer l and position p resumes the target run there (``interp.resume``): layers < l
  are replayed from the recorded residual stream and positions < p come from the recorded KV
  cache, so only what the patch can change is recomputed (all positions when attention is not
  causal);
* only the last position, which the metric reads, is unembedded;
* in a causal model, a component at a position before the first one where the two runs' inputs
  differ (IOI: the second name) has the same activation in both runs, so its patched metric is
  the target run's, with no forward at all; so has any component whose value is identical in the
  two runs (most latents of a spliced sparse dictionary: zero in both); a component over every
  position is patched in a run that starts at that first differing position.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.backends.base import Edit, RunSpec
from interp.components import POSITION_AXIS, SPLICE_GRANULARITIES, Component, Site, get_granularity
from interp.corruption import (RunInput, check_settings, clean_and_corrupt, first_difference, noise_edit,
                               target_and_source)
from interp.metrics import normalized, task_metric
from interp.model import Model, component_index
from interp.results import Result
from interp.hf_compat import kv_prefix
from interp.resume import Resume
from interp.splicing import feature_components
from interp.tasks import Task

@dataclass
class _Runs:
    """The two runs of a sweep and what the patched forwards resume from."""

    target: RunInput
    target_resid: dict[int, torch.Tensor]
    target_cache: object
    target_acts: dict[Site, torch.Tensor]
    source_acts: dict[Site, torch.Tensor]
    unchanged_before: int  # positions before this one have the same activations in both runs
    target_metric: torch.Tensor  # [n]
    source_metric: torch.Tensor  # [n]
    clean_metric: torch.Tensor
    corrupt_metric: torch.Tensor


def _reference_runs(model: Model, task: Task, sites: set[Site], direction: str, corruption: str,
                    noise_std: float, seed: int, metric_of) -> tuple[_Runs, int]:
    target, source = target_and_source(model, task, direction, corruption, noise_std, seed)
    resid_sites = {Site("resid_pre", layer) for layer in range(model.config.n_layers)}
    target_out = model.forward(RunSpec(target.tokens, edits=target.edits(), reads=resid_sites | sites, logits_to_keep=1,
                                       return_cache=True))
    source_out = model.forward(RunSpec(source.tokens, edits=source.edits(), reads=sites, logits_to_keep=1))
    target_metric, source_metric = metric_of(target_out.logits[:, -1]), metric_of(source_out.logits[:, -1])
    clean_metric, corrupt_metric = clean_and_corrupt(direction, target_metric, source_metric)
    runs = _Runs(
        target=target, target_resid={site.layer: target_out.activations[site] for site in resid_sites},
        target_cache=target_out.past_key_values, target_acts={site: target_out.activations[site] for site in sites},
        source_acts=source_out.activations,
        unchanged_before=first_difference(target, source) if model.config.causal else 0,
        target_metric=target_metric, source_metric=source_metric,
        clean_metric=clean_metric, corrupt_metric=corrupt_metric,
    )
    return runs, 2


def _patch_edit(assignments: list[tuple[int, Component]], source: torch.Tensor, n_prompts: int, start: int) -> Edit:
    """One edit writing each variant's component from the source run into its batch rows; the
    patched run holds positions >= ``start`` only (all of one site, so one position axis)."""
    axis = POSITION_AXIS[assignments[0][1].kind]
    suffix = source.narrow(axis, start, source.shape[axis] - start)

    def edit(activation: torch.Tensor) -> torch.Tensor:
        patched = activation.clone()
        for variant, component in assignments:
            shifted = component if component.position is None else component.at(component.position - start)
            index = component_index(shifted, activation.dim())
            rows = patched[variant * n_prompts:(variant + 1) * n_prompts]
            rows[index] = suffix[index]
        return patched

    return edit


def _variant_bytes(model: Model, n_prompts: int, n_positions: int, layer: int, start: int) -> int:
    """Rough peak memory of one patched variant (activations of one layer + KV prefix copy), bytes."""
    c = model.config
    length = n_positions - start
    per_token = 6 * c.d_model + 3 * c.d_mlp + 2 * c.n_heads * n_positions
    kv = (c.n_layers - layer) * 2 * c.n_kv_heads * c.d_head * start
    return 4 * n_prompts * (length * per_token + kv + c.d_vocab)


def resolve_components(model: Model, granularity: str, n_positions: int, layers: list[int] | None,
                       components: list | None) -> tuple[list[Component], list[int], list[str]]:
    """(components, shape, axes): every component of a granularity, or an explicit list (shape [n])."""
    if components is None and granularity in SPLICE_GRANULARITIES:
        return feature_components(model.splices, granularity, n_positions, layers)
    if components is None:
        spec = get_granularity(granularity)
        return (spec.components(model.config, n_positions, layers), list(spec.shape(model.config, n_positions, layers)),
                spec.axes)
    parsed = [model.validate(c, n_positions) for c in components]
    parsed = [c if c.position is None else c.at(c.position % n_positions) for c in parsed]
    return parsed, [len(parsed)], ["component"]


def activation_patching(
    model: Model,
    task: Task,
    granularity: str = "heads",
    *,
    direction: str = "noising",
    metric: str = "logit_diff",
    corruption: str = "tokens",
    noise_std: float = 3.0,
    seed: int = 0,
    layers: list[int] | None = None,
    batch_size: int | None = None,
    memory_budget_mb: float = 2048,
    components: list[Component] | None = None,
    progress: bool = True,
) -> Result:
    """Exact activation patching of every component of ``granularity``.

    Args:
        direction: "noising" (corrupt activation into the clean run) or "denoising" (clean into corrupt).
        metric: "logit_diff", "prob" or "kl" (see ``interp.metrics``).
        corruption: "tokens" (the task's corrupt prompts) or "gaussian" (noise of ``noise_std``
            embedding standard deviations on the subject tokens, seeded).
        layers: restrict the sweep to these layers (default all).
        batch_size: sequences per forward pass (each patched variant holds all ``n_prompts``
            prompts, so ``batch_size // n_prompts`` variants, at least one); default from
            ``memory_budget_mb``.
        components: patch exactly these components instead of every one of ``granularity``
            (the result then has shape [len(components)]).

    Returns a :class:`Result` whose ``scores`` are normalized mean effects (0 = no effect,
    1 = the whole clean-vs-corrupt difference) and whose arrays hold ``per_prompt`` normalized
    effects and ``patched_metric`` raw metric values, both [n_prompts, n_components].
    """
    check_settings(model, task, direction, corruption)
    start_time = time.perf_counter()
    n_prompts, n_positions = task.clean_tokens.shape
    label = granularity if components is None else "components"
    components, shape, axes = resolve_components(model, granularity, n_positions, layers, components)
    sites = {component.site for component in components}

    with torch.no_grad():
        metric_of, metric_forwards = task_metric(metric, model, task)
        runs, n_forward = _reference_runs(model, task, sites, direction, corruption, noise_std, seed, metric_of)
        n_forward += metric_forwards
        target_mean, source_mean = runs.target_metric.mean().item(), runs.source_metric.mean().item()
        patched = torch.empty(n_prompts, len(components))

        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        before = {i for i, c in enumerate(components) if c.position is not None and c.position < runs.unchanged_before}
        identical = {i for i, c in enumerate(components) if i not in before and _identical(runs, c)}
        unchanged = sorted(before | identical)
        patched[:, unchanged] = runs.target_metric.cpu()[:, None]
        edited = model.edited_sites()
        for i in sorted(set(range(len(components))) - set(unchanged)):
            # a component over every position equals the target's before the first difference,
            # so its run starts there too; without a causal mask every position can change
            position = components[i].position
            start = (min(runs.unchanged_before, n_positions - 1) if position is None else position) if model.config.causal else 0
            groups[(_resume_layer(edited, components[i].layer), start)].append(i)
        forward_equivalents = float(n_forward)
        bar = tqdm(total=len(components), initial=len(unchanged), desc=f"patching {label}", disable=not progress,
                   unit="component")
        for (layer, start), indices in sorted(groups.items()):
            if batch_size:
                per_batch = max(1, batch_size // n_prompts)
            else:
                per_batch = max(1, int(memory_budget_mb * 2**20 // _variant_bytes(model, n_prompts, n_positions, layer, start)))
            for chunk_start in range(0, len(indices), per_batch):
                chunk = indices[chunk_start:chunk_start + per_batch]
                values = _patched_forward(model, runs, [components[i] for i in chunk], layer, start, n_prompts, metric_of,
                                          check=chunk_start == 0)
                patched[:, chunk] = values.T.cpu()
                n_forward += 1
                variants = len(chunk) + (chunk_start == 0)  # the first chunk of a group carries the resume check
                n_layers = model.config.n_layers
                forward_equivalents += variants * (n_positions - start) / n_positions * (n_layers - layer) / n_layers
                bar.update(len(chunk))
        bar.close()

    scores = normalized(patched.mean(0), target_mean, source_mean)
    # per prompt, normalized by the mean difference so that the rows average to ``scores``
    per_prompt = (patched - runs.target_metric.cpu()[:, None]) / (source_mean - target_mean)
    return Result(
        method="exact", model=model.config.name, task=task.name, metric=metric, granularity=granularity,
        components=[str(c) for c in components], scores=scores.numpy().astype(np.float64), shape=shape,
        axes=axes, clean_metric=runs.clean_metric.mean().item(),
        corrupt_metric=runs.corrupt_metric.mean().item(), wall_seconds=time.perf_counter() - start_time,
        n_forward_passes=n_forward,
        settings={"direction": direction, "corruption": corruption, "noise_std": noise_std, "seed": seed,
                  "layers": layers, "n_prompts": n_prompts, "backend": model.backend.name, **task.settings},
        tokens=model.to_str_tokens(task.clean_tokens[0]),
        arrays={"per_prompt": per_prompt.numpy(), "patched_metric": patched.numpy(),
                "clean_metric": runs.clean_metric.cpu().numpy(), "corrupt_metric": runs.corrupt_metric.cpu().numpy()},
        extra={"forward_equivalents": forward_equivalents, "unchanged_components": len(unchanged),
               "identical_components": len(identical),
               "first_differing_position": runs.unchanged_before, "clean_prompts": task.clean_prompts,
               "corrupt_prompts": task.corrupt_prompts},
    )


def _identical(runs: _Runs, component: Component) -> bool:
    """Whether the component has the same value in both runs (patching it changes nothing)."""
    source, target = runs.source_acts[component.site], runs.target_acts[component.site]
    index = component_index(component, source.dim())
    return torch.equal(source[index], target[index])


def _resume_layer(edited: set[Site], layer: int) -> int:
    """The layer a patched run of a component at ``layer`` resumes at: its own, or lower while
    the residual stream entering it is one of the ``edited`` sites (``Model.edited_sites``: a
    splice or ``model.patch`` every run applies), which replaying the recorded (already edited)
    residual would apply twice."""
    while layer > 0 and Site("resid_pre", layer) in edited:
        layer -= 1
    return layer


class ResumeCheckError(RuntimeError):
    """A resumed run disagrees with the plain forward: a bug, never a user error."""


def _patched_forward(model: Model, runs: _Runs, components: list[Component], layer: int, start: int,
                     n_prompts: int, metric_of, check: bool = False) -> torch.Tensor:
    """Metric [variants, n_prompts] with each component patched in its own batch rows.

    With ``check``, one more variant runs unpatched through the same shortcut (replayed layers
    below ``layer``, the KV prefix of positions before ``start``): it must give the target run's
    metric from its plain forward, or :class:`ResumeCheckError` is raised."""
    n_variants = len(components) + check
    rows = torch.arange(n_prompts, device=runs.target.tokens.device).repeat(n_variants)
    edits: dict[Site, list[Edit]] = defaultdict(list)
    if layer == 0 and runs.target.noise is not None:  # the target run's own noise, on the positions computed
        edits[Site("resid_pre", 0)].append(noise_edit(runs.target.noise, start, n_variants))
    by_site: dict[Site, list[tuple[int, Component]]] = defaultdict(list)
    for variant, component in enumerate(components):
        by_site[component.site].append((variant, component))
    for site, assignments in by_site.items():
        edits[site].append(_patch_edit(assignments, runs.source_acts[site], n_prompts, start))
    resid = runs.target_resid[layer][:, start:].repeat(n_variants, 1, 1) if layer > 0 else None
    resume = Resume(layer, start, resid, kv_prefix(runs.target_cache, start, rows))
    out = model.forward(RunSpec(runs.target.tokens[:, start:].repeat(n_variants, 1), edits=dict(edits), logits_to_keep=1), resume)
    values = metric_of(out.logits[:, -1], rows).view(n_variants, n_prompts)
    if check:
        plain, resumed = runs.target_metric.to(values.device), values[-1]
        gap = (resumed - plain).abs().max().item()
        if not gap <= 1e-3 * max(1.0, plain.abs().max().item()):
            raise ResumeCheckError(f"a run resumed at layer {layer} from position {start} gives the metric {resumed.tolist()} "
                                   f"where the plain forward gives {plain.tolist()} ({model.config.name}, "
                                   f"{model.backend.name} backend); this is a bug in interp's resume shortcut")
        values = values[:-1]
    return values
