"""Lens: what the residual stream before and after each layer predicts (the logit lens)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, open_run, table, timing_line  # noqa: E402
from interp.ui.figures import lens_figures, tuned_lens_figures  # noqa: E402

result = open_run("Lens", "Each stage of the residual stream decoded with the final norm and the unembedding (the logit "
                          "lens), or first through its translator (the tuned lens); the last stage is the model's own output.")

if result.analysis == "tuned-lens":  # a fit: the KL table, logit against tuned lens
    st.markdown(f"tuned lens of `{result.model}` fitted on {result.extra['train_tokens']} tokens of {result.task} · "
                f"`interp lens --tuned <this run folder>` decodes through it · {timing_line(result)}")
    for figure in tuned_lens_figures(result):
        chart(figure)
    table(pd.DataFrame({"stage": result.components, "logit lens KL": result.arrays["kl_logit_lens"],
                        "tuned lens KL": result.scores}), key="kl")
    st.stop()

kind = "tuned" if result.method == "tuned-lens" else "logit"
st.markdown(f"**{result.task}** on `{result.model}` · {kind} lens · answer {result.extra['answer']!r}"
            + (f" vs {result.extra['wrong_answer']!r}" if result.extra.get("wrong_answer") else "")
            + f" · {result.settings['n_prompts']} prompts · {timing_line(result)}")
for figure in lens_figures(result):
    chart(figure)
stage = st.select_slider("stage", options=list(range(len(result.components))), value=len(result.components) - 1,
                         format_func=lambda i: result.components[i])
position = st.select_slider("position (first prompt)", options=list(range(len(result.position_labels))),
                            value=len(result.position_labels) - 1, format_func=lambda i: result.position_labels[i])
top = result.extra["top_tokens"][stage][position]
table(pd.DataFrame({"token": [repr(t) for t, _ in top], "probability": [p for _, p in top]}), key="top")
