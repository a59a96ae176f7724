"""Bigram subnetworks: where the kept weights are, how bigram-like the subnetwork is, the ablations."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, header, pick_run, table  # noqa: E402
from interp.ui.figures import bigram_figures  # noqa: E402

header("Bigram subnetwork", "The weights that alone predict the next token from the current one (continuous sparsification).")
result = pick_run("Bigram")
if result is None:
    st.stop()

sweep = pd.DataFrame([{"lambda": row["lambda"], "kept": row["kept_fraction"], "r": row["ablations"]["subnetwork"]["r"],
                       "CE to bigram": row["ablations"]["subnetwork"]["cross_entropy_to_bigram"], "steps": row["steps_run"],
                       "stop": row["stop_reason"]} for row in result.extra["sweep"]])
table(sweep)
first = result.extra["sweep"][0]
st.markdown(f"**Ablations at lambda {first['lambda']:g}** (held-out text, nats)")
table(pd.DataFrame(first["ablations"]).T, hide_index=False)
for figure in bigram_figures(result):
    chart(figure)
if "optimal_pruning" in result.extra:
    overlap = result.extra["optimal_pruning"]["overlap"]
    st.info(f"Overlap with the optimal-pruning mask: {overlap['overlap']:.3f} (row-shuffle null "
            f"{overlap['null_mean']:.3f} ± {overlap['null_std']:.3f}, p = {overlap['p_value']:.3f})")
