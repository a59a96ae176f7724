"""Linear probes per layer with grouped splits, control tasks and selectivity (Hewitt & Liang).

Every layer uses the same stratified grouped folds (no group, e.g. no prompt pair, is in both
train and test); the scaler and the logistic regression are fitted on the training fold only. Accuracy is
the out-of-fold accuracy over all examples, with a Wilson confidence interval. The control task
gives every word type one random but fixed label (drawn with the task's label frequencies);
selectivity = task accuracy - control accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from interp.analysis import Config, option


@dataclass(frozen=True)
class ProbeConfig(Config):
    """``interp probe``: a logistic probe per layer. ``C``: inverse regularization strength;
    ``l1_ratio``: 0 = L2, 1 = L1 (scikit-learn's elastic-net mixing); ``n_splits`` grouped folds;
    ``confidence`` of the accuracy intervals; ``batch_size``: sequences per forward pass while
    reading activations."""

    C: float = option(1.0, "inverse regularization strength", minimum=0)
    l1_ratio: float = option(0.0, "elastic-net mixing: 0 = L2, 1 = L1", minimum=0, maximum=1)
    n_splits: int | None = option(None, "grouped cross-validation folds (default: 5, or the number of groups when "
                                        "there are fewer; the result's settings say how many were used)", minimum=2,
                                  flags=("--folds",))
    max_iter: int = option(2000, "solver iterations", minimum=1)
    confidence: float = option(0.95, "confidence of the accuracy intervals", minimum=0, maximum=1)
    seed: int = option(0, "seed of the folds, the control task and the prompts")
    batch_size: int = option(16, "sequences per forward pass while reading activations", minimum=1)


@dataclass
class ProbeScores:
    """Per layer: ``accuracy``, ``ci_low``/``ci_high``, ``control_accuracy``, ``selectivity`` ([layers]);
    ``chance`` (majority-label frequency); ``directions`` [layers, d_model] (unit vectors in the
    raw activation space, binary labels only; zeros otherwise)."""

    accuracy: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    control_accuracy: np.ndarray
    selectivity: np.ndarray
    chance: float
    directions: np.ndarray
    config: ProbeConfig

    n_folds: int = 0  # the grouped folds actually used

    def summary(self) -> dict:
        return {"chance": self.chance, "config": asdict(self.config), "folds": self.n_folds}


def group_folds(groups: np.ndarray, labels: np.ndarray, n_splits: int | None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped (train, test) index folds: no group is on both sides of any fold, and each fold's
    label mix is kept close to the whole set's (an unbalanced training fold would push a probe on
    noise below chance on its test fold). ``n_splits`` None: 5, or the number of groups when
    there are fewer; a larger number than the groups is refused."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(f"grouped splits need at least 2 groups, got {n_groups}")
    if n_splits is not None and n_splits > n_groups:
        raise ValueError(f"--folds {n_splits} needs at least {n_splits} groups (prompt pairs); the dataset has "
                         f"{n_groups}")
    splitter = StratifiedGroupKFold(n_splits=min(5, n_groups) if n_splits is None else n_splits, shuffle=True,
                                    random_state=seed)
    return list(splitter.split(np.zeros(len(groups)), labels, groups=groups))


def control_labels(word_types: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """One random, fixed label per word type, drawn with the frequencies of ``labels``."""
    rng = np.random.default_rng(seed)
    types = np.unique(word_types)
    values, counts = np.unique(labels, return_counts=True)
    per_type = dict(zip(types.tolist(), rng.choice(values, size=len(types), p=counts / counts.sum()).tolist()))
    return np.array([per_type[t] for t in word_types.tolist()])


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return float(centre - half), float(centre + half)


def _classifier(config: ProbeConfig):
    solver = "lbfgs" if config.l1_ratio == 0 else "saga"
    return make_pipeline(StandardScaler(), LogisticRegression(C=config.C, l1_ratio=config.l1_ratio, solver=solver,
                                                              max_iter=config.max_iter))


def _out_of_fold(x: np.ndarray, y: np.ndarray, folds, config: ProbeConfig) -> np.ndarray:
    predicted = np.empty_like(y)
    for train, test in folds:
        if len(np.unique(y[train])) < 2:
            predicted[test] = y[train][0]
            continue
        predicted[test] = _classifier(config).fit(x[train], y[train]).predict(x[test])
    return predicted


def probe_layers(activations: np.ndarray, labels: np.ndarray, groups: np.ndarray, word_types: np.ndarray,
                 config: ProbeConfig | None = None) -> ProbeScores:
    """Fit and score a probe per layer. activations: [layers, n, d]; labels, groups, word_types: [n]."""
    config = config or ProbeConfig()
    labels = np.asarray(labels)
    if activations.shape[1] != len(labels):
        raise ValueError(f"{activations.shape[1]} activation rows for {len(labels)} labels")
    folds = group_folds(groups, labels, config.n_splits, config.seed)
    control = control_labels(word_types, labels, config.seed)
    n_layers, n, d = activations.shape
    out = {k: np.zeros(n_layers) for k in ("accuracy", "ci_low", "ci_high", "control_accuracy")}
    directions = np.zeros((n_layers, d))
    for layer in range(n_layers):
        x = activations[layer].astype(np.float64)
        correct = int((_out_of_fold(x, labels, folds, config) == labels).sum())
        out["accuracy"][layer] = correct / n
        out["ci_low"][layer], out["ci_high"][layer] = wilson_interval(correct, n, config.confidence)
        out["control_accuracy"][layer] = float((_out_of_fold(x, control, folds, config) == control).mean())
        if len(np.unique(labels)) == 2:
            fitted = _classifier(config).fit(x, labels)
            scaler, logistic = fitted[0], fitted[1]
            w = logistic.coef_[0] / scaler.scale_
            directions[layer] = w / max(np.linalg.norm(w), 1e-12)
    chance = float(np.unique(labels, return_counts=True)[1].max() / n)
    return ProbeScores(selectivity=out["accuracy"] - out["control_accuracy"], chance=chance, directions=directions,
                       config=config, n_folds=len(folds), **out)


def remove_direction(direction: torch.Tensor | np.ndarray):
    """A ``model.patch`` value that projects a unit direction out of an activation [..., d_model]:
    ``model.patch({"L5.RESID_POST": remove_direction(scores.directions[5])})``."""
    from interp.steering import steering_edit

    return steering_edit(torch.as_tensor(np.asarray(direction), dtype=torch.float32), 1.0, "project_out")
