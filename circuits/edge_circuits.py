"""Edge-level circuit discovery end to end: score edges with one or more methods, measure each
method's faithfulness curve, keep the top-n circuit as a graph, and compare the implied node
ranking with exact head patching. The CLI, the app and the notebooks all call this.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from circuits.circuit_selection import circuit_graph, prune_dangling, top_edges
from circuits.edge_attribution import EdgeScores, edge_attribution
from circuits.edge_graph import EdgeGraph
from circuits.edge_patching import FaithfulnessCurve, circuit_faithfulness, faithfulness_curve
from circuits.ground_truth import KnownCircuit, acdc_sweep, relative_thresholds
from interp.model import Model
from interp.results import Result
from interp.tasks import Task
from interp.tracr_models import read_metadata


def default_sizes(n_edges: int) -> list[int]:
    """Circuit sizes 1, 2, 5, 10, 20, 50, ... below ``n_edges``, then ``n_edges``."""
    sizes, scale = [], 1
    while scale < n_edges:
        sizes += [s for s in (scale, 2 * scale, 5 * scale) if s < n_edges]
        scale *= 10
    return sizes + [n_edges]


def compare_with_exact(scores: EdgeScores, exact: Result) -> dict:
    """Agreement of the head ranking implied by the edges (each head's summed outgoing scores)
    with an exact ``heads`` patching result of the same task and direction."""
    heads = {node.name: i for i, node in enumerate(scores.graph.upstream) if node.kind == "head"}
    missing = [name for name in exact.components if name not in heads]
    if exact.granularity != "heads" or missing:
        raise ValueError(f"compare_with_exact needs an exact 'heads' patching result, got granularity {exact.granularity!r}")
    edge_nodes = scores.node_scores()[[heads[name] for name in exact.components]]
    rho = spearmanr(np.abs(edge_nodes), np.abs(exact.scores)).statistic
    top = 10
    ours = set(np.argsort(-np.abs(edge_nodes))[:top])
    theirs = set(np.argsort(-np.abs(exact.scores))[:top])
    return {"method": scores.method, "spearman_abs": float(rho), f"top{top}_overlap": len(ours & theirs) / top,
            "pearson": float(np.corrcoef(edge_nodes, exact.scores)[0, 1]),
            "exact_wall_seconds": exact.wall_seconds, "edge_wall_seconds": scores.wall_seconds}


def compare_with_acdc(model: Model, task: Task, scored: list[EdgeScores], threshold: float, batch_size: int | None = None,
                      progress: bool = True) -> dict:
    """ACDC's circuit at ``threshold`` and, at its size, the faithfulness of each method's top-n circuit."""
    from circuits.acdc import acdc

    if scored[0].settings["corruption"] != "tokens":
        raise ValueError(f"ACDC patches edges from the task's corrupt prompts; it does not run with --corruption "
                         f"{scored[0].settings['corruption']}")
    found = acdc(model, task, threshold, progress=progress)
    graph, size = found.graph, int(found.keep.sum())
    circuits = [found.keep] + [prune_dangling(graph, top_edges(graph, s.scores, size)) for s in scored]
    faithfulness, _, _, _ = circuit_faithfulness(model, task, scored[0].settings, circuits, batch_size=batch_size,
                                                 progress=progress, label="ACDC comparison")
    return {"threshold": threshold, "edges": size, "kl": found.kl, "forward_passes": found.n_forward_passes,
            "wall_seconds": found.wall_seconds, "faithfulness": faithfulness[0],
            "method_faithfulness_at_size": {s.method: f for s, f in zip(scored, faithfulness[1:])},
            "edge_names": [graph.edge_names()[i] for i in np.flatnonzero(found.keep[graph.valid])]}


def discover_edges(
    model: Model,
    task: Task,
    methods: tuple[str, ...] = ("eap-ig",),
    *,
    steps: int = 5,
    top_n: int = 100,
    sizes: list[int] | None = None,
    direction: str = "noising",
    metric: str = "logit_diff",
    corruption: str = "tokens",
    seed: int = 0,
    batch_size: int | None = None,
    exact: Result | None = None,
    acdc_threshold: float | None = None,
    reference=None,
    progress: bool = True,
) -> tuple[Result, dict]:
    """Score edges with each of ``methods``, measure their faithfulness curves over ``sizes``
    (default :func:`default_sizes`), and return (Result, circuit graph of the first method's
    top-``top_n`` edges). The Result's ``scores`` are the first method's normalized edge scores in
    ``EdgeGraph.edge_names()`` order; ``extra`` holds the curves and, given ``exact`` (an exact
    heads patching result), the node-ranking comparison; with ``acdc_threshold``, ACDC's circuit at that
    KL threshold, its size and faithfulness, and the methods' faithfulness at the same size; on a
    tracr port, ``ground_truth``: each method's and an ACDC threshold sweep's edge ROC AUC against
    the compiled circuit (``circuits.ground_truth``)."""
    if not methods:
        raise ValueError("give at least one edge attribution method")
    n_edges = EdgeGraph(model.config).n_edges
    if top_n < 1 or top_n > n_edges:
        raise ValueError(f"--top-n {top_n} is out of range: the graph has {n_edges} edges")
    scored = [edge_attribution(model, task, method, steps=steps, direction=direction, metric=metric,
                               corruption=corruption, seed=seed, batch_size=batch_size, reference=reference,
                               progress=progress)
              for method in methods]
    graph = scored[0].graph
    sizes = sorted(set(sizes or default_sizes(graph.n_edges)))
    curves: list[FaithfulnessCurve] = [faithfulness_curve(model, task, s, sizes + [top_n], batch_size=batch_size,
                                                          progress=progress) for s in scored]
    first = scored[0]
    keep = prune_dangling(graph, top_edges(graph, first.scores, top_n))
    circuit_faithfulness = curves[0].faithfulness[-1]
    info = {"method": first.method, "model": model.config.name, "task": task.name, "metric": metric,
            "top_n": top_n, "faithfulness": circuit_faithfulness}
    graph_json = circuit_graph(graph, first.normalized(), keep, info)
    extra = {"methods": list(methods), "model_config": model.config.to_dict(),
             "upstream": [n.name for n in graph.upstream], "downstream": [n.name for n in graph.downstream],
             "curves": [dict(c.to_dict(), sizes=c.sizes[:-1], kept=c.kept[:-1], metric=c.metric[:-1],
                             faithfulness=c.faithfulness[:-1]) for c in curves],
             "circuit": {"top_n": top_n, "edges_after_pruning": int(keep.sum()), "faithfulness": circuit_faithfulness},
             "clean_prompts": task.clean_prompts, "corrupt_prompts": task.corrupt_prompts}
    if exact is not None:
        extra["node_comparison"] = [compare_with_exact(s, exact) for s in scored]
    if acdc_threshold is not None:
        extra["acdc"] = compare_with_acdc(model, task, scored, acdc_threshold, batch_size, progress)
    if read_metadata(model.source) is not None:  # a tracr port: score against its known circuit
        known = KnownCircuit.of(model)
        extra["ground_truth"] = known.report(model, task, scored, acdc_sweep(model, task, relative_thresholds(model, task)))
    arrays = {}
    for s in scored:
        arrays[f"edge_scores_{s.method}"] = s.edge_vector()
        arrays[f"node_scores_{s.method}"] = s.node_scores()
    names = graph.edge_names()
    result = Result(
        method=first.method, model=model.config.name, task=task.name, metric=metric, granularity="edges",
        components=names, scores=first.edge_vector().astype(np.float64), shape=[len(names)], axes=["edge"],
        clean_metric=first.clean_metric, corrupt_metric=first.corrupt_metric,
        wall_seconds=sum(s.wall_seconds for s in scored),
        n_forward_passes=sum(s.n_forward_passes for s in scored), n_backward_passes=sum(s.n_backward_passes for s in scored),
        settings={**first.settings, "steps": steps, "methods": list(methods), "top_n": top_n},
        tokens=list(task.first_tokens), arrays=arrays, extra=extra,
    )
    return result, graph_json


def circuit_from_result(result: Result, method: str, top_n: int) -> dict:
    """The top-``top_n`` circuit graph of ``method``'s stored edge scores in a saved edges run
    (for browsing other sizes without rerunning the model; faithfulness is not re-measured)."""
    from interp.config import ModelConfig

    key = f"edge_scores_{method}"
    if key not in result.arrays or "model_config" not in result.extra:
        raise ValueError(f"run {result.task!r} has no stored {method} edge scores")
    graph = EdgeGraph(ModelConfig(**result.extra["model_config"]))
    normalized = np.zeros(graph.valid.shape)
    normalized[graph.valid] = result.arrays[key]
    keep = prune_dangling(graph, top_edges(graph, normalized, top_n))
    info = {"method": method, "model": result.model, "task": result.task, "metric": result.metric, "top_n": top_n,
            "faithfulness": float("nan")}
    return circuit_graph(graph, normalized, keep, info)
