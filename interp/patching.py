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
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.backends.base import Edit, RunOutput, RunSpec
from interp.components import INDEX_AXIS, POSITION_AXIS, SPLICE_GRANULARITIES, Component, Site, get_granularity
from interp.corruption import RunInput, check_settings, clean_and_corrupt, first_differences, target_and_source
from interp.hf_compat import kv_prefix
from interp.metrics import normalized, task_metric
from interp.model import Model, component_index
from interp.positions import PositionFrame
from interp.resources import require
from interp import placement, shortcuts
from interp.results import Result
from interp.resume import Resume
from interp.shortcuts import ShortcutError
from interp.splicing import feature_components
from interp.tasks import Task

@dataclass
class _Runs:
    """The two runs of a sweep and what the patched forwards resume from (per row of the task)."""

    target: RunInput
    target_resid: dict[int, torch.Tensor]
    target_cache: object
    target_acts: dict[Site, torch.Tensor]
    source_acts: dict[Site, torch.Tensor]
    first_diff: torch.Tensor  # [rows]: positions before it have the same activations in both runs
    read_floor: int  # the earliest position whose logits the metric reads: a patched run starts at or before it
    target_metric: torch.Tensor  # [rows]
    source_metric: torch.Tensor  # [rows]
    offloaded: bool = False  # the tensors above live in CPU memory (``--offload-activations``)

    @property
    def unchanged_before(self) -> int:
        return int(self.first_diff.min())


def _reference_runs(model: Model, task: Task, sites: set[Site], direction: str, corruption: str,
                    noise_std: float, seed: int, metric_of, ablated: set[Site], reference,
                    offload: bool = False) -> tuple[_Runs, int]:
    target, source = target_and_source(model, task, direction, corruption, noise_std, seed, sites=ablated,
                                       reference=reference)
    # what resumed runs replay (none when every forward runs in full)
    resid_sites = set() if model.full_forwards else {Site("resid_pre", layer) for layer in range(model.config.n_layers)}
    target_out = model.forward(target.spec(reads=resid_sites | sites, return_cache=not model.full_forwards))
    source_out = model.forward(source.spec(reads=sites))
    rows, width = task.clean_tokens.shape
    target_metric = metric_of(target_out.logits)
    checked, plain = target.plain_metric(model, metric_of, torch.arange(rows))
    shortcuts.check("unembedding only the positions the metric reads", target_metric[checked], plain,
                    f"the target run of {task.name!r} on {model.config.name}, {model.backend.name} backend", dtype=model.dtype)
    first = first_differences(target, source) if model.config.causal else torch.zeros(rows, dtype=torch.long)
    runs = _Runs(
        target=target, target_resid={site.layer: target_out.activations[site] for site in resid_sites},
        target_cache=target_out.past_key_values, target_acts={site: target_out.activations[site] for site in sites},
        source_acts=source_out.activations, first_diff=first.cpu(),
        read_floor=int(task.reads.min()) if target.reads is not None else width - 1,
        target_metric=target_metric, source_metric=metric_of(source_out.logits),
    )
    if offload:  # device memory then holds one patched forward at a time
        runs.target_resid, runs.target_acts, runs.source_acts = (
            placement.offload(runs.target_resid), placement.offload(runs.target_acts), placement.offload(runs.source_acts))
        runs.target_cache = placement.offload(runs.target_cache)
        runs.offloaded = True
    return runs, 3


@dataclass(frozen=True)
class _Placement:
    """Where one component is patched: ``rows`` [m] of the task (None: every row) at ``positions``
    [m] (padded coordinates; None: every position), in a run that starts at ``start``."""

    rows: torch.Tensor | None
    positions: torch.Tensor | None
    start: int


