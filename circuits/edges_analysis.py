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
    ig_steps: int = option(5, "EAP-IG interpolation points (the reference code's default)", minimum=1)
    top_n: int = option(100, "edges in the saved circuit (before dangling-edge pruning)", minimum=1)
    sizes: tuple[int, ...] | None = option(None, "circuit sizes of the faithfulness curve (default 1,2,5,10,...)")
    compare_exact: bool = option(False, "also run exact head patching and compare the node ranking")
    acdc: float | None = option(None, "also run ACDC at this KL threshold (one forward per edge: small models only) "
                                      "and compare at its size", minimum=0)

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("give at least one edge attribution method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown edge attribution method {unknown[0]!r}; known: {', '.join(METHODS)}")
        if self.layers is not None:
            raise ConfigError("edge circuits score every layer; --layers does not apply to them")


def run_edges(model: Model, task: Task, config: EdgesConfig = EdgesConfig()) -> Result:
    """:func:`discover_edges` with ``config``'s settings; the circuit graph is the result's
    ``graph.json`` document, and ``total_wall_seconds`` includes the exact comparison."""
    from interp.patching import activation_patching

    start = time.perf_counter()
    shared = dict(direction=config.direction, metric=config.metric, corruption=config.corruption, seed=config.seed)
    exact = None
    if config.compare_exact:
        exact = activation_patching(model, task, "heads", progress=config.progress, **shared)
    result, graph = discover_edges(
        model, task, config.methods, steps=config.ig_steps, top_n=config.top_n,
        sizes=list(config.sizes) if config.sizes else None, batch_size=config.batch_size, exact=exact,
        acdc_threshold=config.acdc, progress=config.progress, **shared)
    result.analysis = "edges"
    result.extra["total_wall_seconds"] = time.perf_counter() - start
    result.documents["graph.json"] = graph
    return result


register(Analysis(
    name="edges", inputs="task", config=EdgesConfig, run=run_edges, methods=METHODS, page="Circuit",
    figures="interp.ui.circuit_figures:edges_figures",
    summary="edge-level circuits: EAP / EAP-IG scores, faithfulness curves, the top-n circuit graph"))
