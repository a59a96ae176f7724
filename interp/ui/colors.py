"""The one colour language of every figure, page and graph.

- **Signed effects** (patching effects, attribution scores, edge and feature-graph weights) use
  one diverging scale centred at 0: **red is positive, blue negative**, white no effect. A positive
  normalized patching effect or edge score means the component carries the behaviour (patching it
  moves the metric that fraction of the way from clean to corrupt); a positive graph weight means
  the source raises its target. Heatmaps, graph edges and bars sample the same scale, so a red
  cell and a red edge mean the same thing, and every legend says which.
- **Non-negative quantities** (attention probabilities, head scores, kept fractions, densities,
  importances) use one sequential scale from white to dark, never a diverging one.
- **Ranges**: a quantity with natural bounds is drawn on them (probabilities and fractions on
  [0, 1], normalized effects on [-1, 1]); any other signed quantity on a symmetric robust range
  (the 99th percentile of |value|, so one outlier does not wash out the rest; larger values
  saturate and the colour bar says so).
- **Categories** (node kinds, methods, series) use one qualitative palette whose colours are
  neither the red nor the blue of signs.
"""

from __future__ import annotations

import numpy as np
from plotly.colors import sample_colorscale

# white at 0, red positive, blue negative
DIVERGING = [[0.0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1.0, "#b2182b"]]
SEQUENTIAL = [[0.0, "#ffffff"], [0.35, "#c7c1e0"], [0.7, "#7a6bb5"], [1.0, "#3f007d"]]  # white to dark purple
POSITIVE, NEGATIVE = "#b2182b", "#2166ac"
# node kinds and series: no red or blue, so they never read as a sign
QUALITATIVE = ["#1b9e77", "#d95f02", "#7570b3", "#e6ab02", "#66a61e", "#a6761d", "#e7298a", "#666666"]
NODE_KINDS = {"embed": ("square", "#66a61e"), "logits": ("star", "#1b9e77"), "target": ("star", "#1b9e77"),
              "head": ("circle", "#e6ab02"), "mlp": ("diamond", "#7570b3"), "feature": ("circle", "#d95f02"),
              "error": ("diamond", "#bdbdbd")}


def robust_bound(values: np.ndarray, quantile: float = 99.0) -> float:
    """The symmetric colour bound of a signed quantity without natural bounds: the ``quantile``-th
    percentile of |value| over the finite values (1.0 when there are none or all are 0)."""
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return 1.0
    bound = float(np.percentile(finite, quantile))
    return bound if bound > 0 else (float(finite.max()) or 1.0)


def signed_range(values: np.ndarray, natural: float | None = None) -> tuple[float, float]:
    """(zmin, zmax) of a signed quantity: ``[-natural, natural]`` when it has natural bounds, else
    the symmetric robust range."""
    bound = natural if natural is not None else robust_bound(values)
    return -bound, bound


def signed_color(value: float, bound: float) -> str:
    """The diverging scale's colour of ``value`` on [-bound, bound] (clipped): the colour an edge or
    a bar of that value takes, matching a heatmap cell of the same value."""
    bound = bound or 1.0
    return sample_colorscale(DIVERGING, [float(np.clip(0.5 + 0.5 * value / bound, 0.0, 1.0))])[0]


def sign_color(value: float) -> str:
    """The saturated colour of a sign: red for >= 0, blue below."""
    return POSITIVE if value >= 0 else NEGATIVE
