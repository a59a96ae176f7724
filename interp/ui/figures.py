"""Plotly figures shared by the CLI, notebooks and the app, in the one colour language of
:mod:`interp.ui.colors`: signed effects on the diverging scale (red positive, blue negative),
non-negative quantities on the sequential one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.results import Result
from interp.ui import colors

PLOTLY_BUNDLE = "plotly.min.js"  # written once per run folder; every page of the folder loads it
# the views of a layer x head (x position) grid: how a position-resolved sweep stays readable
VIEWS = ("auto", "multiples", "position", "top", "grid")


def write_figures(path, figures: list[go.Figure], title: str = "interp") -> None:
    """Write several figures into one UTF-8 HTML page that loads plotly.js from ``plotly.min.js``
    beside it (written once per folder, so the pages of a run folder share one bundle and open
    offline)."""
    path = Path(path)
    bundle = path.parent / PLOTLY_BUNDLE
    if not bundle.is_file():
        from plotly.offline import get_plotlyjs

        bundle.write_text(get_plotlyjs(), encoding="utf-8")
    parts = [figure.to_html(include_plotlyjs=False, full_html=False) for figure in figures]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
                     f'<script src="{PLOTLY_BUNDLE}"></script></head><body>\n')
        handle.write("\n".join(parts))
        handle.write("\n</body></html>\n")


def heatmap(values: np.ndarray, x_labels: list[str], y_labels: list[str], title: str,
            x_title: str, y_title: str, value_name: str = "effect", scale: str = "signed",
            natural: float | None = None) -> go.Figure:
    """A [rows, cols] heatmap. ``scale="signed"``: the diverging scale centred at 0, on
    [-natural, natural] or the symmetric robust range; ``"sequential"``: white to dark on
    [0, natural] or [0, max]."""
    values = np.asarray(values, dtype=float)
    figure = go.Figure(go.Heatmap(
        z=values, x=x_labels, y=y_labels, coloraxis="coloraxis",
        hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{value_name} %{{z:.4g}}<extra></extra>",
    ))
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, yaxis_autorange="reversed",
                         coloraxis=color_axis(values, value_name, scale, natural),
                         height=max(350, min(22 * len(y_labels) + 150, 900)), template="plotly_white")
    return figure


def color_axis(values: np.ndarray, title: str, scale: str = "signed", natural: float | None = None) -> dict:
    """A plotly ``coloraxis`` in the colour language (see :mod:`interp.ui.colors`)."""
    if scale == "sequential":
        finite = np.asarray(values, dtype=float)
        finite = finite[np.isfinite(finite)]
        top = natural if natural is not None else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
        return {"colorscale": colors.SEQUENTIAL, "cmin": 0.0, "cmax": top, "colorbar": {"title": title}}
    low, high = colors.signed_range(values, natural)
    return {"colorscale": colors.DIVERGING, "cmin": low, "cmax": high, "cmid": 0.0,
            "colorbar": {"title": f"{title}<br>(red +, blue -)"}}


def position_labels(result: Result, n: int) -> list[str]:
    """Column labels of a result's position axis: its own (``-1: ' to'``, ``IO``), else, for run
    folders written before results carried them, ``i: token`` of the first prompt."""
    if len(result.position_labels) == n:
        return list(result.position_labels)
    if len(result.tokens) == n:
        return [f"{i}: {t!r}"[:24] for i, t in enumerate(result.tokens)]
    return [str(i) for i in range(n)]


def active_positions(grid: np.ndarray, limit: int = 6) -> list[int]:
    """The positions of a [..., position] grid where any component has an effect (the positions
    from the first one where a pair differs on), at most ``limit`` (those of the largest |effect|,
    in order); the last position when no position has one."""
    peak = np.nan_to_num(np.abs(grid)).reshape(-1, grid.shape[-1]).max(axis=0)
    active = [int(i) for i in np.flatnonzero(peak > 0)]
    if len(active) > limit:
        active = sorted(sorted(active, key=lambda i: -peak[i])[:limit])
    return active or [grid.shape[-1] - 1]


def result_heatmap(result: Result, name: str = "scores", view: str = "auto", position: int | None = None,
                   k: int = 40) -> go.Figure:
    """The standard picture of a patching-style result: layer x head, layer x position, ...

    A position-resolved grid of layers x heads (or groups) x positions has a ``view``:
    ``multiples`` (the default: one layer x head panel per position where the pair differs, side
    by side), ``position`` (one panel, at ``position``, default the last), ``top`` (the ``k``
    components of largest |effect| as rows) or ``grid`` (every layer.head as a row: tall).
    Normalized effects are drawn on [-1, 1]."""
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    grid = result.grid(name)
    if grid.ndim > len(result.shape):
        grid = grid.mean(axis=0)
    axes = result.axes
    natural = 1.0 if name == "scores" and result.analysis in ("patching", "") else None
    title = f"{result.method} · {result.granularity} · {result.task} · {result.model} ({result.metric}, normalized)"
    if "layer" not in axes or view == "top":  # latents of spliced dictionaries, a list of components, or top-k
        return _top_components(result, grid, title, k, natural)
    layers = result.settings.get("layers") or list(range(result.shape[axes.index("layer")]))
    layer_labels = [f"L{l}" for l in layers]
    if axes == ["layer"]:
        return heatmap(grid[:, None], ["all"], layer_labels, title, "", "layer", natural=natural)
    if axes == ["layer", "position"]:
        return heatmap(grid, position_labels(result, grid.shape[1]), layer_labels, title, "position", "layer", natural=natural)
    if axes == ["kind", "layer", "position"]:
        kinds = ["resid_pre", "attn_out", "mlp_out"]
        return _multiples([grid[i] for i in range(grid.shape[0])], kinds, position_labels(result, grid.shape[-1]),
                          layer_labels, title, "position", "layer", natural)
    if len(axes) == 3:  # layer x head/group x position
        unit = axes[1]
        columns = position_labels(result, grid.shape[-1])
        if view == "grid":
            rows = [f"L{l}.{unit[0].upper()}{i}" for l in layers for i in range(grid.shape[1])]
            return heatmap(grid.reshape(-1, grid.shape[-1]), columns, rows, title, "position", unit, natural=natural)
        chosen = [grid.shape[-1] - 1 if position is None else position] if view == "position" else active_positions(grid)
        units = [str(i) for i in range(grid.shape[1])]
        return _multiples([grid[:, :, p] for p in chosen], [f"@ {columns[p]}" for p in chosen], units, layer_labels,
                          title, unit, "layer", natural)
    index_labels = [str(i) for i in range(grid.shape[1])]
    return heatmap(grid, index_labels, layer_labels, title, axes[1], "layer", natural=natural)


def _multiples(panels: list[np.ndarray], names: list[str], x_labels: list[str], y_labels: list[str], title: str,
               x_title: str, y_title: str, natural: float | None) -> go.Figure:
    """Heatmaps side by side on one shared colour axis and row labels (small multiples)."""
    figure = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=names,
                           horizontal_spacing=min(0.02, 0.2 / max(1, len(panels))))
    for i, (panel, name) in enumerate(zip(panels, names)):
        figure.add_trace(go.Heatmap(z=panel, x=x_labels, y=y_labels, coloraxis="coloraxis", name=name,
                                    hovertemplate=f"{name}<br>{y_title} %{{y}}<br>{x_title} %{{x}}<br>effect %{{z:.4g}}"
                                                  "<extra></extra>"), row=1, col=i + 1)
        figure.update_xaxes(title_text=x_title, row=1, col=i + 1)
    figure.update_yaxes(autorange="reversed", title_text=y_title, row=1, col=1)
    values = np.stack(panels) if panels else np.zeros(1)
    figure.update_layout(title=title, template="plotly_white", coloraxis=color_axis(values, "effect", natural=natural),
                         height=max(350, min(18 * len(y_labels) + 180, 900)))
    return figure


def _top_components(result: Result, grid: np.ndarray, title: str, k: int = 40, natural: float | None = None) -> go.Figure:
    """The ``k`` components with the largest |effect| (by position where the grid has positions):
    a sweep over thousands of latents, most of them silent, reads best as its top rows."""
    positional = result.axes[-1] == "position"
    if positional:
        rows = grid.reshape(-1, grid.shape[-1])
        names = [name.split("@")[0] for name in result.components[::grid.shape[-1]]]
    else:
        rows = grid.reshape(-1, 1)
        names = list(result.components)
    top = np.argsort(-np.nan_to_num(np.abs(rows)).max(axis=1), kind="stable")[:k]
    columns = position_labels(result, rows.shape[1]) if positional else ["all positions"]
    return heatmap(rows[top], columns, [names[i] for i in top], f"{title}: top {len(top)}",
                   "position" if positional else "", "component", natural=natural)


def importance_figure(result: Result) -> go.Figure:
    """Per-layer importance (1 - cos) of attention, MLP and blocks from a redundancy run."""
    grid = result.grid()
    layers = list(range(grid.shape[1]))
    figure = go.Figure([go.Bar(name=kind, x=layers, y=grid[i], marker_color=colors.QUALITATIVE[i % len(colors.QUALITATIVE)],
                               hovertemplate=f"{kind} L%{{x}}: %{{y:.4f}}<extra></extra>")
                        for i, kind in enumerate(result.settings.get("unit_kinds", ["attn", "mlp", "block"]))])
    figure.update_layout(title=f"layer importance (1 - cos similarity) · {result.model} · {result.task}",
                         xaxis_title="layer", yaxis_title="importance (1 - cos)", yaxis_type="log",
                         barmode="group", template="plotly_white")
    return integer_ticks(figure, len(layers))


def integer_ticks(figure: go.Figure, n: int, axis: str = "x") -> go.Figure:
    """Ticks at integers only on every ``axis`` axis of ``figure`` (layers, counts, k), about 15 at most."""
    spacing = max(1, int(np.ceil(n / 15)))
    (figure.update_xaxes if axis == "x" else figure.update_yaxes)(tickmode="linear", tick0=0, dtick=spacing)
    return figure


# metrics with natural bounds: drawn on them
_BOUNDED = {"ioi_accuracy": (0.0, 1.0), "capitals_accuracy": (0.0, 1.0), "greater_than_accuracy": (0.0, 1.0)}


def pruning_curves_figure(curves: dict, metric: str = "perplexity", title: str = "") -> go.Figure:
    """``metric`` after dropping k units, one line per method (random seeds thin grey, their mean
    dashed). Generation speed is not drawn here: each k is timed once, and a single timing is not
    a measurement (``interp drop`` times the intact and pruned models repeatedly)."""
    figure = go.Figure()
    named = 0
    for curve in curves["curves"]:
        values = [p.get(metric) for p in curve["points"]]
        k = list(range(len(values)))
        if curve["method"] == "random":
            figure.add_trace(go.Scatter(x=k, y=values, mode="lines", name=curve["name"], line={"color": "lightgrey", "width": 1},
                                        legendgroup="random", showlegend=False))
        else:
            figure.add_trace(go.Scatter(x=k, y=values, mode="lines+markers", name=curve["name"],
                                        line={"color": colors.QUALITATIVE[named % len(colors.QUALITATIVE)]},
                                        customdata=[[", ".join(p["dropped"][-1:])] for p in curve["points"]],
                                        hovertemplate="k=%{x}: %{y:.4g}<br>last dropped: %{customdata[0]}<extra>"
                                        + curve["name"] + "</extra>"))
            named += 1
    random = [c for c in curves["curves"] if c["method"] == "random"]
    if random:
        mean = np.mean([[p.get(metric) for p in c["points"]] for c in random], axis=0)
        figure.add_trace(go.Scatter(x=list(range(len(mean))), y=mean, mode="lines", name=f"random (mean of {len(random)})",
                                    line={"color": "grey", "dash": "dash"}))
    figure.update_layout(title=title or f"{metric} after dropping k units", xaxis_title="k (units dropped)",
                         yaxis_title=metric, yaxis_type="log" if metric == "perplexity" else "linear",
                         template="plotly_white")
    integer_ticks(figure, max((len(c["points"]) for c in curves["curves"]), default=1))
    if metric in _BOUNDED:
        figure.update_yaxes(range=list(_BOUNDED[metric]))
    return figure


def bigram_figures(result: Result) -> list[go.Figure]:
    """Pictures of a bigram-subnetwork run: kept fraction per layer and matrix, attention vs MLP per
    layer, subnetwork vs bigram surprisal, training curve, and residual-stream maps when present."""
    lam = result.extra["sweep"][0]["lambda"]
    grid = result.grid()
    layers = [f"L{l}" for l in range(grid.shape[0])]
    figures = [heatmap(grid, result.extra["matrix_types"], layers,
                       f"kept fraction per weight matrix · {result.model} · lambda {lam:g}", "matrix", "layer", "kept",
                       scale="sequential", natural=1.0)]
    by_layer = result.arrays["kept_by_layer"][0]
    bars = go.Figure([go.Bar(name=name, x=layers, y=by_layer[:, i], marker_color=colors.QUALITATIVE[i])
                      for i, name in enumerate(("attention", "MLP"))])
    bars.update_layout(title="kept fraction by layer", xaxis_title="layer", yaxis_title="kept fraction",
                       yaxis_range=[0, 1], barmode="group", template="plotly_white")
    figures.append(bars)
    model_s, bigram_s = result.arrays["subnetwork_surprisal"], result.arrays["bigram_surprisal"]
    finite = np.isfinite(bigram_s)
    row = result.extra["sweep"][0]["ablations"]["subnetwork"]
    scatter = go.Figure(go.Scattergl(x=bigram_s[finite], y=model_s[finite], mode="markers", marker={"size": 3, "opacity": 0.4}))
    scatter.update_layout(title=f"surprisal on held-out text: subnetwork vs bigram (r = {row['r']:.3f})",
                          xaxis_title="bigram surprisal (nats)", yaxis_title="subnetwork surprisal (nats)",
                          template="plotly_white")
    figures.append(scatter)
    if "history_loss" in result.arrays:  # two plots, one quantity each: no secondary axis
        curve = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                              subplot_titles=("cross-entropy to the target (nats)", "fraction of weights kept (mask > 0.9)"))
        ce = result.arrays["history_cross_entropy"]
        curve.add_trace(go.Scatter(x=np.arange(len(ce)), y=ce, name="cross-entropy", line={"color": colors.QUALITATIVE[0]}),
                        row=1, col=1)
        curve.add_trace(go.Scatter(x=result.arrays["history_checked_steps"], y=result.arrays["history_kept"], name="kept",
                                   line={"color": colors.QUALITATIVE[1]}), row=2, col=1)
        curve.update_yaxes(range=[0, 1], row=2, col=1)
        curve.update_xaxes(title_text="step", row=2, col=1)
        curve.update_layout(title="training", template="plotly_white", showlegend=False, height=520)
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
    """Probe accuracy per layer with its interval, the control task and the selectivity (the
    probe's accuracy minus the control task's), on the accuracy scale."""
    layers = list(range(len(result.scores)))
    accuracy, arrays = result.scores, result.arrays
    figure = go.Figure([
        go.Scatter(x=layers, y=accuracy, name="probe accuracy (95% interval)", mode="lines+markers",
                   line={"color": colors.QUALITATIVE[0]},
                   error_y={"type": "data", "symmetric": False, "array": arrays["ci_high"] - accuracy,
                            "arrayminus": accuracy - arrays["ci_low"]}),
        go.Scatter(x=layers, y=arrays["control_accuracy"], name="control task", mode="lines+markers",
                   line={"color": colors.QUALITATIVE[7]}),
        go.Scatter(x=layers, y=arrays["selectivity"], name="selectivity (probe - control)", mode="lines",
                   line={"color": colors.QUALITATIVE[2], "dash": "dash"}),
    ])
    figure.add_hline(y=result.extra["chance"], line_dash="dot", line_color="#888", annotation_text="chance")
    low = min(0.0, float(np.nanmin(arrays["selectivity"])) - 0.05) if len(layers) else 0.0
    figure.update_layout(title=f"linear probes · {result.task} · {result.model}", yaxis_range=[low, 1.02],
                         xaxis_title="layer (residual stream leaving it)", yaxis_title="accuracy", template="plotly_white")
    return [integer_ticks(figure, len(layers))]


def drop_figures(result: Result) -> list[go.Figure]:
    """The intact and the pruned model side by side: one bar pair per measure (each on its own
    axis), and the generation speed of every repeat (points) with its median, when timed."""
    full, dropped = result.extra["full"], result.extra["dropped"]
    keys = [k for k in full if isinstance(full[k], (int, float)) and isinstance(dropped.get(k), (int, float))
            and not k.startswith(("n_", "parameters"))]  # measures, not the counts of what was dropped
    columns = min(4, max(1, len(keys)))
    rows = max(1, -(-len(keys) // columns))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[k.replace("_", " ") for k in keys],
                           vertical_spacing=0.25 / rows, horizontal_spacing=0.08)
    for i, key in enumerate(keys):
        row, col = i // columns + 1, i % columns + 1
        figure.add_trace(go.Bar(x=["intact", "pruned"], y=[full[key], dropped[key]], showlegend=False,
                                marker_color=[colors.QUALITATIVE[7], colors.QUALITATIVE[1]],
                                hovertemplate=f"{key} %{{x}}: %{{y:.4g}}<extra></extra>"), row=row, col=col)
        if key in _BOUNDED:
            figure.update_yaxes(range=list(_BOUNDED[key]), row=row, col=col)
    figure.update_layout(title=f"intact vs pruned ({len(result.components)} units dropped: {', '.join(result.components)})",
                         template="plotly_white", height=120 + 260 * rows)
    figures = [figure]
    timings = (result.extra.get("speed") or {}).get("timings")
    if timings:
        speed = go.Figure()
        for i, (name, values) in enumerate(timings.items()):
            label = "intact" if name == "full" else "pruned"
            speed.add_trace(go.Box(y=values, name=label, boxpoints="all", marker_color=colors.QUALITATIVE[7 if i == 0 else 1],
                                   hovertemplate=f"{label}: %{{y:.1f}} tokens/s<extra></extra>"))
        ratio = result.extra["speed"]["generation_speedup"]
        speed.update_layout(title=f"greedy generation, {len(next(iter(timings.values())))} timings each: median speed-up "
                                  f"{ratio:.2f}x", yaxis_title="new tokens / s", template="plotly_white", showlegend=False,
                            height=380)
        figures.append(speed)
    return figures


def redundancy_figures(result: Result) -> list[go.Figure]:
    """Importance per unit, and the pruning curves of each evaluation metric (when run)."""
    curves = result.extra.get("curves")
    metrics = ("perplexity", "ioi_accuracy", "capitals_accuracy", "greater_than_accuracy") if curves else ()
    return [importance_figure(result)] + [pruning_curves_figure(curves, m) for m in metrics]


def dictionary_figures(result: Result) -> list[go.Figure]:
    """A dictionary run's latent density and, for a training run, its training curves (one plot per
    quantity, bounded ones on their bounds)."""
    figures = [go.Figure(go.Histogram(x=result.arrays["log10_frequency"], nbinsx=50, marker_color=colors.QUALITATIVE[2]))
               .update_layout(title=f"latent density · {result.task} · {result.model}", xaxis_title="log10 firing frequency",
                              yaxis_title="latents", template="plotly_white")]
    if "history_step" in result.arrays:
        names = {"mse": "reconstruction MSE", "l0": "L0 (latents firing per token)", "explained_variance": "explained variance",
                 "dead_fraction": "dead fraction"}
        for i, (key, name) in enumerate(names.items()):
            figure = go.Figure(go.Scatter(x=result.arrays["history_step"], y=result.arrays[f"history_{key}"],
                                          line={"color": colors.QUALITATIVE[i]}))
            figure.update_layout(title=name, xaxis_title="step", template="plotly_white", height=300)
            if key == "dead_fraction":
                figure.update_yaxes(range=[0, 1])
            figures.append(figure)
    return figures


def lens_figures(result: Result) -> list[go.Figure]:
    """A logit-lens run: the first prompt's answer probability per stage and position (sequential,
    on [0, 1], token labels), and per stage, averaged over the prompts at their last token, the
    logit difference, then the KL to the final distribution and the entropy (one plot each)."""
    from interp.lens import stage_label

    stages = [stage_label(name) for name in result.components]
    kind = "tuned" if result.method == "tuned-lens" else "logit"
    probability = heatmap(result.arrays["first_probability"], result.position_labels, stages,
                          f"P({result.extra['answer']!r}) under the {kind} lens · first prompt · {result.model}", "position",
                          "residual stream", "probability", scale="sequential", natural=1.0)
    rank = heatmap(np.log10(result.arrays["first_rank"] + 1), result.position_labels, stages,
                   f"rank of {result.extra['answer']!r} (log10(rank + 1); 0: the top token) · first prompt", "position",
                   "residual stream", "log10(rank + 1)", scale="sequential")
    figures = [probability, rank]
    for key, title, axis in (("scores", f"{result.metric} at the last token (mean over {result.settings['n_prompts']} prompts)",
                              result.metric),
                             ("kl_to_final", "KL(final || lens) at the last token", "nats"),
                             ("entropy", "entropy of the lens distribution at the last token", "nats")):
        values = result.scores if key == "scores" else result.arrays[key]
        figure = go.Figure(go.Scatter(x=stages, y=values, mode="lines+markers", line={"color": colors.QUALITATIVE[0]},
                                      hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
        figure.update_layout(title=title, xaxis_title="residual stream", yaxis_title=axis, template="plotly_white", height=340)
        if key == "scores":
            figure.add_hline(y=0, line_dash="dot", line_color="#888")
        figures.append(figure)
    return figures


def dla_figures(result: Result, prompt: int | None = None) -> list[go.Figure]:
    """A DLA run: each head's contribution (layer x head, signed, robust symmetric range) and the
    largest parts of every kind as bars in the same colours; with ``by_source``, where the largest
    heads read their parts from (the mean over prompts, or prompt number ``prompt``)."""
    grid = result.grid()
    heads = heatmap(grid, [str(h) for h in range(grid.shape[1])], [f"L{l}" for l in range(grid.shape[0])],
                    f"direct logit attribution of each head · {result.task} · {result.model} ({result.metric}, logits)",
                    "head", "layer", "logits")
    parts = {name: float(v) for name, v in zip(result.components, result.scores)}
    parts.update({f"L{l}.MLP": float(v) for l, v in enumerate(result.arrays["mlp"])})
    parts.update({f"L{l}.ATTN_BIAS": float(v) for l, v in enumerate(result.arrays["attn_bias"])})
    parts.update({"EMBED": result.extra["embed"], "FINAL_NORM_BIAS": result.extra["final_norm_bias"],
                  "UNEMBED_BIAS": result.extra["unembed_bias"]})
    top = sorted(parts, key=lambda name: -abs(parts[name]))[:20]
    bars = go.Figure(go.Bar(x=[parts[n] for n in top][::-1], y=top[::-1], orientation="h",
                            marker_color=[colors.sign_color(parts[n]) for n in top][::-1],
                            hovertemplate="%{y}: %{x:.4g}<extra></extra>"))
    bars.update_layout(title=f"the 20 largest parts (they sum to {result.extra['total']:.4g}; the model's value "
                             f"{result.extra['logit_diff']:.4g}); red raises the logit difference, blue lowers it",
                       xaxis_title="contribution (logits)", template="plotly_white", height=600)
    figures = [heads, bars]
    top_neurons = result.extra.get("top_neurons")
    if top_neurons:
        names, values = [n for n, _ in top_neurons][::-1], [v for _, v in top_neurons][::-1]
        neurons = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=[colors.sign_color(v) for v in values],
                                   hovertemplate="%{y}: %{x:.4g}<extra></extra>"))
        neurons.update_layout(title=f"the {len(names)} largest MLP neurons (each a share of its layer's MLP part)",
                              xaxis_title="contribution (logits)", template="plotly_white", height=200 + 18 * len(names))
        figures.append(neurons)
    if "by_source" in result.arrays:
        figures.append(_dla_sources(result, prompt))
    return figures


def _dla_sources(result: Result, prompt: int | None = None, n_heads: int = 12) -> go.Figure:
    """The ``n_heads`` heads with the largest parts, each split over the source positions it
    reads (positions counted from the last token): the mean over prompts, labelled with the first
    prompt's tokens, or prompt number ``prompt``'s own parts, heads and tokens."""
    from interp.dla import mean_by_source

    by_source = result.arrays["by_source"]  # [prompts, layers, heads, positions]
    width = by_source.shape[-1]
    if prompt is None:
        values, scores, tokens = mean_by_source(by_source), result.scores, result.tokens
        which = f"mean over {result.settings['n_prompts']} prompts"
    else:
        values, scores = by_source[prompt], result.arrays["per_prompt"][prompt]
        tokens = (result.extra.get("prompt_tokens") or [result.tokens])[prompt]
        which = f"prompt {prompt}"
    flat = values.reshape(-1, width)
    order = np.argsort(-np.abs(scores), kind="stable")[:n_heads]
    labels = [f"{offset}" + (f" {tokens[offset]!r}" if -offset <= len(tokens) else "") for offset in range(-width, 0)]
    columns = slice(width - len(tokens), None) if prompt is not None else slice(None)  # a shorter prompt: its own
    return heatmap(flat[order][:, columns], labels[columns], [result.components[i] for i in order],
                   f"where the largest heads read their part from · {result.task} · {result.model} ({which}; they sum "
                   "to each head's part)", "source position", "head", "logits")


def steering_figures(result: Result) -> list[go.Figure]:
    """A steering run: the task's logit-difference change and the KL on neutral text against the
    coefficient (one plot each), and the generated texts (a row per coefficient, the plain model's
    first)."""
    x = [float(c) for c in result.settings["coefficients"]] if result.components[0] != "fixed" else result.components
    figures = []
    for values, title, axis in ((result.scores, f"change of the {result.task} logit difference (plain model: "
                                                f"{result.clean_metric:.3g}) · {result.settings['site']} · {result.model}",
                                 "Δ logit difference"),
                                (result.arrays["kl_neutral"], f"side effect: KL(plain || steered) on {result.settings['neutral']}",
                                 "nats per token")):
        figure = go.Figure(go.Scatter(x=x, y=values, mode="lines+markers", line={"color": colors.QUALITATIVE[0]},
                                      hovertemplate="coefficient %{x}: %{y:.4g}<extra></extra>"))
        figure.update_layout(title=title, xaxis_title="coefficient", yaxis_title=axis, template="plotly_white", height=340)
        if axis != "nats per token":
            figure.add_hline(y=0, line_dash="dot", line_color="#888")
        figures.append(figure)
    prompts = result.extra["prompts"]
    rows = ["plain"] + list(result.components)
    texts = [result.extra["unsteered"]] + list(result.extra["steered"])
    columns = [rows] + [[row[p] for row in texts] for p in range(len(prompts))]
    table = go.Figure(go.Table(header={"values": ["coefficient"] + [repr(p) for p in prompts], "align": "left"},
                               cells={"values": columns, "align": "left"}, columnwidth=[1] + [4] * len(prompts)))
    table.update_layout(title=f"generated text ({result.settings['new_tokens']} tokens, "
                              f"{'sampled' if result.settings['do_sample'] else 'greedy'})", height=120 + 60 * len(rows))
    return figures + [table]


def tuned_lens_figures(result: Result) -> list[go.Figure]:
    """A tuned-lens fit: held-out KL(final || stage) per stage of the logit and the tuned lens, on
    one axis (the same quantity, nats per token; log scale, since the embeddings' KL is large)."""
    from interp.lens import stage_label

    stages = [stage_label(name) for name in result.components]
    figure = go.Figure()
    for k, (name, values) in enumerate((("logit lens", result.arrays["kl_logit_lens"]), ("tuned lens", result.scores))):
        figure.add_trace(go.Scatter(x=stages, y=np.maximum(values, 1e-6), name=name, mode="lines+markers",
                                    line={"color": colors.QUALITATIVE[k]}, hovertemplate="%{x}: %{y:.4g} nats<extra></extra>"))
    figure.update_layout(title=f"held-out KL(final || lens) · {result.extra['held_out_tokens']} tokens of {result.task} · "
                               f"{result.model}", xaxis_title="residual stream", yaxis_title="nats per token (log)",
                         yaxis_type="log", template="plotly_white", height=380)
    return [figure]
