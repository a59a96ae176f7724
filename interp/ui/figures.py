"""Plotly figures shared by the CLI, notebooks and the app: diverging heatmaps centred at 0."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from interp.results import Result

_SCALE = "RdBu"


def write_figures(path, figures: list[go.Figure], title: str = "interp") -> None:
    """Write several figures into one self-contained UTF-8 HTML page (plotly.js inlined once)."""
    parts = [figure.to_html(include_plotlyjs=k == 0, full_html=False) for k, figure in enumerate(figures)]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head><body>\n')
        handle.write("\n".join(parts))
        handle.write("\n</body></html>\n")


def heatmap(values: np.ndarray, x_labels: list[str], y_labels: list[str], title: str,
            x_title: str, y_title: str, value_name: str = "effect") -> go.Figure:
    """A [rows, cols] heatmap with a diverging colour scale centred at 0."""
    values = np.asarray(values, dtype=float)
    bound = float(np.nanmax(np.abs(values))) if values.size else 1.0
    figure = go.Figure(go.Heatmap(
        z=values, x=x_labels, y=y_labels, colorscale=_SCALE, reversescale=True, zmid=0.0,
        zmin=-bound, zmax=bound, colorbar={"title": value_name},
        hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{value_name} %{{z:.4f}}<extra></extra>",
    ))
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, yaxis_autorange="reversed",
                         height=max(350, 22 * len(y_labels) + 150), template="plotly_white")
    return figure


def position_labels(result: Result, n: int) -> list[str]:
    """Column labels of a result's position axis: its own (``-1: ' to'``, ``IO``), else, for run
    folders written before results carried them, ``i: token`` of the first prompt."""
    if len(result.position_labels) == n:
        return list(result.position_labels)
    if len(result.tokens) == n:
        return [f"{i}: {t!r}"[:24] for i, t in enumerate(result.tokens)]
    return [str(i) for i in range(n)]


def result_heatmap(result: Result, name: str = "scores") -> go.Figure:
    """The standard picture of a patching-style result: layer x head, layer x position, ..."""
    grid = result.grid(name)
    if grid.ndim > len(result.shape):
        grid = grid.mean(axis=0)
    axes = result.axes
    title = f"{result.method} · {result.granularity} · {result.task} · {result.model} ({result.metric}, normalized)"
    if "layer" not in axes:  # latents of spliced dictionaries, or an explicit list of components
        return _top_components(result, grid, title)
    layers = result.settings.get("layers") or list(range(result.shape[axes.index("layer")]))
    layer_labels = [f"L{l}" for l in layers]
    if axes == ["layer"]:
        return heatmap(grid[:, None], ["all"], layer_labels, title, "", "layer")
    if axes == ["layer", "position"]:
        return heatmap(grid, position_labels(result, grid.shape[1]), layer_labels, title, "position", "layer")
    if axes == ["kind", "layer", "position"]:
        kinds = ["resid_pre", "attn_out", "mlp_out"]
        rows = [f"{k} L{l}" for k in kinds for l in layers]
        return heatmap(grid.reshape(-1, grid.shape[-1]), position_labels(result, grid.shape[-1]), rows,
                       title, "position", "component")
    if len(axes) == 3:  # layer x head/group x position
        rows = [f"L{l}.{axes[1][0].upper()}{i}" for l in layers for i in range(grid.shape[1])]
        return heatmap(grid.reshape(-1, grid.shape[-1]), position_labels(result, grid.shape[-1]), rows,
                       title, "position", axes[1])
    index_labels = [str(i) for i in range(grid.shape[1])]
    return heatmap(grid, index_labels, layer_labels, title, axes[1], "layer")


def _top_components(result: Result, grid: np.ndarray, title: str, k: int = 40) -> go.Figure:
    """The ``k`` components with the largest |effect| (by position where the grid has positions):
    a sweep over thousands of latents, most of them silent, reads best as its top rows."""
    positional = result.axes[-1] == "position"
    if positional:
        rows = grid.reshape(-1, grid.shape[-1])
        names = [name.split("@")[0] for name in result.components[::grid.shape[-1]]]
    else:
        rows = grid.reshape(-1, 1)
        names = list(result.components)
    top = np.argsort(-np.nanmax(np.abs(rows), axis=1), kind="stable")[:k]
    columns = position_labels(result, rows.shape[1]) if positional else ["all positions"]
    return heatmap(rows[top], columns, [names[i] for i in top], f"{title}: top {len(top)}",
                   "position" if positional else "", "component")


def importance_figure(result: Result) -> go.Figure:
    """Per-layer importance (1 - cos) of attention, MLP and blocks from a redundancy run."""
    grid = result.grid()
    layers = list(range(grid.shape[1]))
    figure = go.Figure([go.Bar(name=kind, x=layers, y=grid[i], hovertemplate=f"{kind} L%{{x}}: %{{y:.4f}}<extra></extra>")
                        for i, kind in enumerate(result.settings.get("unit_kinds", ["attn", "mlp", "block"]))])
    figure.update_layout(title=f"layer importance (1 - cos similarity) · {result.model} · {result.task}",
                         xaxis_title="layer", yaxis_title="importance (1 - cos)", yaxis_type="log",
                         barmode="group", template="plotly_white")
    return figure


def pruning_curves_figure(curves: dict, metric: str = "perplexity", title: str = "") -> go.Figure:
    """``metric`` after dropping k units, one line per method (random seeds thin grey, their mean
    dashed), with the generation speed-up of the attention curve on a second axis."""
    figure = go.Figure()
    for curve in curves["curves"]:
        values = [p.get(metric) for p in curve["points"]]
        k = list(range(len(values)))
        if curve["method"] == "random":
            figure.add_trace(go.Scatter(x=k, y=values, mode="lines", name=curve["name"], line={"color": "lightgrey", "width": 1},
                                        legendgroup="random", showlegend=False))
        else:
            figure.add_trace(go.Scatter(x=k, y=values, mode="lines+markers", name=curve["name"],
                                        customdata=[[", ".join(p["dropped"][-1:])] for p in curve["points"]],
                                        hovertemplate="k=%{x}: %{y:.4g}<br>last dropped: %{customdata[0]}<extra>"
                                        + curve["name"] + "</extra>"))
    random = [c for c in curves["curves"] if c["method"] == "random"]
    if random:
        mean = np.mean([[p.get(metric) for p in c["points"]] for c in random], axis=0)
        figure.add_trace(go.Scatter(x=list(range(len(mean))), y=mean, mode="lines", name=f"random (mean of {len(random)})",
                                    line={"color": "grey", "dash": "dash"}))
    attn = next((c for c in curves["curves"] if c["name"] == "attn"), None)
    full_speed = curves["full"].get("generation_tokens_per_s")
    if attn is not None and full_speed:
        speedup = [p.get("generation_tokens_per_s", np.nan) / full_speed for p in attn["points"]]
        figure.add_trace(go.Scatter(x=list(range(len(speedup))), y=speedup, mode="lines", yaxis="y2",
                                    name="generation speed-up (attn)", line={"color": "black", "dash": "dot"}))
        figure.update_layout(yaxis2={"title": "generation speed-up (x)", "overlaying": "y", "side": "right"})
    figure.update_layout(title=title or f"{metric} after dropping k units", xaxis_title="k (units dropped)",
                         yaxis_title=metric, yaxis_type="log" if metric == "perplexity" else "linear",
                         template="plotly_white", legend={"x": 1.08})
    return figure


def bigram_figures(result: Result) -> list[go.Figure]:
    """Pictures of a bigram-subnetwork run: kept fraction per layer and matrix, attention vs MLP per
    layer, subnetwork vs bigram surprisal, training curve, and residual-stream maps when present."""
    lam = result.extra["sweep"][0]["lambda"]
    grid = result.grid()
    layers = [f"L{l}" for l in range(grid.shape[0])]
    figures = [heatmap(grid, result.extra["matrix_types"], layers,
                       f"kept fraction per weight matrix · {result.model} · lambda {lam:g}", "matrix", "layer", "kept")]
    by_layer = result.arrays["kept_by_layer"][0]
    bars = go.Figure([go.Bar(name=name, x=layers, y=by_layer[:, i]) for i, name in enumerate(("attention", "MLP"))])
    bars.update_layout(title="kept fraction by layer", xaxis_title="layer", yaxis_title="kept fraction",
                       barmode="group", template="plotly_white")
    figures.append(bars)
    model_s, bigram_s = result.arrays["subnetwork_surprisal"], result.arrays["bigram_surprisal"]
    finite = np.isfinite(bigram_s)
    row = result.extra["sweep"][0]["ablations"]["subnetwork"]
    scatter = go.Figure(go.Scattergl(x=bigram_s[finite], y=model_s[finite], mode="markers", marker={"size": 3, "opacity": 0.4}))
    scatter.update_layout(title=f"surprisal on held-out text: subnetwork vs bigram (r = {row['r']:.3f})",
                          xaxis_title="bigram surprisal (nats)", yaxis_title="subnetwork surprisal (nats)",
                          template="plotly_white")
    figures.append(scatter)
    if "history_loss" in result.arrays:
        curve = go.Figure([go.Scatter(y=result.arrays["history_cross_entropy"], name="cross-entropy to target"),
                           go.Scatter(x=result.arrays["history_checked_steps"], y=result.arrays["history_kept"],
                                      name="kept (> 0.9)", yaxis="y2")])
        curve.update_layout(title="training", xaxis_title="step", yaxis_title="nats",
                            yaxis2={"title": "fraction", "overlaying": "y", "side": "right"}, template="plotly_white")
        figures.append(curve)
    if "residual_to_final" in result.arrays:
        stages = ["embed"] + [f"after L{l}" for l in range(grid.shape[0])]
        maps = go.Figure([go.Scatter(x=stages, y=result.arrays[key][i], name=f"{who}: to {what}")
                          for key, what in (("residual_to_final", "final layer"), ("residual_to_embedding", "token embedding"))
                          for i, who in enumerate(("full model", "subnetwork"))])
        maps.update_layout(title="ridge maps from the residual stream (held-out R^2)", xaxis_title="residual stream",
                           yaxis_title="R^2", template="plotly_white")
        figures.append(maps)
    return figures


def patching_figures(result: Result) -> list[go.Figure]:
    """The patching analysis' figures: its heatmap."""
    return [result_heatmap(result)]


