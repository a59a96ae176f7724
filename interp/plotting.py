"""Plotly figures shared by the CLI, notebooks and the app: diverging heatmaps centred at 0."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from interp.results import Result

_SCALE = "RdBu"


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


def _position_labels(tokens: list[str], n: int) -> list[str]:
    if len(tokens) == n:
        return [f"{i}: {t!r}"[:24] for i, t in enumerate(tokens)]
    return [str(i) for i in range(n)]


def result_heatmap(result: Result, name: str = "scores") -> go.Figure:
    """The standard picture of a patching-style result: layer x head, layer x position, ..."""
    grid = result.grid(name)
    if grid.ndim > len(result.shape):
        grid = grid.mean(axis=0)
    axes = result.axes
    title = f"{result.method} · {result.granularity} · {result.task} · {result.model} ({result.metric}, normalized)"
    layers = result.settings.get("layers") or list(range(result.shape[axes.index("layer")]))
    layer_labels = [f"L{l}" for l in layers]
    if axes == ["layer"]:
        return heatmap(grid[:, None], ["all"], layer_labels, title, "", "layer")
    if axes == ["layer", "position"]:
        return heatmap(grid, _position_labels(result.tokens, grid.shape[1]), layer_labels, title, "position", "layer")
    if axes == ["kind", "layer", "position"]:
        kinds = ["resid_pre", "attn_out", "mlp_out"]
        rows = [f"{k} L{l}" for k in kinds for l in layers]
        return heatmap(grid.reshape(-1, grid.shape[-1]), _position_labels(result.tokens, grid.shape[-1]), rows,
                       title, "position", "component")
    if len(axes) == 3:  # layer x head/group x position
        rows = [f"L{l}.{axes[1][0].upper()}{i}" for l in layers for i in range(grid.shape[1])]
        return heatmap(grid.reshape(-1, grid.shape[-1]), _position_labels(result.tokens, grid.shape[-1]), rows,
                       title, "position", axes[1])
    index_labels = [str(i) for i in range(grid.shape[1])]
    return heatmap(grid, index_labels, layer_labels, title, axes[1], "layer")
