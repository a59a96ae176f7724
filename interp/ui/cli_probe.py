"""``interp probe``: linear probes per layer on the residual stream.

    interp probe --model smollm2-135m --task greater_than --n-prompts 64 --out runs/probe-gt

``--task`` is a built-in task (clean vs corrupt prompts, grouped by pair, read at the last token)
or a JSONL file with ``text``, ``label`` and optional ``group`` / ``position``. Writes
``result.json`` (probe accuracy per layer as ``scores``; Wilson intervals, control-task accuracy,
selectivity and unit probe directions in ``arrays.npz``) and ``probe.html``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def add_command(subparsers) -> None:
    from interp.backends import BACKENDS

    p = subparsers.add_parser("probe", help="linear probes per layer with grouped folds, control task and selectivity",
                              description="Fit a logistic probe on the residual stream leaving each layer.")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="greater_than", help="ioi | capitals | greater_than | induction | labelled .jsonl file")
    p.add_argument("--n-prompts", type=int, default=64, help="prompt pairs for a built-in task")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0, help="inverse regularization strength")
    p.add_argument("--backend", default="transformer_lens", choices=list(BACKENDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default runs/probe-<task>)")
    p.set_defaults(func=_run_probe)


def _run_probe(args: argparse.Namespace) -> int:
    import plotly.graph_objects as go

    from interp.loading import load_model
    from interp.ui.figures import write_figures
    from interp.results import Result
    from interp.tasks import GENERATORS, get_task
    from probes.activations import residual_activations
    from probes.dataset import ProbeDataset
    from probes.linear_probe import ProbeConfig, probe_layers

    start = time.perf_counter()
    print(f"loading {args.model} ({args.backend}) ...", file=sys.stderr)
    model = load_model(args.model, backend=args.backend)
    if args.task in GENERATORS:
        data = ProbeDataset.from_task(get_task(model, args.task, n_prompts=args.n_prompts, seed=args.seed))
    else:
        data = ProbeDataset.from_jsonl(model, args.task)
    activations = residual_activations(model, data.tokens, data.positions)
    scores = probe_layers(activations, data.labels, data.groups, data.word_types,
                          ProbeConfig(C=args.C, n_splits=args.folds, seed=args.seed))
    n_layers = model.config.n_layers
    result = Result(
        method="probe", model=model.config.name, task=data.name, metric="accuracy", granularity="layers",
        components=[f"L{layer}.RESID_POST" for layer in range(n_layers)], scores=scores.accuracy.astype(np.float64),
        shape=[n_layers], axes=["layer"], wall_seconds=time.perf_counter() - start, n_forward_passes=-(-len(data) // 16),
        settings={"n_examples": len(data), "labels": data.label_names, **scores.summary()},
        arrays={"ci_low": scores.ci_low, "ci_high": scores.ci_high, "control_accuracy": scores.control_accuracy,
                "selectivity": scores.selectivity, "directions": scores.directions},
        extra={"chance": scores.chance},
    )
    out = Path(args.out or f"runs/probe-{Path(args.task).stem}")
    result.save(out)
    layers = list(range(n_layers))
    figure = go.Figure([
        go.Scatter(x=layers, y=scores.accuracy, name="probe accuracy", mode="lines+markers",
                   error_y={"type": "data", "symmetric": False, "array": scores.ci_high - scores.accuracy,
                            "arrayminus": scores.accuracy - scores.ci_low}),
        go.Scatter(x=layers, y=scores.control_accuracy, name="control task", mode="lines+markers"),
        go.Scatter(x=layers, y=scores.selectivity, name="selectivity", mode="lines"),
    ])
    figure.add_hline(y=scores.chance, line_dash="dot", annotation_text="chance")
    figure.update_layout(title=f"linear probes · {data.name} · {model.config.name}", xaxis_title="layer (residual stream leaving it)",
                         yaxis_title="accuracy", template="plotly_white")
    write_figures(out / "probe.html", [figure], f"probes · {data.name}")
    best = int(np.argmax(scores.selectivity))
    print(f"{data.name}: {len(data)} examples, chance {scores.chance:.2f}")
    print(f"  best layer by selectivity: {best} (accuracy {scores.accuracy[best]:.3f} "
          f"[{scores.ci_low[best]:.3f}, {scores.ci_high[best]:.3f}], control {scores.control_accuracy[best]:.3f})")
    print("  accuracy by layer: " + " ".join(f"{a:.2f}" for a in scores.accuracy))
    print(f"wrote {out / 'result.json'} and {out / 'probe.html'}")
    return 0
