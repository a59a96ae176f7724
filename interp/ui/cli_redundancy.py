"""``interp redundancy`` (importance scores + pruning curves) and ``interp drop`` (one pruned
configuration against the intact model).

    interp redundancy --model smollm2-135m --out runs/redundancy
    interp drop --model smollm2-135m --attn 8 --out runs/drop-attn8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _add_common(p: argparse.ArgumentParser) -> None:
    from interp.backends import BACKENDS
    from interp.redundancy import DIVERGENCES

    p.add_argument("--model", default="smollm2-135m", help="bundled name, toy model, HF folder, .gguf file or hub name")
    p.add_argument("--corpus", default="python-docs", help="python-docs (offline default) | file | folder | hf:<dataset>")
    p.add_argument("--chunk-length", type=int, default=128, help="tokens per calibration/held-out chunk")
    p.add_argument("--calibration-chunks", type=int, default=4)
    p.add_argument("--held-out-chunks", type=int, default=8)
    p.add_argument("--skip-first", type=int, default=0, help="tokens at the start of each chunk left out of similarity (1 = BOS)")
    p.add_argument("--last-token", action="store_true", help="similarity at the last token of each chunk only")
    p.add_argument("--divergence", default="kl", choices=list(DIVERGENCES),
                   help="output change for ablation/greedy: kl = KL(P_full || P_dropped); js = Jensen-Shannon")
    p.add_argument("--task-prompts", type=int, default=32, help="prompts per task (ioi, capitals, greater_than)")
    p.add_argument("--gen-tokens", type=int, default=32, help="new tokens per generation-speed measurement")
    p.add_argument("--backend", default="nnsight", choices=list(BACKENDS),
                   help="nnsight (default) runs the plain Hugging Face modules, so speeds are the model's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="chunks per forward")
    p.add_argument("--device", default="cpu")


def add_commands(subparsers) -> None:
    from interp.pruning import DROP_METHODS

    p = subparsers.add_parser("redundancy", help="layer importance scores and pruning curves",
                              description="Similarity and ablation importance of every attention sublayer, MLP "
                                          "sublayer and block, and pruning curves per drop method.")
    _add_common(p)
    p.add_argument("--max-drop", type=int, default=None, metavar="K", help="curves for k = 0..K (default n_layers // 3)")
    p.add_argument("--methods", default=",".join(DROP_METHODS), help=f"comma-separated, from {', '.join(DROP_METHODS)}")
    p.add_argument("--random-seeds", type=int, default=3)
    p.add_argument("--no-ablation", action="store_true", help="skip the one-forward-per-unit ablation scores")
    p.add_argument("--no-curves", action="store_true", help="importance scores only")
    p.add_argument("--out", default="runs/redundancy")
    p.set_defaults(func=_run_redundancy)

    d = subparsers.add_parser("drop", help="evaluate the model with chosen layers dropped",
                              description="Drop the k most redundant attention/MLP sublayers or blocks (or named units) "
                                          "and compare perplexity, task accuracy and generation speed with the intact model.")
    _add_common(d)
    for flag, what in (("attn", "attention sublayers, by similarity"), ("mlp", "MLP sublayers, by similarity"),
                       ("blocks", "blocks, by similarity"), ("joint", "attention or MLP sublayers ranked together"),
                       ("greedy", "sublayers chosen by FinerCut's greedy search"), ("random", "random attention sublayers")):
        d.add_argument(f"--{flag}", type=int, default=0, metavar="K", help=f"drop K {what}")
    d.add_argument("--iterative", action="store_true", help="--attn re-scores after each drop")
    d.add_argument("--units", default="", help="comma-separated units to drop as well, e.g. L20.ATTN,L21.MLP,L5.BLOCK")
    d.add_argument("--repeats", type=int, default=3, help="generation timings per model (median)")
    d.add_argument("--out", default=None, help="run folder (default runs/drop-<selection>)")
    d.set_defaults(func=_run_drop)


def _prepare(args: argparse.Namespace):
    """Model, calibration tokens, evaluation set and scoring options from the common flags."""
    from interp.corpus import load_corpus
    from interp.loading import load_model
    from interp.pruning import EvaluationSet, ScoringOptions

    for flag in ("chunk_length", "calibration_chunks", "held_out_chunks", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    print(f"loading {args.model} ({args.backend}) ...", file=sys.stderr)
    model = load_model(args.model, backend=args.backend, device=args.device)
    calibration, held_out = load_corpus(args.corpus).split(held_out=0.2, seed=args.seed)
    tokens = calibration.token_chunks(model.tokenizer, args.chunk_length, args.calibration_chunks, seed=args.seed).to(model.device)
    held = held_out.token_chunks(model.tokenizer, args.chunk_length, args.held_out_chunks, seed=args.seed).to(model.device)
    evaluation = EvaluationSet.build(model, held, n_prompts=args.task_prompts, new_tokens=args.gen_tokens,
                                     seed=args.seed, batch_size=args.batch_size)
    options = ScoringOptions(args.skip_first, args.last_token, args.divergence, args.batch_size)
    return model, tokens, evaluation, options


def _settings(args: argparse.Namespace, tokens) -> dict:
    return {"corpus": args.corpus, "chunk_length": args.chunk_length, "calibration_tokens": int(tokens.numel()),
            "held_out_chunks": args.held_out_chunks, "skip_first": args.skip_first, "last_token_only": args.last_token,
            "divergence": args.divergence, "task_prompts": args.task_prompts, "gen_tokens": args.gen_tokens,
            "backend": args.backend, "seed": args.seed, "unit_kinds": ["attn", "mlp", "block"]}


def _run_redundancy(args: argparse.Namespace) -> int:
    from interp.layer_dropping import DropError
    from interp.ui.figures import importance_figure, pruning_curves_figure, write_figures
    from interp.pruning import candidate_units, findings, pruning_curves
    from interp.redundancy import ablation_scores
    from interp.results import Result

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    start = time.perf_counter()
    model, tokens, evaluation, options = _prepare(args)
    n_layers = model.config.n_layers
    max_k = n_layers // 3 if args.max_drop is None else args.max_drop
    if not 0 <= max_k <= n_layers:
        raise DropError(f"--max-drop {max_k} is out of range: {model.config.name} has {n_layers} layers")
    for method in methods:
        candidate_units(model.config, method)
    scores = options.similarity(model, tokens, progress=True)
    arrays = {"cos": scores.cos, "angular": scores.angular}
    n_forward = scores.n_forward_passes
    if not args.no_ablation:
        ablation = ablation_scores(model, tokens, scores.units, args.divergence, args.batch_size, progress=True)
        arrays["loss_change"] = ablation.loss - ablation.full_loss
        arrays["divergence"] = ablation.divergence
        n_forward += ablation.n_forward_passes
    curves = None
    if not args.no_curves and max_k > 0:
        curves = pruning_curves(model, tokens, evaluation, methods, max_k, options,
                                seeds=range(args.random_seeds), scores=scores)
    found = findings(scores, curves, n_layers)
    result = Result(
        method="redundancy", model=model.config.name, task=args.corpus, metric="1 - cos", granularity="units",
        components=[str(u) for u in scores.units], scores=scores.importance.astype(np.float64),
        shape=[3, n_layers], axes=["unit", "layer"], wall_seconds=time.perf_counter() - start,
        n_forward_passes=n_forward, settings={**_settings(args, tokens), "max_drop": max_k, "methods": methods},
        arrays=arrays, extra={"curves": curves, "findings": found, "n_similarity_tokens": scores.n_tokens},
    )
    out = Path(args.out)
    result.save(out)
    metrics = ("perplexity", "ioi_accuracy", "capitals_accuracy", "greater_than_accuracy") if curves else ()
    write_figures(out / "redundancy.html", [importance_figure(result)] + [pruning_curves_figure(curves, m) for m in metrics],
                  f"redundancy · {result.model}")
    _print_redundancy(result, found)
    print(f"wrote {out / 'result.json'} and {out / 'redundancy.html'}")
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
    from interp.layer_dropping import DropError, Unit
    from interp.pruning import drop_order, evaluate, speed_comparison
    from interp.results import Result

    selections = [("attn_iterative" if args.iterative else "attn", args.attn), ("mlp", args.mlp), ("block", args.blocks),
                  ("joint", args.joint), ("greedy", args.greedy), ("random", args.random)]
    named = [Unit.parse(u) for u in args.units.split(",") if u.strip()]
    if not named and not any(k for _, k in selections):
        raise DropError("nothing to drop: give --attn, --mlp, --blocks, --joint, --greedy, --random or --units")
    start = time.perf_counter()
    model, tokens, evaluation, options = _prepare(args)
    for unit in named:
        unit.validate(model.config)
    scores = options.similarity(model, tokens)
    units = list(named)
    for method, k in selections:
        if k:
            order = drop_order(model, method, k, tokens, options, scores=scores, seed=args.seed, progress=True)
            units += [u for u in order.units if u not in units]
    full = evaluate(model, [], evaluation, measure_speed=False)
    pruned = evaluate(model, units, evaluation, measure_speed=False)
    speed = speed_comparison(model, units, evaluation.prompts, args.gen_tokens, args.repeats) if args.gen_tokens else {}
    label = "-".join(f"{m}{k}" for m, k in selections if k) or "units"
    out = Path(args.out or f"runs/drop-{label}")
    result = Result(
        method="drop", model=model.config.name, task=args.corpus, metric="perplexity", granularity="units",
        components=[str(u) for u in units], scores=np.array([1 - scores.of(u) for u in units], dtype=np.float64),
        shape=[len(units)], axes=["unit"], wall_seconds=time.perf_counter() - start,
        settings={**_settings(args, tokens), "selections": {m: k for m, k in selections if k},
                  "named_units": [str(u) for u in named], "repeats": args.repeats},
        extra={"full": full, "dropped": pruned, "speed": speed},
    )
    result.save(out)
    print(f"dropped {len(units)} units from {model.config.name}: {', '.join(result.components)}")
    print(f"  {'':<26}{'full':>12}{'dropped':>12}")
    for key in [k for k in full if isinstance(full[k], float)]:
        print(f"  {key:<26}{full[key]:>12.4f}{pruned[key]:>12.4f}")
    if speed:
        print(f"  generation tokens/s (median of {speed['repeats']}): full {speed['full_generation_tokens_per_s']:.1f}, "
              f"dropped {speed['dropped_generation_tokens_per_s']:.1f} -> {speed['generation_speedup']:.2f}x")
    print(f"wrote {out / 'result.json'}")
    return 0
