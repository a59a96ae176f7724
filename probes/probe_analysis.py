"""The probing analysis: a logistic probe on the residual stream leaving each layer.

``run_probes(model, data, config) -> Result`` with ``data`` a :class:`probes.dataset.ProbeDataset`
(from a built-in task's clean/corrupt prompts, or a labelled JSONL file). The result's ``scores``
are the out-of-fold probe accuracy per layer; its arrays hold the Wilson intervals
(``ci_low``/``ci_high``), the control task's accuracy, the selectivity and the unit probe
directions [layers, d_model].
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from interp.analysis import Analysis, register
from interp.model import Model
from interp.results import Result
from probes.activations import residual_activations
from probes.dataset import ProbeDataset
from probes.linear_probe import ProbeConfig, probe_layers


@dataclass
class ProbePayload:
    """What a probing result holds besides its arrays: the majority-label frequency."""

    chance: float


def run_probes(model: Model, data: ProbeDataset, config: ProbeConfig = ProbeConfig()) -> Result:
    """Probe accuracy per layer (see module doc)."""
    start = time.perf_counter()
    activations = residual_activations(model, data.tokens, data.positions, batch_size=config.batch_size, mask=data.mask)
    scores = probe_layers(activations, data.labels, data.groups, data.word_types, config)
    n_layers = model.config.n_layers
    return Result(
        method="probe", analysis="probe", model=model.config.name, task=data.name, metric="accuracy",
        granularity="layers", components=[f"L{layer}.RESID_POST" for layer in range(n_layers)],
        scores=scores.accuracy.astype(np.float64), shape=[n_layers], axes=["layer"],
        wall_seconds=time.perf_counter() - start, n_forward_passes=-(-len(data) // config.batch_size),
        settings={"n_examples": len(data), "labels": data.label_names, "backend": model.backend.name, **scores.summary()},
        arrays={"ci_low": scores.ci_low, "ci_high": scores.ci_high, "control_accuracy": scores.control_accuracy,
                "selectivity": scores.selectivity, "directions": scores.directions},
        extra={"chance": scores.chance},
    )


register(Analysis(
    name="probe", config=ProbeConfig, run=run_probes, methods=("probe",), payload=ProbePayload, page="Probes",
    figures="interp.ui.figures:probe_figures",
    summary="linear probes per layer with grouped folds, a control task and selectivity"))
