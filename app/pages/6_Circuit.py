"""Edge-level circuits: faithfulness against circuit size per method, and the circuit graph at any size."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, header, pick_run, selected_folder, table  # noqa: E402
from circuits.circuit_selection import CircuitError, load_graph  # noqa: E402
from circuits.edge_circuits import circuit_from_result  # noqa: E402
from interp.ui.circuit_figures import circuit_graph_figure, faithfulness_figure  # noqa: E402

header("Circuit", "Edges scored by EAP / EAP-IG; a circuit keeps the top-n edges and patches every other edge from the "
                  "corrupt run. Faithfulness: 0 = the corrupt run, 1 = the full model.")
result = pick_run("Circuit")
if result is None:
    st.stop()

st.markdown(f"**{result.model}** on **{result.task}** ({result.metric}: clean {result.clean_metric:.3f}, "
            f"corrupt {result.corrupt_metric:.3f}); {len(result.components):,} edges; methods: "
            f"{', '.join(result.extra['methods'])}")
chart(faithfulness_figure(result.extra["curves"]))
if "node_comparison" in result.extra:
    st.markdown("**Head ranking implied by the edges vs exact head patching**")
    table(pd.DataFrame(result.extra["node_comparison"]))

if "ground_truth" in result.extra:
    truth = result.extra["ground_truth"]
    st.markdown(f"**Against the compiled circuit**: {len(truth['true_edges'])} true edges, "
                f"{len(truth['inert_true_edges'])} inert under this corruption (no method can see them)")
    table(pd.DataFrame(truth["auc"]).T.rename_axis("edge ROC AUC").reset_index())

method = st.radio("method", result.extra["methods"], horizontal=True)
saved = result.extra["circuit"]["top_n"]
top_n = st.slider("edges in the circuit (top-n by |score|, dangling edges pruned)", 1,
                  min(len(result.components), 2000), min(saved, len(result.components)))
folder = selected_folder()
graph = None
if method == result.method and top_n == saved:
    try:
        graph = load_graph(folder / "graph.json")
    except CircuitError as exc:
        st.warning(f"saved circuit unreadable ({exc}); recomputing it from the stored scores")
if graph is None:
    graph = circuit_from_result(result, method, top_n)
    curve = next(c for c in result.extra["curves"] if c["method"] == method)
    nearest = min(range(len(curve["sizes"])), key=lambda i: abs(curve["sizes"][i] - top_n))
    st.caption(f"Faithfulness is measured at the curve's sizes only; nearest: {curve['sizes'][nearest]} edges -> "
               f"{curve['faithfulness'][nearest]:.3f}.")
chart(circuit_graph_figure(graph))
edges = pd.DataFrame(graph["edges"]).sort_values("score", key=abs, ascending=False)
table(edges[["source", "target", "port", "score"]], page_size=100, key="edges")
