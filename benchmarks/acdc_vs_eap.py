"""ACDC vs EAP and EAP-IG on the toy induction model, at the sizes ACDC chooses.

    python benchmarks/acdc_vs_eap.py [--thresholds 0.01,0.05,0.2] [--n-prompts 8]

The task is ``tasks.induction(..., break_match=True)``: the token before the answer's first occurrence
is replaced, which breaks the match the induction heads key on, so the previous-token -> induction-head
K-composition edges carry the clean-corrupt difference. For each ACDC threshold: edges kept,
forward passes, and the logit-difference faithfulness of ACDC's circuit and of EAP's and EAP-IG's
top-n circuits of the same size. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import interp
from circuits.edge_attribution import edge_attribution
from circuits.edge_circuits import compare_with_acdc
from interp import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", default="0.01,0.05,0.2")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "acdc_vs_eap.json"))
    args = parser.parse_args()
    model = interp.load_model("toy-induction", backend="transformer_lens")
    task = tasks.induction(model, n_prompts=args.n_prompts, seed=0, half_length=12, break_match=True)
    scored = {method: edge_attribution(model, task, method, progress=False) for method in ("eap", "eap-ig")}
    graph = scored["eap"].graph
    rows = []
    for threshold in (float(t) for t in args.thresholds.split(",")):
        found = compare_with_acdc(model, task, list(scored.values()), threshold, progress=False)
        rows.append({"threshold": threshold, "edges": found["edges"], "forward_passes": found["forward_passes"],
                     "seconds": found["wall_seconds"], "acdc": found["faithfulness"], **found["method_faithfulness_at_size"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": "toy-induction", "n_edges": graph.n_edges, "rows": rows}, indent=1))
    print(f"toy-induction, {graph.n_edges} edges, {args.n_prompts} prompts; logit-difference faithfulness at ACDC's size")
    print(f"  {'threshold':>9}{'edges':>7}{'forwards':>10}{'ACDC':>8}{'EAP-IG':>8}{'EAP':>8}")
    for r in rows:
        print(f"  {r['threshold']:>9g}{r['edges']:>7}{r['forward_passes']:>10}{r['acdc']:>8.3f}{r['eap-ig']:>8.3f}{r['eap']:>8.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
