"""``interp edges``: edge-level circuit discovery with EAP / EAP-IG and faithfulness curves.

    interp edges --model smollm2-135m --task ioi --method eap-ig --out runs/ioi-edges

Writes ``result.json`` (normalized score per edge of the first method, edge names like
``L2.H0->L3.K0``; faithfulness curves under ``extra.curves``), ``arrays.npz`` (edge and node scores
per method), ``graph.json`` (the first method's top-n circuit, which the app draws) and
``edges.html`` (faithfulness curves and the circuit graph).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from circuits.edges_analysis import EdgesConfig
from interp.analysis import TaskOptions
from interp.ui.flags import analysis_command, config_from_args, load, save_run


def add_command(subparsers) -> None:
    analysis_command(subparsers, "edges", "edge-level circuits: EAP / EAP-IG scores, faithfulness curves, circuit graph",
                   "Score every edge (embeddings, heads' q/k/v inputs, MLPs, logits) with edge attribution patching, "
                   "measure the faithfulness of top-n circuits, and save the top-n circuit as a graph.",
                     EdgesConfig, TaskOptions, _run_edges, out_help="run folder (default runs/<task>-edges)",
                     skip=("layers", "memory_mb"))


def _run_edges(args: argparse.Namespace) -> int:
    from circuits.edges_analysis import run_edges

    config = config_from_args(EdgesConfig, args)
    inputs = config_from_args(TaskOptions, args)
    model = load(args)
    task = inputs.build(model, seed=config.seed)
    result = run_edges(model, task, config)
    written = save_run(result, Path(args.out or f"runs/{Path(task.name).stem}-edges"))
    _print_summary(result, result.documents["graph.json"])
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _print_summary(result, graph: dict) -> None:
    print(f"{len(result.components)} edges; clean {result.metric} {result.clean_metric:.4f}, corrupt {result.corrupt_metric:.4f}")
    print(f"top 10 edges by {result.method} (normalized):")
    for name, score in result.top(10):
        print(f"  {name:<24} {score:+.4f}")
    for curve in result.extra["curves"]:
        points = ", ".join(f"{n}: {f:.3f}" for n, f in zip(curve["sizes"], curve["faithfulness"]))
        print(f"faithfulness {curve['method']:<7} {points}")
    circuit = result.extra["circuit"]
    print(f"circuit: top {circuit['top_n']} edges, {circuit['edges_after_pruning']} after pruning, "
          f"faithfulness {circuit['faithfulness']:.3f}, {len(graph['nodes'])} nodes")
    if "acdc" in result.extra:
        a = result.extra["acdc"]
        others = ", ".join(f"{m} {f:.3f}" for m, f in a["method_faithfulness_at_size"].items())
        print(f"ACDC (KL threshold {a['threshold']:g}): {a['edges']} edges, faithfulness {a['faithfulness']:.3f} "
              f"({a['forward_passes']} forwards, {a['wall_seconds']:.1f} s); top-{a['edges']} of {others}")
    if "ground_truth" in result.extra:
        truth = result.extra["ground_truth"]
        print(f"known circuit: {len(truth['true_edges'])} true edges, {len(truth['inert_true_edges'])} inert under this corruption")
        for method, auc in truth["auc"].items():
            print(f"  edge ROC AUC {method:<7} all {auc['all']:.3f}  live {auc['live']:.3f}  reachable {auc['reachable']:.3f}")
    for row in result.extra.get("node_comparison", []):
        print(f"{row['method']} head ranking vs exact head patching: Spearman |score| {row['spearman_abs']:.3f}, "
              f"top-10 overlap {row['top10_overlap']:.1f}, Pearson {row['pearson']:.3f} "
              f"({row['edge_wall_seconds']:.1f} s vs {row['exact_wall_seconds']:.1f} s)")
