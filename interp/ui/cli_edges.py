"""``interp edges``: edge-level circuit discovery with EAP / EAP-IG and faithfulness curves.

    interp edges --model smollm2-135m --task ioi --method eap-ig --out runs/ioi-edges

Writes ``result.json`` (normalized score per edge of the first method, edge names like
``L2.H0->L3.K0``; faithfulness curves under ``extra.curves``), ``arrays.npz`` (edge and node scores
per method), ``graph.json`` (the first method's top-n circuit, which the app draws) and
``edges.html`` (faithfulness curves and the circuit graph).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_command(subparsers) -> None:
    from circuits.edge_attribution import METHODS
    from interp.backends import BACKENDS
    from interp.corruption import CORRUPTIONS, DIRECTIONS
    from interp.metrics import METRICS

    p = subparsers.add_parser("edges", help="edge-level circuits: EAP / EAP-IG scores, faithfulness curves, circuit graph",
                              description="Score every edge (embeddings, heads' q/k/v inputs, MLPs, logits) with edge "
                                          "attribution patching, measure the faithfulness of top-n circuits, and save "
                                          "the top-n circuit as a graph.")
    p.add_argument("--model", default="smollm2-135m", help="bundled name, toy model, HF folder, .gguf file or hub name")
    p.add_argument("--task", default="ioi", help="ioi | capitals | greater_than | induction | path.jsonl")
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--method", nargs="+", default=["eap-ig"], choices=list(METHODS),
                   help="one or more methods; the first one's circuit is saved (e.g. --method eap-ig eap to compare)")
    p.add_argument("--ig-steps", type=int, default=5, help="EAP-IG interpolation points (reference code default 5)")
    p.add_argument("--top-n", type=int, default=100, help="edges in the saved circuit (before dangling-edge pruning)")
    p.add_argument("--sizes", default=None, help="comma-separated circuit sizes for the faithfulness curve (default 1,2,5,10,...)")
    p.add_argument("--compare-exact", action="store_true", help="also run exact head patching and compare the node ranking")
    p.add_argument("--acdc", type=float, default=None, metavar="THRESHOLD",
                   help="also run ACDC (KL threshold, one forward per edge: small models only) and compare at its size")
    p.add_argument("--direction", default="noising", choices=list(DIRECTIONS))
    p.add_argument("--corruption", default="tokens", choices=list(CORRUPTIONS))
    p.add_argument("--metric", default="logit_diff", choices=list(METRICS))
    p.add_argument("--backend", default="nnsight", choices=list(BACKENDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="prompts per forward/backward (default all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="run folder (default runs/<task>-edges)")
    p.set_defaults(func=_run_edges)


def _sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {text!r}") from None


def _run_edges(args: argparse.Namespace) -> int:
    from circuits.circuit_selection import save_graph
    from circuits.edge_circuits import discover_edges
    from interp.ui.circuit_figures import circuit_graph_figure, faithfulness_figure
    from interp.loading import load_model
    from interp.ui.figures import write_figures
    from interp.patching import activation_patching
    from interp.tasks import get_task

    sizes = _sizes(args.sizes)
    start = time.perf_counter()
    print(f"loading {args.model} ({args.backend}) ...", file=sys.stderr)
    model = load_model(args.model, backend=args.backend, device=args.device)
    task = get_task(model, args.task, n_prompts=args.n_prompts, seed=args.seed)
    exact = None
    if args.compare_exact:
        exact = activation_patching(model, task, "heads", direction=args.direction, metric=args.metric,
                                    corruption=args.corruption, seed=args.seed)
    result, graph = discover_edges(
        model, task, tuple(args.method), steps=args.ig_steps, top_n=args.top_n, sizes=sizes, direction=args.direction,
        metric=args.metric, corruption=args.corruption, seed=args.seed, batch_size=args.batch_size, exact=exact,
        acdc_threshold=args.acdc)
    result.extra["total_wall_seconds"] = time.perf_counter() - start
    out = Path(args.out or f"runs/{Path(task.name).stem}-edges")
    result.save(out)
    save_graph(graph, out / "graph.json")
    write_figures(out / "edges.html", [faithfulness_figure(result.extra["curves"], f"faithfulness · {task.name} · {model.config.name}"),
                                       circuit_graph_figure(graph)], f"edges · {task.name} · {model.config.name}")
    _print_summary(result, graph)
    print(f"wrote {out / 'result.json'}, {out / 'graph.json'} and {out / 'edges.html'}")
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
