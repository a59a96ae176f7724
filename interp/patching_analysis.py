"""The patching analysis: exact activation patching, or its attribution estimate (AtP / AtP*),
over one granularity or an explicit list of components.

``run_patching(model, task, PatchingConfig(granularity="heads_pos", method="atp*", verify_top=20))``
returns the :class:`Result` of :func:`interp.patching.activation_patching` or
:func:`interp.attribution.attribution_patching`, with the verification and the false-negative
bound in its payload when asked for.
"""

from __future__ import annotations

import time

from dataclasses import dataclass
from typing import Literal

from interp.analysis import Analysis, ConfigError, Printed, RunSettings, option, register
from interp.components import GRANULARITIES
from interp.model import Model
from interp.patching import activation_patching
from interp.results import Result
from interp.tasks import Task


@dataclass(frozen=True)
class PatchingConfig(RunSettings):
    """``interp patch`` (see module doc)."""

    aliases = {"method": {"atp-star": "atp*"}}

    granularity: Literal[tuple(GRANULARITIES)] = option("heads", "what one component is")  # type: ignore[valid-type]
    method: Literal["exact", "atp", "atp*"] = option(
        "exact", "exact patching, or attribution patching (AtP; AtP* = QK fix + GradDrop; atp-star is the same, "
                 "and needs no quotes in a shell)")
    components: tuple[str, ...] | None = option(
        None, "patch these components instead of a granularity, e.g. L9.H6@13,L3.TC.1234@13")
    noise_std: float = option(3.0, "gaussian corruption: noise in embedding standard deviations", minimum=0)
    grad_drop: Literal["block", "sublayer"] = option("block", "AtP*: GradDrop unit")
    verify_top: int = option(0, "AtP/AtP*: exactly patch the K top-ranked components", minimum=0, quick=2)
    diagnose: bool = option(False, "AtP/AtP*: bound the effect of unverified components")
    diagnose_samples: int = option(256, "AtP/AtP* diagnostic: random subsets patched", minimum=1, quick=8)
    diagnose_p: float = option(0.1, "AtP/AtP* diagnostic: inclusion probability per component and sample",
                               minimum=0, maximum=1)
    confidence: float = option(0.95, "AtP/AtP* diagnostic: confidence of the bound", minimum=0, maximum=1)
    offload_activations: bool = option(False, "exact: keep the reference runs' activations and KV cache in CPU "
                                               "memory, each patched forward's share moved to the device when it runs")
    positions: Literal["auto", "start", "end", "named"] = option(
        "auto", "positions of a position-resolved granularity: counted from each prompt's start, from its end "
                "(@-1 = every prompt's last token), or the task's named positions (IOI: S1, IO, S2, END); auto: "
                "start when every prompt has the same length, else end")

    def validate(self) -> None:
        super().validate()
        if self.components and self.layers is not None:
            raise ConfigError("--layers restricts a granularity's sweep; --components names its layers itself "
                              f"(got --layers {','.join(map(str, self.layers))})")
        if self.method == "exact" and (self.verify_top or self.diagnose):
            raise ConfigError("--verify-top and --diagnose check an AtP/AtP* ranking; use them with --method atp or atp*")
        if self.method != "exact" and self.offload_activations:
            raise ConfigError(f"--offload-activations keeps an exact sweep's reference runs in CPU memory; --method "
                              f"{self.method} keeps none")


@dataclass
class PatchingPayload:
    """What a patching result holds besides its arrays. ``forward_equivalents``: the sweep's cost
    in full forwards; ``unchanged_components``: components that needed no forward (before the
    first differing position, or identical in both runs; ``identical_components`` of them the
    latter, exact patching only); ``first_differing_position``; the prompts; with ``verify_top``,
    ``verification`` (components, estimates, exact effects, cost); with ``diagnose``, ``diagnostic``
    (the false-negative bound)."""

    forward_equivalents: float
    unchanged_components: int
    first_differing_position: int
    clean_prompts: list
    corrupt_prompts: list
    identical_components: int | None = None
    check_forward_equivalents: float | None = None
    verification: dict | None = None
    diagnostic: dict | None = None


def run_patching(model: Model, task: Task, config: PatchingConfig = PatchingConfig()) -> Result:
    """The patching analysis: :func:`activation_patching` or ``attribution_patching`` (then
    ``verify_top`` and ``diagnose`` as asked) with ``config``'s settings."""
    began = time.perf_counter()
    reference = config.mean_reference(model, task)
    shared = dict(config.contrast(), noise_std=config.noise_std, layers=list(config.layers) if config.layers else None,
                  batch_size=config.batch_size, progress=config.progress, positions=config.positions, reference=reference,
                  components=list(config.components) if config.components else None)
    if config.method == "exact":
        result = activation_patching(model, task, config.granularity, memory_budget_mb=config.memory_mb,
                                     offload_activations=config.offload_activations, **shared)
    else:
        from interp.attribution import attribution_patching, diagnose, verify_top

        result = attribution_patching(model, task, config.granularity, method=config.method,
                                      grad_drop=config.grad_drop if config.method == "atp*" else False, **shared)
        result.timings = {"ranking": result.wall_seconds}
        if config.verify_top:
            verify_top(model, task, result, config.verify_top, progress=config.progress, reference=reference)
            result.timings["verification"] = result.extra["verification"]["seconds"]
        if config.diagnose:
            diagnose(model, task, result, samples=config.diagnose_samples, p=config.diagnose_p,
                     confidence=config.confidence, seed=config.seed, reference=reference)
            result.timings["diagnostic"] = result.extra["diagnostic"]["seconds"]
    result.wall_seconds = time.perf_counter() - began  # the whole analysis; its parts in ``timings``
    result.analysis = "patching"
    return result


register(Analysis(
    name="patching", command="patch", inputs="task", payload=PatchingPayload,
    config=PatchingConfig, run=run_patching, methods=("exact", "atp", "atp*"), page="Patching",
    figures="interp.ui.figures:patching_figures", figure_file="heatmap.html", printed=Printed("normalized effect"),
    summary="the effect of each component on the task's metric: exact activation patching, AtP or AtP*"))
