"""Pruning: per-layer importance, what is dropped at k, and pruning curves per method."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, header, pick_run, table, timing_line  # noqa: E402
from interp.ui.figures import drop_figures, importance_figure, pruning_curves_figure  # noqa: E402

header("Pruning", "Which attention and MLP sublayers are redundant, and what dropping them costs.")
result = pick_run("Pruning")
if result is None:
    st.stop()

if result.method == "drop":
    st.markdown(f"Dropped {len(result.components)} units from `{result.model}`: {', '.join(result.components)} · "
                f"{timing_line(result)}")
    for figure in drop_figures(result):
        chart(figure)
    full, dropped = result.extra["full"], result.extra["dropped"]
    keys = [k for k in full if isinstance(full[k], (int, float))]
    table(pd.DataFrame({"measure": keys, "intact": [full[k] for k in keys], "pruned": [dropped.get(k) for k in keys]}))
    st.stop()

chart(importance_figure(result))
curves = result.extra.get("curves")
if not curves:
    st.info("This run has no pruning curves (it was run with --no-curves).")
    st.stop()

named = [c for c in curves["curves"] if c["method"] != "random"]
k = st.slider("units dropped (k)", 0, max(len(c["points"]) - 1 for c in named), 1)
rows = []
for curve in named:
    point = curve["points"][min(k, len(curve["points"]) - 1)]
    rows.append({"method": curve["name"], "dropped at k": ", ".join(curve["dropped"][:k]) or "(none)",
                 "perplexity": point["perplexity"], "parameters dropped": point.get("parameters_dropped")})
table(pd.DataFrame(rows))
metrics = [m for m in ("perplexity", "ioi_accuracy", "capitals_accuracy", "greater_than_accuracy") if m in curves["full"]]
metric = st.selectbox("curve metric", metrics)
chart(pruning_curves_figure(curves, metric))
findings = result.extra.get("findings") or {}
for name, finding in findings.items():
    (st.success if finding["holds"] else st.warning)(f"{name.replace('_', ' ')}: {'holds' if finding['holds'] else 'does not hold'}")
