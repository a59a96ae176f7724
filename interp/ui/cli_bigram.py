"""``interp bigram``: bigram subnetworks by continuous sparsification, with a lambda sweep.

    interp bigram --model smollm2-135m --lambda 10 --steps 600 --out runs/bigram

Writes ``result.json`` (kept fraction per weight matrix of the first lambda's subnetwork as
``scores`` over [layer, matrix]; per-lambda fit, ablations and stop reasons under ``extra``),
``arrays.npz``, one ``masks-lambda<value>.npz`` per lambda (parameter name -> boolean mask, bit-packed; ``load_masks`` reads it) and
``bigram.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from circuits.bigram_analysis import BigramConfig
from interp.analysis import CorpusOptions
from interp.ui.flags import analysis_command, config_from_args, load, save_run


def add_command(subparsers) -> None:
    analysis_command(subparsers, "bigram", "bigram subnetwork: the minimal weights that make next-token-from-current-token "
                     "predictions", "Continuous sparsification of every attention and MLP weight matrix towards the "
                     "corpus bigram distribution (Chang & Bergen 2025). Defaults are the paper's (15k steps of 32 x 128 "
                     "tokens): on a CPU use e.g. --steps 600 --batch-size 4 --seq-len 64 --lr 1e-3 --temperature-growth 1.01.",
                     BigramConfig, CorpusOptions, _run_bigram, out="runs/bigram")


def _run_bigram(args: argparse.Namespace) -> int:
    from circuits.bigram_analysis import run_bigram

    config = config_from_args(BigramConfig, args)  # bad settings fail before loading anything
    corpus = config_from_args(CorpusOptions, args).load()
    result = run_bigram(load(args), corpus, config)
    written = save_run(result, Path(args.out))
    _print_summary(result)
    print(f"wrote {', '.join(str(p) for p in written[:1] + written[-1:])} and the masks in {args.out}")
    return 0


def _print_summary(result) -> None:
    first = result.extra["sweep"][0]
    print(f"ablations at lambda {first['lambda']:g} (held-out, nats):")
    print(f"  {'':<12}{'kept':>10}{'r':>8}{'r_smooth':>10}{'CE->bigram':>12}{'LM loss':>10}")
    for name, row in first["ablations"].items():
        print(f"  {name:<12}{row['kept_fraction']:>10.4%}{row['r']:>8.3f}{row['r_smoothed']:>10.3f}"
              f"{row['cross_entropy_to_bigram']:>12.3f}{row['lm_loss']:>10.3f}")
    by_layer = result.arrays["kept_by_layer"][0]
    top = np.argsort(-by_layer.ravel())[:5]
    print("most-kept sublayers: " + ", ".join(
        f"L{i // 2}.{'ATTN' if i % 2 == 0 else 'MLP'} {by_layer.ravel()[i]:.3%}" for i in top))
    if "optimal_pruning" in result.extra:
        o = result.extra["optimal_pruning"]["overlap"]
        print(f"overlap with the optimal-pruning mask: {o['overlap']:.3f} (row-shuffle null {o['null_mean']:.3f} "
              f"+- {o['null_std']:.3f}, p = {o['p_value']:.3f})")
