"""Dictionary: an SAE or transcoder run's held-out metrics, latent density, training curves, and a
dashboard of any latent (top-activating contexts, activation histogram, logit effect, de-embedding)."""

import html
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import (chart, load_model, model_lock, open_run, run_file, runs_root, selected_folder, table,  # noqa: E402
                        timing_line)
from interp.ui import colors  # noqa: E402
from interp.ui.figures import dictionary_figures  # noqa: E402

result = open_run("Dictionary", "A sparse autoencoder or transcoder: how well it reconstructs, how its latents fire, "
                               "what one latent means.")

metrics = result.extra["metrics"]
st.markdown(f"**{metrics.get('kind', result.method)} {metrics.get('architecture', '')}** at `{metrics.get('site', result.task)}` · "
            f"`{result.model}` · {len(result.components):,} latents · {metrics.get('n_tokens', 0):,} held-out tokens · "
            f"{timing_line(result)}")
cols = st.columns(5)
for col, (key, label) in zip(cols, [("l0", "L0"), ("explained_variance", "explained variance"), ("ce_recovered", "CE recovered"),
                                    ("dead_fraction", "dead"), ("kl_to_clean", "KL to clean")]):
    value = metrics.get(key)
    col.metric(label, "" if value is None or not np.isfinite(value) else f"{value:.3g}")
table(pd.DataFrame({"metric": list(metrics), "value": [f"{v:,.4g}" if isinstance(v, (int, float)) else str(v)
                                                       for v in metrics.values()]}), key="metrics")
for figure in dictionary_figures(result):
    chart(figure)

st.subheader("Feature dashboard")
folder = selected_folder()
source = result.extra.get("dictionary") or "dictionary"
try:  # a training run saved its dictionary inside its folder; an evaluation names one, which must lie under the runs folder
    dictionary_folder = run_file(folder, source) if result.analysis != "dictionary-eval" else \
        run_file(runs_root(), str(Path(source).resolve().relative_to(runs_root().resolve())) if Path(source).resolve()
                 .is_relative_to(runs_root().resolve()) else str(source))
except ValueError as exc:
    st.error(str(exc))
    st.stop()
if not dictionary_folder.is_dir():
    st.info(f"The dictionary's folder `{dictionary_folder}` is not there; the dashboard needs its weights.")
    st.stop()
order = np.argsort(-result.scores, kind="stable")
latent = int(st.number_input("latent", 0, len(result.components) - 1, int(order[0]),
                             help="default: the most frequent latent"))


@st.cache_data(show_spinner="reading the latent's activations ...")
def dashboard_of(spec: str, dictionary_path: str, latent: int, seed: int):
    from circuits.dictionary_analysis import HeldOutText
    from circuits.dictionary_io import load_dictionary
    from circuits.feature_dashboard import feature_dashboard
    from interp.corpus import load_corpus

    model = load_model(spec, "nnsight")
    with model_lock(spec, "nnsight"):
        dictionary = load_dictionary(dictionary_path)
        _, chunks = HeldOutText(chunk_length=64, eval_chunks=16, seed=seed).split(model, load_corpus())
        return feature_dashboard(model, dictionary, chunks, latent)


board = dashboard_of(result.model, str(dictionary_folder), latent, int(result.settings.get("config", {}).get("seed", 0)))
st.markdown(f"**{result.components[latent]}** fires on {board.frequency:.2%} of held-out tokens "
            f"(log10 frequency {result.scores[latent]:.2f} on the run's own text).")
left, right = st.columns(2)
with left:
    st.markdown("Top-activating contexts (the token where it fires last; shade = activation)")
    peak = max([c["activation"] for c in board.contexts] or [1.0])
    for context in board.contexts:
        spans = "".join(
            f'<span style="background: rgba(217,95,2,{max(0.0, a) / peak:.2f}); padding: 0 1px" '
            f'title="{a:.3f}">{html.escape(t)}</span>' for t, a in zip(context["tokens"], context["activations"]))
        st.markdown(f'<div style="font-family: monospace; margin-bottom: 4px">{context["activation"]:.3f} · {spans}</div>',
                    unsafe_allow_html=True)
    if not board.contexts:
        st.info("This latent never fires on the held-out text.")
    histogram = go.Figure(go.Histogram(x=board.activations, nbinsx=40, marker_color=colors.QUALITATIVE[1]))
    histogram.update_layout(title="non-zero activations", xaxis_title="activation", yaxis_title="tokens",
                            template="plotly_white", height=300)
    chart(histogram)
with right:
    for name, rows in (("tokens its decoder row promotes (through the unembedding)", board.promoted),
                       ("tokens it suppresses", board.suppressed),
                       ("de-embedding: input tokens that drive it", board.de_embedding)):
        if rows:
            st.markdown(name)
            table(pd.DataFrame(rows, columns=["token", "value"]).assign(token=lambda f: f["token"].map(repr)), key=name)
