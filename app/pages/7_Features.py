"""Transcoder attribution graphs: features, attention heads, embeddings and errors feeding a target."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.shared import chart, header, pick_run, run_file, selected_folder, table  # noqa: E402
from interp.ui.circuit_figures import feature_graph_figure  # noqa: E402

header("Features", "Attribution graph of one prompt through transcoders (`interp transcoder circuit`): edges are direct "
                   "linear effects with attention patterns and norm scales frozen; the heads that matter most are nodes.")
result = pick_run("Features")
if result is None:
    st.stop()

folder = selected_folder()
try:
    graph = json.loads(run_file(folder, result.extra.get("graph_file")).read_text())
    if not isinstance(graph, dict) or not {"nodes", "edges", "model", "target"} <= set(graph):
        raise ValueError("it is not an attribution graph (nodes, edges, model, target)")
except (OSError, ValueError, UnicodeDecodeError) as exc:
    st.error(f"{folder} has no readable attribution graph ({type(exc).__name__}: {exc})")
    st.stop()

st.markdown(f"**{graph['model']}**, prompt `{result.task}`: **{graph['target']}** = {graph['target_value']:.4f}; "
            f"{len(graph['nodes'])} nodes and {len(graph['edges'])} edges kept of {graph['n_candidates']} candidate "
            f"features and {graph.get('n_candidate_heads', 0)} heads (node threshold {graph['node_threshold']}, "
            f"edge threshold {graph['edge_threshold']}).")
kinds = sorted({n["kind"] for n in graph["nodes"]} - {"target"})
shown = st.multiselect("node kinds", kinds, default=kinds)
kept = {n["id"] for n in graph["nodes"] if n["kind"] in shown or n["kind"] == "target"}
view = {**graph, "nodes": [n for n in graph["nodes"] if n["id"] in kept],
        "edges": [e for e in graph["edges"] if e["source"] in kept and e["target"] in kept]}
chart(feature_graph_figure(view))
nodes = pd.DataFrame(view["nodes"]).sort_values("influence", ascending=False)
st.markdown("**Nodes** by influence on the target (share of |attribution| over all paths)")
table(nodes[["id", "kind", "layer", "position", "activation", "value", "influence", "attribution"]], page_size=100, key="nodes")
if view["edges"]:
    st.markdown("**Edges** by |weight|")
    edges = pd.DataFrame(view["edges"]).sort_values("weight", key=abs, ascending=False)
    table(edges, page_size=100, key="edges")