def _placement(component: Component, slot_rows: dict, runs: _Runs, width: int, causal: bool) -> _Placement | None:
    """Where ``component`` changes anything; None where it has the same value in both runs in every
    row (before a row's first differing position, or absent from the row's prompt)."""
    floor = runs.read_floor
    if component.position is None:
        start = min(runs.unchanged_before, width - 1, floor) if causal else 0
        return _Placement(None, None, start)
    index = slot_rows[component.position]
    live = (index >= runs.first_diff) & (index >= 0)
    if not bool(live.any()):
        return None
    rows = live.nonzero()[:, 0]
    positions = index[rows]
    return _Placement(rows, positions, min(int(positions.min()), floor) if causal else 0)


def _patch_edit(assignments: list[tuple[int, Component, _Placement]], source: torch.Tensor, n_rows: int, start: int) -> Edit:
    """One edit writing each variant's component from the source run into its batch rows; the
    patched run holds positions >= ``start`` only (all of one site, so one position axis)."""
    kind = assignments[0][1].kind
    axis = POSITION_AXIS[kind]
    full_suffix = source.narrow(axis, start, source.shape[axis] - start)

    def edit(activation: torch.Tensor) -> torch.Tensor:
        patched = activation.clone()
        suffix = full_suffix.to(activation.device)  # offloaded, or recorded on another device
        for variant, component, place in assignments:
            block = patched[variant * n_rows:(variant + 1) * n_rows]
            if place.rows is None:
                index = component_index(component, activation.dim())
            else:
                index = [slice(None)] * activation.dim()
                index[0] = place.rows.to(activation.device)
                index[axis] = (place.positions - start).to(activation.device)
                if component.index is not None:
                    index[INDEX_AXIS[kind]] = component.index
                index = tuple(index)
            block[index] = suffix[index].to(activation.dtype)
        return patched

    return edit


def site_numbers(model: Model, site: Site, n_positions: int) -> int:
    """Numbers one row holds at one position of ``site``'s tensor (for memory estimates)."""
    c = model.config
    widths = {"z": c.n_heads * c.d_head, "q": c.n_heads * c.d_head, "k": c.n_kv_heads * c.d_head,
              "v": c.n_kv_heads * c.d_head, "pattern": c.n_heads * n_positions, "mlp_post": c.d_mlp,
              "expert": max(c.n_experts, 1) * c.d_model}
    splices = {s.site: s.width for s in model.splices}
    return splices.get(site, widths.get(site.kind, c.d_model))


def sweep_bytes(model: Model, n_rows: int, n_positions: int, sites: set[Site], budget_bytes: float) -> float:
    """Rough memory of a patching sweep: the target run's residual stream at every layer and its KV
    cache, both runs' activations at the swept sites, and one batched forward (``budget_bytes``)."""
    c = model.config
    per_token = c.n_layers * (c.d_model + 2 * c.n_kv_heads * c.d_head) + 2 * sum(site_numbers(model, s, n_positions) for s in sites)
    return 4.0 * n_rows * n_positions * per_token + budget_bytes


def _variant_bytes(model: Model, n_prompts: int, n_positions: int, start: int) -> int:
    """Rough peak memory of one patched variant (activations of one layer, and that layer's KV
    prefix tiled for the variant and extended: the prefix itself is shared), bytes."""
    c = model.config
    length = n_positions - start
    per_token = 6 * c.d_model + 3 * c.d_mlp + 2 * c.n_heads * n_positions
    kv = 2 * 2 * c.n_kv_heads * c.d_head * n_positions
    return 4 * n_prompts * (length * per_token + kv + c.d_vocab)


def resolve_components(model: Model, granularity: str, frame: PositionFrame, layers: list[int] | None,
                       components: list | None) -> tuple[list[Component], list[int], list[str]]:
    """(components, shape, axes): every component of a granularity at the frame's positions, or an
    explicit list (shape [n]) whose positions the frame resolves (one-line errors for positions no
    prompt has)."""
    if components is None and granularity in SPLICE_GRANULARITIES:
        return feature_components(model.splices, granularity, list(frame.slots), layers)
    if components is None:
        spec = get_granularity(granularity)
        slots = list(frame.slots)
        return spec.components(model.config, slots, layers), list(spec.shape(model.config, slots, layers)), spec.axes
    parsed = [model.validate(c) for c in components]
    for component in parsed:
        if component.position is not None:
            frame.check(component.position, str(component))
    return parsed, [len(parsed)], ["component"]


