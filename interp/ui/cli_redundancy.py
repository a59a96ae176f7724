"""``interp redundancy`` (importance scores + pruning curves) and ``interp drop`` (one pruned
configuration against the intact model).

    interp redundancy --model smollm2-135m --out runs/redundancy
    interp drop --model smollm2-135m --attn 8 --out runs/drop-attn8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interp.analysis import CorpusOptions
from interp.redundancy_analysis import DropConfig, RedundancyConfig
from interp.ui.flags import analysis_command, config_from_args, load, save_run


def add_commands(subparsers) -> None:
    analysis_command(subparsers, "redundancy", "layer importance scores and pruning curves",
                     "Similarity and ablation importance of every attention sublayer, MLP sublayer and block, and "
                     "pruning curves per drop method.", RedundancyConfig, CorpusOptions, _run_redundancy,
                     out="runs/redundancy")
    analysis_command(subparsers, "drop", "evaluate the model with chosen layers dropped",
                     "Drop the k most redundant attention/MLP sublayers or blocks (or named units) and compare "
                     "perplexity, task accuracy and generation speed with the intact model.", DropConfig, CorpusOptions,
                     _run_drop, out_help="run folder (default runs/drop-<selection>)")


def _run_redundancy(args: argparse.Namespace) -> int:
    from interp.redundancy_analysis import run_redundancy

    config = config_from_args(RedundancyConfig, args)
    corpus = config_from_args(CorpusOptions, args).load()
    result = run_redundancy(load(args), corpus, config)
    written = save_run(result, Path(args.out))
    _print_redundancy(result, result.extra["findings"])
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _print_redundancy(result, found: dict) -> None:
    grid = result.grid()
    print(f"importance (1 - cos) per layer, {result.model}:")
    print("  layer   attn      mlp       block")
    for layer in range(grid.shape[1]):
        print(f"  {layer:>5}   {grid[0, layer]:.4f}    {grid[1, layer]:.4f}    {grid[2, layer]:.4f}")
    for name, finding in found.items():
        print(f"  {name.replace('_', ' ')}: {'holds' if finding['holds'] else 'does not hold'}")
    curves = result.extra.get("curves")
    if curves:
        print(f"perplexity after dropping k units (full model {curves['full']['perplexity']:.2f}):")
        from interp.pruning import curve_values
        for name in dict.fromkeys("random" if c["method"] == "random" else c["name"] for c in curves["curves"]):
            values = curve_values(curves, name, "perplexity")
            print(f"  {name:<15} " + " ".join(f"{v:8.2f}" for v in values))


def _run_drop(args: argparse.Namespace) -> int:
    from interp.redundancy_analysis import run_drop

    config = config_from_args(DropConfig, args)
    corpus = config_from_args(CorpusOptions, args).load()
    model = load(args)
    result = run_drop(model, corpus, config)
    written = save_run(result, Path(args.out or f"runs/drop-{config.label()}"))
    full, pruned, speed = result.extra["full"], result.extra["dropped"], result.extra["speed"]
    print(f"dropped {len(result.components)} units from {model.config.name}: {', '.join(result.components)}")
    print(f"  {'':<26}{'full':>12}{'dropped':>12}")
    for key in [k for k in full if isinstance(full[k], float)]:
        print(f"  {key:<26}{full[key]:>12.4f}{pruned[key]:>12.4f}")
    if speed:
        print(f"  generation tokens/s (median of {speed['repeats']}): full {speed['full_generation_tokens_per_s']:.1f}, "
              f"dropped {speed['dropped_generation_tokens_per_s']:.1f} -> {speed['generation_speedup']:.2f}x")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
