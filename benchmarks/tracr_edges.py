"""Edge ROC AUC of EAP, EAP-IG and ACDC against the circuits tracr compiled (``tracr-reverse``,
``tracr-frac-prevs``), as in the ACDC paper's tracr evaluation.

    python benchmarks/tracr_edges.py [--n-prompts 32] [--thresholds 12]

For each model: the true edges (a reader reads a residual label a writer writes), those inert
under the task's equal-length corruption, and each method's AUC over all edges, live edges (both
nodes have weights) and reachable edges (all but the inert true ones); ACDC sweeps
``--thresholds`` KL thresholds log-spaced relative to the fully corrupted KL. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import interp
from circuits.edge_attribution import edge_attribution
from circuits.ground_truth import KnownCircuit, acdc_sweep, relative_thresholds
from interp import tasks
from interp.tracr_models import TRACR_MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--thresholds", type=int, default=12)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tracr_edges.json"))
    args = parser.parse_args()
    rows, reports = [], {}
    for name in TRACR_MODELS:
        model = interp.load_model(name, backend="transformer_lens")
        task = tasks.get_task(model, "tracr", n_prompts=args.n_prompts)
        seconds = {}
        scored = []
        for method in ("eap", "eap-ig"):
            start = time.perf_counter()
            scored.append(edge_attribution(model, task, method, progress=False))
            seconds[method] = time.perf_counter() - start
        start = time.perf_counter()
        circuits = acdc_sweep(model, task, relative_thresholds(model, task, args.thresholds))
        seconds["acdc"] = time.perf_counter() - start
        report = KnownCircuit.of(model).report(model, task, scored, circuits)
        reports[name] = {**report, "seconds": seconds, "acdc_sizes": [int(c.sum()) for c in circuits]}
        for method, auc in report["auc"].items():
            rows.append({"model": name, "method": method, "true": len(report["true_edges"]),
                         "inert": len(report["inert_true_edges"]), **{f"auc_{k}": round(v, 3) for k, v in auc.items()},
                         "seconds": round(seconds[method], 2)})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"n_prompts": args.n_prompts, "rows": rows, "reports": reports}, indent=1))
    header = list(rows[0])
    print(" ".join(f"{h:>16}" for h in header))
    for row in rows:
        print(" ".join(f"{str(row[h]):>16}" for h in header))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
