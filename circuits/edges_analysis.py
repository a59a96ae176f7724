"""The edges analysis: edge attribution patching (EAP / EAP-IG) of every edge, faithfulness curves
of the top-n circuits, and the first method's top-n circuit as a graph (the ``graph.json``
document); optionally ACDC and exact head patching to compare with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from circuits.edge_attribution import METHODS
from circuits.edge_circuits import discover_edges
from interp.analysis import Analysis, ConfigError, RunSettings, option, register
from interp.model import Model
from interp.results import Result
from interp.tasks import Task


@dataclass(frozen=True)
class EdgesConfig(RunSettings):
    """``interp edges``: edge attribution patching (EAP / EAP-IG) of every edge, faithfulness
    curves of the top-n circuits, and the first method's top-n circuit as a graph. ``batch_size``
    is prompts per forward/backward pass (default all); ``layers`` and ``memory_mb`` do not apply."""

    methods: tuple[str, ...] = option(("eap-ig",), f"one or more of {', '.join(METHODS)}; the first one's circuit is "
                                                   "saved (e.g. --method eap-ig eap to compare)", flags=("--method",))
    ig_steps: int = option(5, "EAP-IG interpolation points (the reference code's default)", minimum=1, quick=2)
    top_n: int = option(100, "edges in the saved circuit (before dangling-edge pruning)", minimum=1)
    sizes: tuple[int, ...] | None = option(None, "circuit sizes of the faithfulness curve (default 1,2,5,10,...)")
    compare_exact: bool = option(False, "also run exact head patching and compare the node ranking")
    acdc: float | None = option(None, "also run ACDC at this KL threshold (one forward per edge: small models only) "
                                      "and compare at its size", minimum=0)

    def validate(self) -> None:
        super().validate()
        if not self.methods:
            raise ConfigError("give at least one edge attribution method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown edge attribution method {unknown[0]!r}; known: {', '.join(METHODS)}")
        if self.layers is not None:
            raise ConfigError("edge circuits score every layer; --layers does not apply to them")


@dataclass
class EdgesPayload:
    """What an edges result holds besides its arrays: the ``methods`` run, the graph's
    ``upstream`` / ``downstream`` node names and ``model_config`` (to rebuild it), each method's
    faithfulness ``curves``, the saved ``circuit`` (top_n, edges after pruning, faithfulness), the
    prompts; optionally ``node_comparison`` (against exact head patching), ``acdc``,
    ``ground_truth`` (tracr ports) and ``total_wall_seconds``."""

    methods: list
    model_config: dict
    upstream: list
    downstream: list
    curves: list
    circuit: dict
    clean_prompts: list
    corrupt_prompts: list
    node_comparison: list | None = None
    acdc: dict | None = None
    ground_truth: dict | None = None
    total_wall_seconds: float | None = None


def run_edges(model: Model, task: Task, config: EdgesConfig = EdgesConfig()) -> Result:
    """:func:`discover_edges` with ``config``'s settings; the circuit graph is the result's
    ``graph.json`` document, and ``total_wall_seconds`` includes the exact comparison."""
    from interp.patching import activation_patching

    start = time.perf_counter()
    shared = config.contrast()
    reference = config.mean_reference(model, task)
    exact = None
    if config.compare_exact:
        exact = activation_patching(model, task, "heads", progress=config.progress, reference=reference, **shared)
    result, graph = discover_edges(
        model, task, config.methods, steps=config.ig_steps, top_n=config.top_n,
        sizes=list(config.sizes) if config.sizes else None, batch_size=config.batch_size, exact=exact,
        acdc_threshold=config.acdc, reference=reference, progress=config.progress, **shared)
    result.analysis = "edges"
    result.extra["total_wall_seconds"] = time.perf_counter() - start
    result.documents["graph.json"] = graph
    return result


register(Analysis(
    name="edges", inputs="task", payload=EdgesPayload, config=EdgesConfig, run=run_edges, methods=METHODS, page="Circuit",
    figures="interp.ui.circuit_figures:edges_figures",
    summary="edge-level circuits: EAP / EAP-IG scores, faithfulness curves, the top-n circuit graph"))
