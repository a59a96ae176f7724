"""Patching: heatmaps, per-prompt spread and the top components of exact, AtP and AtP* runs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, header, pick_run, table, timing_line  # noqa: E402
from interp.ui import colors  # noqa: E402
from interp.ui.figures import result_heatmap  # noqa: E402

header("Patching", "Normalized effect of each component: 0 = no effect, 1 = the full clean-vs-corrupt difference.")
result = pick_run("Patching")
if result is None:
    st.stop()

st.markdown(f"**{result.method}** · {result.granularity} · task `{result.task}` · `{result.model}` · metric "
            f"{result.metric} · clean {result.clean_metric:.3f} / corrupt {result.corrupt_metric:.3f} · "
            f"{result.n_forward_passes} forward / {result.n_backward_passes} backward passes · {timing_line(result)}")
view, position = "auto", None
if len(result.axes) == 3 and "position" in result.axes and "layer" in result.axes:
    views = {"positions where the pair differs (layer x head per position)": "multiples", "one position": "position",
             "top-k cells": "top", "every row (tall)": "grid"}
    view = views[st.radio("view", list(views), horizontal=True)]
    if view == "position":
        labels = result.position_labels or [str(i) for i in range(result.shape[-1])]
        position = st.select_slider("position", options=list(range(len(labels))), value=len(labels) - 1,
                                    format_func=lambda i: labels[i])
chart(result_heatmap(result, view=view, position=position))
st.caption("Colour: red = positive (patching the component moves the metric that fraction of the way from clean to "
           "corrupt), blue = negative; the scale is fixed at -1 to 1, so colours compare across runs.")

k = st.slider("top k", 1, max(1, min(50, len(result.components))), min(10, len(result.components)))
order = result.ranking()[:k]
exact = result.arrays.get("exact")
ranked = pd.DataFrame({"component": [result.components[i] for i in order], "score": result.scores[order]})
if exact is not None:
    ranked["exact"] = exact[order]
table(ranked, page_size=25, key="top")

per_prompt = result.arrays.get("per_prompt")
if per_prompt is not None and per_prompt.ndim == 2:
    spread = go.Figure([go.Box(y=per_prompt[:, i], name=result.components[i], boxpoints="all", jitter=0.4,
                               marker_color=colors.sign_color(float(result.scores[i])),
                               line_color=colors.sign_color(float(result.scores[i]))) for i in order])
    spread.update_layout(title=f"per-prompt effect of the top {k} ({per_prompt.shape[0]} prompts)",
                         yaxis_title="normalized effect", template="plotly_white", showlegend=False)
    spread.add_hline(y=0, line_color="#888", line_dash="dot")
    chart(spread)

if exact is not None:
    verified = ~np.isnan(exact)
    estimate, truth = result.scores[verified], exact[verified]
    names = np.array(result.components)[verified]
    missed = np.abs(estimate) < 0.5 * np.abs(truth)  # the estimate hides at least half of the true effect
    scatter = go.Figure()
    for mask, label, colour in ((~missed, "estimate within 2x", colors.QUALITATIVE[0]),
                                (missed, "underestimated (|est| < |exact| / 2)", colors.QUALITATIVE[1])):
        scatter.add_trace(go.Scatter(x=truth[mask], y=estimate[mask], mode="markers", name=label, text=names[mask],
                                     marker={"color": colour, "size": 9},
                                     hovertemplate="%{text}<br>exact %{x:.4f}<br>estimate %{y:.4f}<extra></extra>"))
    bound = float(np.abs(np.concatenate([truth, estimate])).max()) if verified.any() else 1.0
    scatter.add_trace(go.Scatter(x=[-bound, bound], y=[-bound, bound], mode="lines", name="estimate = exact",
                                 line={"dash": "dot", "color": "grey"}))
    scatter.update_layout(title=f"{result.method} estimate vs exact patching ({int(verified.sum())} verified components)",
                          xaxis_title="exact effect", yaxis_title="estimate", template="plotly_white")
    chart(scatter)
    diagnostic = result.extra.get("diagnostic")
    if diagnostic:
        st.info(f"False-negative bound: no unverified component has |effect| above {diagnostic['bound']:.4f} at "
                f"{diagnostic['confidence']:.0%} confidence (assumes jointly patched effects add).")
