"""Steering: type a prompt, build a contrastive vector, pick a coefficient, read both texts; and the
coefficient sweeps `interp steer` saved."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, default_model, header, load_model, model_lock, pick_run, table, timing_line  # noqa: E402
from interp.steering import contrast_vector, read_texts, steering_edit  # noqa: E402
from interp.ui.figures import steering_figures  # noqa: E402

header("Steering", "A vector added to the residual stream while the model generates: the mean activation over "
                   "positive texts minus that over negative ones, times a coefficient, at every position.")
spec = st.sidebar.text_input("model", value=default_model())
model = load_model(spec)

st.subheader("Try a vector")
with st.form("steer"):
    prompt = st.text_input("prompt", value="I think that")
    cols = st.columns(2)
    positive = cols[0].text_area("positive texts (one per line)", value="\n".join(read_texts("sentiment-positive", "set")))
    negative = cols[1].text_area("negative texts (one per line)", value="\n".join(read_texts("sentiment-negative", "set")))
    cols = st.columns(3)
    layer = cols[0].number_input("layer (added to its residual stream input)", 0, model.config.n_layers - 1,
                                 model.config.n_layers // 3)
    coefficient = cols[1].number_input("coefficient", -50.0, 50.0, 4.0, step=0.5)
    new_tokens = cols[2].number_input("new tokens", 1, 100, 20)
    submitted = st.form_submit_button("Generate")

if submitted:
    site = f"L{int(layer)}.RESID_PRE"
    try:
        positives, negatives = read_texts(positive.splitlines(), "positive texts"), read_texts(negative.splitlines(), "negative texts")
        with st.spinner("building the vector and generating ..."), model_lock(spec):
            vector = contrast_vector(model, positives, negatives, site)
            plain = model.generate_text(prompt, int(new_tokens))[0]
            steered = model.generate_text(prompt, int(new_tokens), {site: steering_edit(vector, coefficient)})[0]
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    cols = st.columns(2)
    cols[0].markdown("**plain model**")
    cols[0].write(prompt + plain)
    cols[1].markdown(f"**steered** ({site}, coefficient {coefficient:g}, vector norm {float(vector.norm()):.3g})")
    cols[1].write(prompt + steered)

st.subheader("Saved sweeps")
result = pick_run("Steering")
if result is not None:
    sites = result.extra.get("sites") or [result.settings["site"]]
    st.markdown(f"**{result.task}** on `{result.model}` · vector `{result.settings['vector']}` at "
                f"{', '.join(f'`{site}`' for site in sites)} ({result.settings['mode']}) · {timing_line(result)}")
    if result.extra.get("vector_norms"):  # how big a coefficient of 1 is at each site
        table(pd.DataFrame({"site": sites, "vector norm": result.extra["vector_norms"],
                            "mean activation norm there": result.extra["site_norms"]}), key="sites")
    for figure in steering_figures(result):
        chart(figure)
