"""``interp probe``: linear probes per layer on the residual stream.

    interp probe --model smollm2-135m --task greater_than --n-prompts 64 --out runs/probe-gt

``--task`` is a built-in task (clean vs corrupt prompts, grouped by pair, read at the last token)
or a JSONL file with ``text``, ``label`` and optional ``group`` / ``position``. Writes
``result.json`` (probe accuracy per layer as ``scores``; Wilson intervals, control-task accuracy,
selectivity and unit probe directions in ``arrays.npz``) and ``probe.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interp.analysis import TaskOptions
from interp.ui.flags import analysis_command, config_from_args, load, save_run
from probes.linear_probe import ProbeConfig


def add_command(subparsers) -> None:
    analysis_command(subparsers, "probe", "linear probes per layer with grouped folds, control task and selectivity",
                     "Fit a logistic probe on the residual stream leaving each layer.", ProbeConfig, TaskOptions, _run_probe,
                     out_help="run folder (default runs/probe-<task>)", inputs_defaults={"task": "greater_than", "n_prompts": 64})


def _run_probe(args: argparse.Namespace) -> int:
    from interp.tasks import GENERATORS
    from probes.probe_analysis import run_probes
    from probes.dataset import ProbeDataset

    config = config_from_args(ProbeConfig, args)
    inputs = config_from_args(TaskOptions, args)
    model = load(args)
    if inputs.task in GENERATORS:
        data = ProbeDataset.from_task(inputs.build(model, seed=config.seed))
    else:
        data = ProbeDataset.from_jsonl(model, inputs.task)
    result = run_probes(model, data, config)
    written = save_run(result, Path(args.out or f"runs/probe-{Path(inputs.task).stem}"))
    accuracy, selectivity = result.scores, result.arrays["selectivity"]
    best = int(np.argmax(selectivity))
    print(f"{data.name}: {len(data)} examples, chance {result.extra['chance']:.2f}")
    print(f"  best layer by selectivity: {best} (accuracy {accuracy[best]:.3f} "
          f"[{result.arrays['ci_low'][best]:.3f}, {result.arrays['ci_high'][best]:.3f}], "
          f"control {result.arrays['control_accuracy'][best]:.3f})")
    print("  accuracy by layer: " + " ".join(f"{a:.2f}" for a in accuracy))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
