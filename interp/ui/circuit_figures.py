"""Plotly figures of edge-level circuits: the circuit graph (layers bottom to top, heads left to
right, MLP at the right end of each layer) and faithfulness-vs-size curves per method."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from interp.ui import colors

_DASH = {"q": "dot", "k": "dash", "v": "solid", "mlp": "solid", "logits": "solid"}
_METHOD_COLORS = colors.QUALITATIVE


def _add_edges(figure: go.Figure, lines: list[tuple], max_width: float) -> None:
    """Lines (x0, y0, x1, y1, value, hover text, dash): width and opacity ~ |value| / max |value|,
    red positive, blue negative (:mod:`interp.ui.colors`)."""
    largest = max([abs(line[4]) for line in lines] or [1.0]) or 1.0
    for x0, y0, x1, y1, value, text, dash in lines:
        figure.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="text", text=text,
            line={"width": 0.5 + max_width * abs(value) / largest, "color": colors.sign_color(value),
                  "dash": dash},
            opacity=0.3 + 0.6 * abs(value) / largest))


def _edge_legend(figure: go.Figure, dashes: dict[str, str], meaning: str) -> None:
    """Legend entries (no data) that explain edge colour, width and dashing."""
    for name, color in ((f"edge + ({meaning})", colors.POSITIVE), ("edge - (the opposite)", colors.NEGATIVE)):
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name, line={"color": color, "width": 3},
                                    legendgroup="edges", legendgrouptitle_text="edges (width ~ |score|)"))
    for name, dash in dashes.items():
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name, line={"color": "#555", "dash": dash},
                                    legendgroup="edges"))


def _add_nodes(figure: go.Figure, nodes: list[dict], places: dict, styles: dict, hover, size, labels: bool) -> None:
    """One marker trace per node kind in ``styles`` (kind -> (symbol, colour)); ``hover`` and
    ``size`` map a node to its hover text and marker size."""
    for kind, (symbol, color) in styles.items():
        chosen = [n for n in nodes if n["kind"] == kind]
        if not chosen:
            continue
        figure.add_trace(go.Scatter(
            x=[places[n["id"]][0] for n in chosen], y=[places[n["id"]][1] for n in chosen],
            mode="markers+text" if labels else "markers", name=kind, textposition="top center",
            legendgroup="nodes", legendgrouptitle_text="nodes",
            text=[n["id"] for n in chosen] if labels else None,
            marker={"symbol": symbol, "color": color, "line": {"width": 1, "color": "#333"}, "size": [size(n) for n in chosen]},
            hovertext=[hover(n) for n in chosen], hoverinfo="text"))


def _node_position(node: dict, n_heads: int) -> tuple[float, float]:
    kind, layer = node["kind"], node["layer"]
    if kind in ("embed", "logits"):
        return (n_heads) / 2.0, float(layer)
    if kind == "mlp":
        return float(n_heads) + 0.5, layer + 0.45
    return float(node["index"]), float(layer)


def circuit_graph_figure(graph: dict, max_width: float = 8.0) -> go.Figure:
    """Draw a circuit graph (``circuits.circuit_selection.circuit_graph`` JSON). Edge width ~ |score|,
    red = positive score (patching the edge moves the metric toward the corrupt run), blue = negative;
    line style = the input it enters: dotted query, dashed key, solid value/MLP/logits. Hover shows
    the edge and its score."""
    n_heads = graph["n_heads"]
    positions = {node["id"]: _node_position(node, n_heads) for node in graph["nodes"]}
    lines = [(*positions[edge["source"]], *positions[target], edge["score"],
              f"{edge['source']} -> {edge['target']} ({edge['port']}): {edge['score']:.4f}", _DASH.get(edge["port"], "solid"))
             for edge in graph["edges"] for target in edge["into"] if target in positions]
    figure = go.Figure()
    _add_edges(figure, lines, max_width)
    styles = {kind: colors.NODE_KINDS[kind] for kind in ("embed", "head", "mlp", "logits")}
    _edge_legend(figure, {"into a query (dotted)": "dot", "into a key (dashed)": "dash", "into a value, MLP or logits": "solid"},
                 "patching it moves the metric toward corrupt")
    _add_nodes(figure, graph["nodes"], positions, styles,
               lambda n: f"{n['id']}: node score {n['score']:.4f}" if n["score"] is not None else n["id"], lambda n: 18, True)
    title = (f"{graph.get('method', '')} circuit · {graph.get('task', '')} · {graph.get('model', '')}: "
             f"{graph['n_edges']} edges (top {graph.get('top_n', '?')}), faithfulness {graph.get('faithfulness', float('nan')):.3f}")
    figure.update_layout(title=title, template="plotly_white", height=max(450, 40 * graph["n_layers"] + 200),
                         xaxis={"visible": False}, yaxis={"title": "layer", "dtick": 1})
    return figure


def faithfulness_figure(curves: list[dict], title: str = "") -> go.Figure:
    """Faithfulness (0 = corrupt, 1 = full model) against circuit size in edges, one line per method."""
    figure = go.Figure()
    for k, curve in enumerate(curves):
        figure.add_trace(go.Scatter(
            x=curve["sizes"], y=curve["faithfulness"], mode="lines+markers", name=curve["method"],
            line={"color": _METHOD_COLORS[k % len(_METHOD_COLORS)]},
            customdata=np.array(curve["kept"])[:, None],
            hovertemplate="top %{x} edges (%{customdata[0]} after pruning)<br>faithfulness %{y:.3f}<extra></extra>",
        ))
    figure.add_hline(y=1.0, line_dash="dot", line_color="#888")
    figure.add_hline(y=0.0, line_dash="dot", line_color="#888")
    sizes = sorted({int(size) for curve in curves for size in curve["sizes"]})
    figure.update_layout(title=title or "faithfulness vs circuit size", xaxis_title="edges in the circuit (top-n by |score|)",
                         yaxis_title="faithfulness", xaxis_type="log", template="plotly_white", height=420)
    if sizes and len(sizes) <= 20:  # ticks at the sizes measured: whole numbers of edges
        figure.update_xaxes(tickmode="array", tickvals=sizes, ticktext=[str(s) for s in sizes])
    return figure


def feature_graph_figure(graph: dict, max_width: float = 6.0) -> go.Figure:
    """Draw a transcoder attribution graph (``circuits.transcoder_circuits.attribution_graph``):
    x = token position, y = layer (embeddings at the bottom, the target on top); features are
    circles, attention heads triangles just below their layer's features, error nodes grey diamonds;
    edge width ~ |weight|, red positive (the source raises its target), blue negative."""
    n_layers = graph["n_layers"]

    def position(node: dict) -> tuple[float, float]:
        offset = ((node["latent"] or 0) % 7 - 3) * 0.06 if node["kind"] == "feature" else 0.0
        layer = {"embed": -1, "target": n_layers}.get(node["kind"], node["layer"])
        return node["position"] + offset, layer + {"error": 0.25, "head": -0.35}.get(node["kind"], 0.0)

    places = {node["id"]: position(node) for node in graph["nodes"]}
    lines = [(*places[edge["source"]], *places[edge["target"]], edge["weight"],
              f"{edge['source']} -> {edge['target']}: {edge['weight']:.4f}", "solid")
             for edge in graph["edges"] if edge["source"] in places and edge["target"] in places]
    figure = go.Figure()
    _add_edges(figure, lines, max_width)
    styles = {kind: colors.NODE_KINDS[kind] for kind in ("embed", "feature", "error", "target")}
    styles["head"] = ("triangle-up", colors.NODE_KINDS["head"][1])
    _edge_legend(figure, {}, "the source raises its target")
    _add_nodes(figure, graph["nodes"], places, styles,
               lambda n: n["id"] + (f" act {n['activation']:.3f}" if n["activation"] is not None else "")
               + (f" o.dT/do {n['value']:.3f}" if n.get("value") is not None else "") + f" influence {n['influence']:.3f}",
               lambda n: 22 if n["kind"] == "target" else 10 + 20 * min(1.0, abs(n["influence"]) * 3), False)
    figure.add_annotation(text="node size ~ influence on the target", xref="paper", yref="paper", x=1.0, y=1.06,
                          showarrow=False, font={"size": 11, "color": "#555"})
    tokens = graph.get("tokens", [])
    figure.update_layout(
        title=f"attribution graph of {graph['target']} · {graph['model']} ({len(graph['nodes'])} nodes, {len(graph['edges'])} edges)",
        template="plotly_white", height=max(450, 45 * n_layers + 200),
        xaxis={"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": [repr(t)[1:-1] for t in tokens],
               "title": "token"},
        yaxis={"title": "layer", "dtick": 1})
    return figure


def edges_figures(result) -> list[go.Figure]:
    """An edges run's faithfulness curves and its circuit graph (its ``graph.json`` document, or
    rebuilt from the stored edge scores of a loaded run)."""
    from circuits.edge_circuits import circuit_from_result

    graph = result.documents.get("graph.json") or circuit_from_result(result, result.method, result.extra["circuit"]["top_n"])
    return [faithfulness_figure(result.extra["curves"], f"faithfulness · {result.task} · {result.model}"),
            circuit_graph_figure(graph)]


def feature_graph_figures(result) -> list[go.Figure]:
    """A transcoder attribution graph run's graph (its ``graph.json`` document)."""
    graph = result.documents.get("graph.json")  # a loaded run: the Features page reads the folder's graph.json
    return [] if graph is None else [feature_graph_figure(graph)]
