"""``interp bigram``: bigram subnetworks by continuous sparsification, with a lambda sweep.

    interp bigram --model smollm2-135m --lambda 10 --steps 600 --out runs/bigram

Writes ``result.json`` (kept fraction per weight matrix of the first lambda's subnetwork as
``scores`` over [layer, matrix]; per-lambda fit, ablations and stop reasons under ``extra``),
``arrays.npz``, one ``masks-lambda<value>.npz`` per lambda (parameter name -> boolean array) and
``bigram.html``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def add_command(subparsers) -> None:
    from circuits.bigram_subnetwork import TARGETS, SubnetworkConfig
    from interp.backends import BACKENDS

    defaults = SubnetworkConfig()
    p = subparsers.add_parser("bigram", help="bigram subnetwork: the minimal weights that make next-token-from-current-token predictions",
                              description="Continuous sparsification of every attention and MLP weight matrix towards "
                                          "the corpus bigram distribution (Chang & Bergen 2025). Defaults are the paper's "
                                          "(15k steps of 32 x 128 tokens): on a CPU use e.g. --steps 600 --batch-size 4 "
                                          "--seq-len 64 --lr 1e-3 --temperature-growth 1.01.")
    p.add_argument("--model", default="smollm2-135m", help="bundled name, toy model, HF folder, .gguf file or hub name")
    p.add_argument("--corpus", default="python-docs", help="python-docs (offline default) | toy-markov | file | folder | hf:<dataset>")
    p.add_argument("--lambda", dest="lambdas", type=float, nargs="+", default=[defaults.lam], metavar="LAMBDA",
                   help="sparsity weight(s); several values run a sweep (paper: 0 1 5 10 50 100 500 1000)")
    p.add_argument("--target", default="bigram", choices=list(TARGETS),
                   help="bigram: the corpus bigram distribution; model: the full model's own predictions (optimal pruning)")
    p.add_argument("--compare-optimal", action="store_true",
                   help="also train an optimal-pruning mask at the first lambda and report its overlap with the subnetwork")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="chunks per step")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len, help="tokens per chunk")
    p.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate of the mask scores")
    p.add_argument("--temperature-growth", type=float, default=defaults.temperature_growth)
    p.add_argument("--max-epochs", type=int, default=defaults.max_epochs, help="passes over the corpus the steps may take")
    p.add_argument("--max-restarts", type=int, default=defaults.max_restarts, help="restarts after a diverging loss")
    p.add_argument("--held-out", type=float, default=0.1, help="fraction of corpus documents held out for evaluation")
    p.add_argument("--held-out-chunks", type=int, default=32, help="held-out chunks for r, ablations and residual maps")
    p.add_argument("--permutations", type=int, default=20, help="row-shuffle permutations for the overlap null")
    p.add_argument("--no-residual", action="store_true", help="skip the per-layer residual-stream ridge maps")
    p.add_argument("--backend", default="nnsight", choices=list(BACKENDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/bigram")
    p.set_defaults(func=_run_bigram)


def _config(args: argparse.Namespace, lam: float, target: str):
    from circuits.bigram_subnetwork import SubnetworkConfig

    return SubnetworkConfig(lam=lam, target=target, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                            lr=args.lr, temperature_growth=args.temperature_growth, max_epochs=args.max_epochs,
                            max_restarts=args.max_restarts, seed=args.seed).validate()


def _run_bigram(args: argparse.Namespace) -> int:
    from circuits.bigram_subnetwork import BigramTarget, FullModelTarget, train_subnetwork
    from circuits.bigram_table import BigramTable
    from circuits.subnetwork_evaluation import (ablation_table, kept_by_layer, kept_by_matrix, mask_overlap,
                                                residual_maps, surprisal_pairs)
    from circuits.weight_masks import maskable_matrices, save_masks
    from interp.corpus import load_corpus
    from interp.loading import load_model
    from interp.ui.figures import bigram_figures, write_figures
    from interp.results import Result

    configs = [_config(args, lam, args.target) for lam in args.lambdas]  # bad settings fail before loading anything
    start = time.perf_counter()
    print(f"loading {args.model} ({args.backend}) ...", file=sys.stderr)
    model = load_model(args.model, backend=args.backend, device=args.device)
    matrices = maskable_matrices(model)
    train, held_out = load_corpus(args.corpus).split(held_out=args.held_out, seed=args.seed)
    table = BigramTable.from_corpus(train, model.tokenizer, vocab_size=model.config.d_vocab)
    chunks = train.token_chunks(model.tokenizer, args.seq_len, seed=args.seed)
    held = held_out.token_chunks(model.tokenizer, args.seq_len, seed=args.seed)[:args.held_out_chunks]
    n_maskable = sum(m.numel for m in matrices)
    print(f"{table}; {len(chunks)} training chunks, {len(held)} held-out chunks; {len(matrices)} matrices, "
          f"{n_maskable:,} maskable weights", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = BigramTarget(table) if args.target == "bigram" else FullModelTarget()
    sweep, trained_runs = [], []
    for config in configs:
        trained = train_subnetwork(model, chunks, target, config, log=lambda line: print(line, file=sys.stderr))
        ablations = ablation_table(model, held, table, trained.masks, seed=args.seed)
        save_masks(trained.masks, out / f"masks-lambda{config.lam:g}.npz")
        sweep.append({"lambda": config.lam, **trained.summary(), "ablations": ablations})
        trained_runs.append(trained)
        _print_sweep_row(sweep[-1])
    first = trained_runs[0]
    matrix_types = list(dict.fromkeys(m.matrix for m in matrices))
    n_layers = model.config.n_layers
    kept_grid = np.full((n_layers, len(matrix_types)), np.nan)
    for m in matrices:
        kept_grid[m.layer, matrix_types.index(m.matrix)] = float(first.masks[m.name].float().mean())
    pairs = surprisal_pairs(model, held, table, first.masks)
    sample = np.random.default_rng(args.seed).permutation(len(pairs["model"]))[:3000]
    arrays = {
        "kept_by_layer": np.stack([kept_by_layer(matrices, t.masks, n_layers) for t in trained_runs]),
        "kept_by_matrix": np.array([list(kept_by_matrix(matrices, t.masks).values()) for t in trained_runs]),
        "lambdas": np.array(args.lambdas, dtype=np.float64),
        "subnetwork_surprisal": pairs["model"][sample], "bigram_surprisal": pairs["bigram"][sample],
        **{f"history_{k}": v for k, v in first.history.items()},
    }
    extra = {"sweep": sweep, "matrix_types": matrix_types, "matrices": [m.label for m in matrices],
             "n_maskable": n_maskable, "table": {"pairs": table.n_pairs, "tokens": int(table.next_counts.sum())}}
    if not args.no_residual:
        full_maps = residual_maps(model, held, seed=args.seed)
        sub_maps = residual_maps(model, held, first.masks, seed=args.seed)
        arrays["residual_to_final"] = np.stack([full_maps["to_final"], sub_maps["to_final"]])
        arrays["residual_to_embedding"] = np.stack([full_maps["to_embedding"], sub_maps["to_embedding"]])
    if args.compare_optimal:
        optimal = train_subnetwork(model, chunks, FullModelTarget(), _config(args, configs[0].lam, "model"),
                                   log=lambda line: print(line, file=sys.stderr))
        save_masks(optimal.masks, out / f"masks-optimal-lambda{configs[0].lam:g}.npz")
        extra["optimal_pruning"] = {**optimal.summary(),
                                    "overlap": mask_overlap(first.masks, optimal.masks, args.permutations, args.seed)}
    result = Result(
        method="bigram" if args.target == "bigram" else "optimal-pruning", model=model.config.name, task=args.corpus,
        metric="kept fraction", granularity="weights",
        components=[f"L{layer}.{t}" for layer in range(n_layers) for t in matrix_types],
        scores=np.nan_to_num(kept_grid.ravel()), shape=[n_layers, len(matrix_types)], axes=["layer", "matrix"],
        wall_seconds=time.perf_counter() - start, n_forward_passes=sum(t.steps_run for t in trained_runs),
        n_backward_passes=sum(t.steps_run for t in trained_runs),
        settings={"corpus": args.corpus, "held_out": args.held_out, "held_out_chunks": len(held), "backend": args.backend,
                  "seed": args.seed, "config": first.summary()["config"], "lambdas": list(args.lambdas)},
        arrays=arrays, extra=extra,
    )
    result.save(out)
    write_figures(out / "bigram.html", bigram_figures(result), f"bigram subnetwork · {result.model}")
    _print_summary(result)
    print(f"wrote {out / 'result.json'}, {out / 'bigram.html'} and the masks in {out}")
    return 0


def _print_sweep_row(row: dict) -> None:
    sub = row["ablations"]["subnetwork"]
    print(f"lambda {row['lambda']:g}: kept {row['kept_fraction']:.4%} of maskable weights, r = {sub['r']:.3f} "
          f"(smoothed {sub['r_smoothed']:.3f}), CE to bigram {sub['cross_entropy_to_bigram']:.3f} nats; "
          f"{row['stop_reason']}" + (f" after {row['restarts']} restart(s)" if row["restarts"] else ""))


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
