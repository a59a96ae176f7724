"""Attention: one head's pattern on a prompt, and previous-token / induction / duplicate-token head scores."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import streamlit as st  # noqa: E402

from app.shared import chart, default_model, header, load_model, model_lock  # noqa: E402
from interp.head_scores import attention_patterns, head_scores  # noqa: E402
from interp.ui.figures import heatmap  # noqa: E402

header("Attention", "Live on a loaded model: patterns per head and the standard head scores.")
spec = st.sidebar.text_input("model", value=default_model())
model = load_model(spec)
default = "t5 t9 t3 t7 t5 t9 t3 t7" if model.config.d_vocab <= 1000 else \
    "When Mary and John went to the store, John gave a drink to"
prompt = st.text_input("prompt", value=default)
cols = st.columns(2)
layer = cols[0].selectbox("layer", list(range(model.config.n_layers)))
head = cols[1].selectbox("head", list(range(model.config.n_heads)))


@st.cache_data(show_spinner="computing patterns ...")
def patterns_of(spec: str, prompt: str):
    model = load_model(spec)
    with model_lock(spec):
        tokens = model.to_tokens(prompt)
        return attention_patterns(model, tokens)[:, 0].cpu().numpy(), model.to_str_tokens(tokens)


@st.cache_data(show_spinner="scoring heads ...")
def scores_of(spec: str):
    with model_lock(spec):
        return head_scores(load_model(spec))


patterns, tokens = patterns_of(spec, prompt)
labels = [f"{i}: {t!r}"[:20] for i, t in enumerate(tokens)]
chart(heatmap(patterns[layer, head], labels, labels, f"attention pattern L{layer}.H{head}", "key (attended to)",
                        "query", "attention", scale="sequential", natural=1.0))

scores = scores_of(spec)
kind = st.radio("head score", list(scores), horizontal=True, format_func=lambda s: s.replace("_", "-"))
grid = scores[kind]
chart(heatmap(grid, [str(h) for h in range(grid.shape[1])], [f"L{l}" for l in range(grid.shape[0])],
                        f"{kind.replace('_', '-')} score per head (BOS + random tokens repeated once)", "head", "layer",
                        "score", scale="sequential", natural=1.0))