def slot_rows(frame: PositionFrame, components: list[Component]) -> dict:
    """Each position the components use -> its token [rows] in each row (-1: absent)."""
    return {position: frame.rows(position).cpu() for position in {c.position for c in components} if position is not None}


def present_in_prompts(task: Task, components: list[Component], rows_of: dict) -> torch.Tensor:
    """[prompts, components] bool: whether each component exists in each prompt (a position past a
    shorter prompt's end does not)."""
    present = torch.ones(len(task), len(components), dtype=torch.bool)
    prompt_rows = slice(0, len(task))  # a prompt's first row (its answer row) has its prompt's positions
    for i, component in enumerate(components):
        if component.position is not None:
            present[:, i] = rows_of[component.position][prompt_rows] >= 0
    return present


def effects(task: Task, patched_rows: torch.Tensor, target_rows: torch.Tensor, source_rows: torch.Tensor,
            present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """(scores [components], per_prompt [prompts, components], patched [prompts, components],
    target mean, source mean) from per-row metrics. A score is the normalized mean effect over the
    prompts in which the component exists (0 = no effect, 1 = the whole clean-vs-corrupt
    difference); per-prompt effects are NaN where it does not."""
    patched = task.fold(patched_rows)
    target, source = task.fold(target_rows), task.fold(source_rows)
    target_mean, source_mean = target.mean().item(), source.mean().item()
    everywhere = normalized(patched.mean(0), target_mean, source_mean)
    per_prompt = (patched - target[:, None]) / (source_mean - target_mean)
    per_prompt = torch.where(present, per_prompt, torch.full_like(per_prompt, float("nan")))
    scores = torch.where(present.all(0), everywhere, per_prompt.nanmean(0))
    return scores, per_prompt, patched, target_mean, source_mean


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
    positions: str = "auto",
    reference=None,
    ablated_sites: list | None = None,
    offload_activations: bool = False,
    progress: bool = True,
) -> Result:
    """Exact activation patching of every component of ``granularity``.

    Args:
        direction: "noising" (corrupt activation into the clean run) or "denoising" (clean into corrupt).
        metric: "logit_diff", "prob" or "kl" (see ``interp.metrics``).
        corruption: "tokens" (the task's corrupt prompts), "gaussian" (noise of ``noise_std``
            embedding standard deviations on the subject tokens, seeded), or an ablation: "zero",
            "mean" (over ``reference``, an ``interp.ablation.MeanReference``) or "resample"
            (seeded); the corrupt run then has every site of the sweep ablated at once
            (``ablated_sites`` overrides which: a verification of a larger sweep passes that
            sweep's).
        layers: restrict the sweep to these layers (default all).
        batch_size: sequences per forward pass (each patched variant holds all the task's rows,
            so ``batch_size // rows`` variants, at least one); default from ``memory_budget_mb``.
        components: patch exactly these components instead of every one of ``granularity``
            (the result then has shape [len(components)]).
        positions: the position frame of a position-resolved granularity (``interp.positions``):
            "auto" (from the start when every prompt has the same length, else from the end),
            "start", "end" or "named".
        offload_activations: keep the two reference runs' activations and KV cache (the
            residual stream at every layer: the sweep's largest memory) in CPU memory, and move
            each patched forward's share to its layer's device when it runs.

    Returns a :class:`Result` whose ``scores`` are normalized mean effects (0 = no effect,
    1 = the whole clean-vs-corrupt difference) and whose arrays hold ``per_prompt`` normalized
    effects (NaN where a component does not exist in a prompt) and ``patched_metric`` raw metric
    values, both [n_prompts, n_components].
    """
    check_settings(model, task, direction, corruption, reference)
    start_time = time.perf_counter()
    n_rows, n_positions = task.clean_tokens.shape
    label = granularity if components is None else "components"
    frame = task.frame(positions)
    components, shape, axes = resolve_components(model, granularity, frame, layers, components)
    sites = {component.site for component in components}
    rows_of = slot_rows(frame, components)
    ablated = sites if ablated_sites is None else {Site(*site) for site in ablated_sites}
    budget = (batch_size or 0) * 4.0 * n_positions * 8 * model.config.d_model or memory_budget_mb * 2**20
    require(sweep_bytes(model, n_rows, n_positions, sites, budget), f"patching {len(components)} components on {n_rows} rows "
            f"of {n_positions} positions", "use fewer prompts, --layers, or a smaller --batch-size / --memory-mb")

    with torch.no_grad():
        metric_of, metric_forwards = task_metric(metric, model, task)
        runs, n_forward = _reference_runs(model, task, sites, direction, corruption, noise_std, seed, metric_of,
                                          ablated, reference, offload_activations)
        n_forward += metric_forwards
        patched = torch.empty(n_rows, len(components))

        groups: dict[tuple[int, int], list[tuple[int, _Placement]]] = defaultdict(list)
        edited = model.edited_sites() | {carried.site for carried in runs.target.carried}
        unchanged, identical = [], 0
        for i, component in enumerate(components):
            place = _placement(component, rows_of, runs, n_positions, model.config.causal and not model.full_forwards)
            if place is not None and _identical(runs, component, place, task.attention_mask):
                identical += 1
                place = None
            if place is None:
                unchanged.append(i)
                continue
            layer = 0 if model.full_forwards else _resume_layer(edited, component.layer)
            groups[(layer, place.start)].append((i, place))
        patched[:, unchanged] = runs.target_metric.cpu()[:, None]
        n_forward += _check_skip(model, runs, components, unchanged, rows_of, metric_of, task)
        forward_equivalents = float(n_forward)
        bar = tqdm(total=len(components), initial=len(unchanged), desc=f"patching {label}", disable=not progress,
                   unit="component")
        waiting: deque[tuple[list[int], _PatchedRun]] = deque()  # asked for, output not yet back

        def patched_runs() -> Iterator[tuple[RunSpec, Resume | None]]:
            for (layer, start), members in sorted(groups.items()):
                if batch_size:
                    per_batch = max(1, batch_size // n_rows)
                else:
                    per_batch = max(1, int(memory_budget_mb * 2**20 // _variant_bytes(model, n_rows, n_positions, start)))
                for chunk_start in range(0, len(members), per_batch):
                    chunk = members[chunk_start:chunk_start + per_batch]
                    run = _patched_run(model, runs, [(components[i], place) for i, place in chunk], layer, start, n_rows,
                                       check=chunk_start == 0)
                    waiting.append(([i for i, _ in chunk], run))
                    yield run.spec, run.resume

        n_layers = model.config.n_layers
        for out in model.forwards(patched_runs()):
            indices, run = waiting.popleft()
            patched[:, indices] = _patched_values(model, runs, run, out, metric_of).T.cpu()
            n_forward += 1
            variants = len(indices) + run.check  # the first chunk of a group carries the resume check
            forward_equivalents += variants * (n_positions - run.start) / n_positions * (n_layers - run.layer) / n_layers
            bar.update(len(indices))
        bar.close()

    present = present_in_prompts(task, components, rows_of)
    scores, per_prompt, patched_prompts, target_mean, source_mean = effects(
        task, patched, runs.target_metric.cpu(), runs.source_metric.cpu(), present)
    clean_metric, corrupt_metric = clean_and_corrupt(direction, task.fold(runs.target_metric.cpu()),
                                                     task.fold(runs.source_metric.cpu()))
    return Result(
        method="exact", model=model.config.name, task=task.name, metric=metric, granularity=granularity,
        components=[str(c) for c in components], scores=scores.numpy().astype(np.float64), shape=shape,
        axes=axes, clean_metric=clean_metric.mean().item(), corrupt_metric=corrupt_metric.mean().item(),
        wall_seconds=time.perf_counter() - start_time, n_forward_passes=n_forward,
        settings=task.settings_under({"direction": direction, "corruption": corruption, "noise_std": noise_std, "seed": seed,
                                      "layers": layers, "n_prompts": len(task), "backend": model.backend.name,
                                      **frame_settings(task, frame), **ablation_settings(corruption, ablated, reference)}),
        tokens=list(task.first_tokens), position_labels=list(frame.labels) if "position" in axes else [],
        arrays={"per_prompt": per_prompt.numpy(), "patched_metric": patched_prompts.numpy(),
                "clean_metric": clean_metric.numpy(), "corrupt_metric": corrupt_metric.numpy()},
        extra={"forward_equivalents": forward_equivalents, "unchanged_components": len(unchanged),
               "identical_components": identical,
               "first_differing_position": runs.unchanged_before, "clean_prompts": task.clean_prompts,
               "corrupt_prompts": task.corrupt_prompts},
    )


def ablation_settings(corruption: str, ablated: set[Site], reference) -> dict:
    """What an ablation replaced (``ablated_sites``: [kind, layer] pairs) and, for a mean, over
    what (``reference``); nothing for a paired corruption."""
    from interp.corruption import ABLATIONS

    if corruption not in ABLATIONS:
        return {}
    out: dict = {"ablated_sites": [[site.kind, site.layer] for site in sorted(ablated)]}
    if reference is not None:
        out["reference"] = reference.label
    return out


def frame_settings(task: Task, frame: PositionFrame) -> dict:
    """The settings that say how a result's positions read: the frame, and the padding."""
    return {"positions": frame.kind, "padding_side": task.padding_side, "multi_token_answers": task.multi_token}


def _identical(runs: _Runs, component: Component, place: _Placement, mask: torch.Tensor | None) -> bool:
    """Whether the component has the same value in both runs wherever it is patched (real tokens
    only: padding holds values no real token reads), so patching it changes nothing."""
    source, target = runs.source_acts[component.site], runs.target_acts[component.site]
    if place.rows is None:
        index = component_index(component, source.dim())
        a, b = source[index], target[index]
        if mask is not None:  # every kind's slice has its positions on axis 1: compare real ones only
            keep = mask.to(a.device).reshape(*mask.shape, *[1] * (a.dim() - 2))
            return bool(((a == b) | ~keep).all())
        return torch.equal(a, b)
    index = [slice(None)] * source.dim()
    index[0] = place.rows.to(source.device)
    index[POSITION_AXIS[component.kind]] = place.positions.to(source.device)
    if component.index is not None:
        index[INDEX_AXIS[component.kind]] = component.index
    return torch.equal(source[tuple(index)], target[tuple(index)])


def _check_skip(model: Model, runs: _Runs, components: list[Component], unchanged: list[int], rows_of: dict,
                metric_of, task: Task) -> int:
    """The first-difference skip, checked once: of the components given the target metric unrun
    because every row has them before its first differing position, the latest one is patched in a
    plain run (every layer, every position) and must leave the metric as it is. Returns the
    forwards spent (0 or 1)."""
    skipped = [i for i in unchanged if components[i].position is not None and bool((rows_of[components[i].position] >= 0).any())]
    if not skipped:
        return 0
    latest = max(skipped, key=lambda i: int(rows_of[components[i].position].max()))
    component = components[latest]
    tokens = rows_of[component.position]
    present = (tokens >= 0).nonzero()[:, 0]
    place = _Placement(present, tokens[present], 0)
    with torch.no_grad():
        values = _patched_forward(model, runs, [(component, place)], 0, 0, task.n_rows, metric_of)
    shortcuts.check(f"skipping {component}, which comes before every row's first differing position", values[0],
                    runs.target_metric, f"{task.name!r} on {model.config.name}, {model.backend.name} backend", dtype=model.dtype)
    return 1


def _resume_layer(edited: set[Site], layer: int) -> int:
    """The layer a patched run of a component at ``layer`` resumes at: its own, or lower while
    the residual stream entering it is one of the ``edited`` sites (``Model.edited_sites``: a
    splice or ``model.patch`` every run applies), which replaying the recorded (already edited)
    residual would apply twice."""
    while layer > 0 and Site("resid_pre", layer) in edited:
        layer -= 1
    return layer


class ResumeCheckError(ShortcutError):
    """A resumed run disagrees with the plain forward: a bug, never a user error."""


@dataclass
class _PatchedRun:
    """One forward of a sweep: ``n_variants`` copies of the task's rows, each with its components
    patched; with ``check`` the last copy runs unpatched through the same shortcut."""

    spec: RunSpec
    resume: Resume
    layer: int
    start: int
    n_variants: int
    check: bool


def _patched_run(model: Model, runs: _Runs, members: list[tuple[Component, _Placement]], layer: int, start: int,
                 n_rows: int, check: bool = False) -> _PatchedRun:
    """The forward that patches each component in its own batch rows, resumed at ``layer`` from
    position ``start`` (replayed layers below, the KV prefix of positions before)."""
    n_variants = len(members) + check
    by_site: dict[Site, list[tuple[int, Component, _Placement]]] = defaultdict(list)
    for variant, (component, place) in enumerate(members):
        by_site[component.site].append((variant, component, place))
    edits: dict[Site, list[Edit]] = {site: [_patch_edit(assignments, runs.source_acts[site], n_rows, start)]
                                     for site, assignments in by_site.items()}
    devices = model.layer_devices() if runs.offloaded else None
    resid = runs.target_resid[layer][:, start:].repeat(n_variants, 1, 1) if layer > 0 else None
    if resid is not None and devices is not None:
        resid = resid.to(devices[layer])
    resume = Resume(layer, start, resid, kv_prefix(runs.target_cache, start, None, devices, repeats=n_variants))
    # the target run's own edits below ``layer`` (noise, ablations) are in the residual stream it replays
    spec = runs.target.spec(start, n_variants, edits=edits, from_layer=layer)
    return _PatchedRun(spec, None if model.full_forwards else resume, layer, start, n_variants, check)


def _patched_values(model: Model, runs: _Runs, run: _PatchedRun, out: RunOutput, metric_of) -> torch.Tensor:
    """Metric [variants, n_rows] of a patched run's output. With ``run.check`` the unpatched
    variant must give the target run's metric from its plain forward, or :class:`ResumeCheckError`
    is raised."""
    n_rows = runs.target_metric.shape[0]
    rows = torch.arange(n_rows, device=runs.target.tokens.device).repeat(run.n_variants)
    values = metric_of(out.logits, rows).view(run.n_variants, n_rows)
    if run.check:
        shortcuts.check(f"a run resumed at layer {run.layer} from position {run.start} (layers replayed, a KV prefix, "
                        "logits at the read positions only)", values[-1], runs.target_metric,
                        f"{model.config.name}, {model.backend.name} backend", rtol=1e-3, error=ResumeCheckError, dtype=model.dtype)
        values = values[:-1]
    return values


def _patched_forward(model: Model, runs: _Runs, members: list[tuple[Component, _Placement]], layer: int, start: int,
                     n_rows: int, metric_of, check: bool = False) -> torch.Tensor:
    """:func:`_patched_run` run and measured: metric [variants, n_rows]."""
    run = _patched_run(model, runs, members, layer, start, n_rows, check)
    return _patched_values(model, runs, run, model.forward(run.spec, run.resume), metric_of)
