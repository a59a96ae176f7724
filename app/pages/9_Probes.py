"""Probes: linear probe accuracy per layer with its interval, the control task and selectivity."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, open_run, table, timing_line  # noqa: E402
from interp.ui.figures import probe_figures  # noqa: E402

result = open_run("Probes", "Where a property is linearly readable from the residual stream, against a control task with random labels.")

best = int(result.scores.argmax())
st.markdown(f"**{result.task}** on `{result.model}` · best layer {best}: accuracy {result.scores[best]:.3f} "
            f"[{result.arrays['ci_low'][best]:.3f}, {result.arrays['ci_high'][best]:.3f}] · chance {result.extra['chance']:.3f} · "
            f"{timing_line(result)}")
for figure in probe_figures(result):
    chart(figure)
table(pd.DataFrame({"layer": range(len(result.scores)), "accuracy": result.scores, "95% low": result.arrays["ci_low"],
                    "95% high": result.arrays["ci_high"], "control": result.arrays["control_accuracy"],
                    "selectivity": result.arrays["selectivity"]}))
st.caption("Selectivity is the probe's accuracy minus the control task's (the same probe on labels assigned at random per "
           "word type): high accuracy with low selectivity means the probe memorises tokens rather than reads the property.")