def probe_figures(result: Result) -> list[go.Figure]:
    """Probe accuracy per layer with its interval, the control task and the selectivity."""
    layers = list(range(len(result.scores)))
    accuracy, arrays = result.scores, result.arrays
    figure = go.Figure([
        go.Scatter(x=layers, y=accuracy, name="probe accuracy", mode="lines+markers",
                   error_y={"type": "data", "symmetric": False, "array": arrays["ci_high"] - accuracy,
                            "arrayminus": accuracy - arrays["ci_low"]}),
        go.Scatter(x=layers, y=arrays["control_accuracy"], name="control task", mode="lines+markers"),
        go.Scatter(x=layers, y=arrays["selectivity"], name="selectivity", mode="lines"),
    ])
    figure.add_hline(y=result.extra["chance"], line_dash="dot", annotation_text="chance")
    figure.update_layout(title=f"linear probes · {result.task} · {result.model}",
                         xaxis_title="layer (residual stream leaving it)", yaxis_title="accuracy", template="plotly_white")
    return [figure]


def redundancy_figures(result: Result) -> list[go.Figure]:
    """Importance per unit, and the pruning curves of each evaluation metric (when run)."""
    curves = result.extra.get("curves")
    metrics = ("perplexity", "ioi_accuracy", "capitals_accuracy", "greater_than_accuracy") if curves else ()
    return [importance_figure(result)] + [pruning_curves_figure(curves, m) for m in metrics]


def dictionary_figures(result: Result) -> list[go.Figure]:
    """A dictionary run's latent density and, for a training run, its training curves."""
    figures = [go.Figure(go.Histogram(x=result.arrays["log10_frequency"], nbinsx=50)).update_layout(
        title=f"latent density · {result.task} · {result.model}", xaxis_title="log10 firing frequency",
        yaxis_title="latents", template="plotly_white")]
    if "history_step" in result.arrays:
        for key in ("mse", "l0", "explained_variance", "dead_fraction"):
            figures.append(go.Figure(go.Scatter(x=result.arrays["history_step"], y=result.arrays[f"history_{key}"])).update_layout(
                title=key.replace("_", " "), xaxis_title="step", template="plotly_white", height=300))
    return figures
