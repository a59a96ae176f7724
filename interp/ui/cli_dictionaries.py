"""``interp sae train|eval`` and ``interp transcoder train|eval``: sparse dictionaries on a model's
activations, from the offline corpus.

    interp sae train --model smollm2-135m --site L6.RESID_POST --architecture topk --k 32 --out runs/sae-l6
    interp transcoder train --model smollm2-135m --layer 6 --architecture topk --k 32 --out runs/tc-l6
    interp sae eval --dictionary runs/sae-l6/dictionary --model smollm2-135m --out runs/sae-l6-eval

A training run folder holds ``dictionary/`` (SAELens format: ``cfg.json``, ``sae_weights.safetensors``),
``result.json`` (per-latent log10 firing frequency as ``scores``; training summary and held-out
metrics under ``extra``), ``arrays.npz`` and ``dictionary.html``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _add_training_flags(p: argparse.ArgumentParser, kind: str) -> None:
    from circuits.dictionary import ARCHITECTURES
    from interp.backends import BACKENDS

    p.add_argument("--model", default="smollm2-135m", help="bundled name, toy model, HF folder, .gguf file or hub name")
    if kind == "sae":
        p.add_argument("--site", required=True, help="what the SAE reads, e.g. L6.RESID_POST, L6.ATTN, L6.MLP")
        p.add_argument("--kind", default="sae", choices=["sae"], help=argparse.SUPPRESS)
    else:
        p.add_argument("--layer", type=int, required=True, help="the MLP the transcoder replaces")
        p.add_argument("--skip", action="store_true", help="skip transcoder: add a linear skip term x W_skip")
    p.add_argument("--architecture", default="topk", choices=list(ARCHITECTURES))
    p.add_argument("--expansion", type=int, default=8, help="d_sae = expansion x d_model (unless --d-sae)")
    p.add_argument("--d-sae", type=int, default=None)
    p.add_argument("--k", type=int, default=32, help="TopK/BatchTopK latents per token")
    p.add_argument("--l1", type=float, default=5.0, help="ReLU: decoder-norm-weighted L1 coefficient")
    p.add_argument("--l0", type=float, default=1.0, help="JumpReLU: L0 coefficient")
    p.add_argument("--sparsity-warmup", type=int, default=100, help="steps of linear warm-up of the sparsity coefficient")
    p.add_argument("--tokens", type=int, default=200_000, help="training tokens")
    p.add_argument("--batch-tokens", type=int, default=1024)
    p.add_argument("--buffer-tokens", type=int, default=16384, help="shuffling buffer (memory: tokens x (d_in + d_out) x 4 bytes)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--corpus", default="python-docs", help="python-docs (offline default) | file | folder | hf:<dataset>")
    p.add_argument("--chunk-length", type=int, default=128)
    p.add_argument("--eval-chunks", type=int, default=16, help="held-out chunks for the evaluation")
    p.add_argument("--backend", default="nnsight", choices=list(BACKENDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="run folder")


def add_commands(subparsers) -> None:
    for kind in ("sae", "transcoder"):
        top = subparsers.add_parser(kind, help=f"{'sparse autoencoders' if kind == 'sae' else 'transcoders'}: train or evaluate")
        commands = top.add_subparsers(dest="action", required=True)
        train = commands.add_parser("train", help=f"train a{'n SAE' if kind == 'sae' else ' transcoder'} on the offline corpus")
        _add_training_flags(train, kind)
        train.set_defaults(func=_run_train, dictionary_kind=kind)
        evaluate = commands.add_parser("eval", help="held-out metrics of a saved dictionary (interp or SAELens format)")
        evaluate.add_argument("--dictionary", required=True, help="folder with cfg.json and sae_weights.safetensors")
        evaluate.add_argument("--model", default="smollm2-135m")
        evaluate.add_argument("--site", default=None, help="override the site (default: the dictionary's own)")
        evaluate.add_argument("--corpus", default="python-docs")
        evaluate.add_argument("--chunk-length", type=int, default=128)
        evaluate.add_argument("--eval-chunks", type=int, default=16)
        evaluate.add_argument("--backend", default="nnsight")
        evaluate.add_argument("--seed", type=int, default=0)
        evaluate.add_argument("--out", default=None)
        evaluate.set_defaults(func=_run_eval, dictionary_kind=kind)
        if kind == "transcoder":
            circuit = commands.add_parser("circuit", help="attribution graph of a logit difference or a feature on one prompt")
            circuit.add_argument("--transcoders", nargs="+", required=True, help="transcoder folders (one per layer)")
            circuit.add_argument("--model", default="smollm2-135m")
            circuit.add_argument("--prompt", required=True)
            circuit.add_argument("--target", default=None,
                                 help="'ANSWER|WRONG' (logit difference of two single tokens at the last position, "
                                      "e.g. ' Mary| John') or a feature 'L6.TC.123@5'")
            circuit.add_argument("--max-features", type=int, default=64, help="candidate features (by attribution to the target)")
            circuit.add_argument("--max-heads", type=int, default=16,
                                 help="attention heads (head x destination position) made nodes, by |o . dT/do| (0: none)")
            circuit.add_argument("--no-freeze-norms", action="store_true",
                                 help="let gradients through the norms' scales (default: frozen, as in the transcoder paper)")
            circuit.add_argument("--node-threshold", type=float, default=0.8)
            circuit.add_argument("--edge-threshold", type=float, default=0.98)
            circuit.add_argument("--out", default="runs/transcoder-circuit")
            circuit.set_defaults(func=_run_circuit)


def _corpus_chunks(model, args):
    from interp.corpus import load_corpus

    train, held_out = load_corpus(args.corpus).split(held_out=0.1, seed=args.seed)
    held = held_out.token_chunks(model.tokenizer, args.chunk_length, args.eval_chunks, seed=args.seed)
    return train, held


def _run_train(args: argparse.Namespace) -> int:
    from circuits.activation_store import ActivationStore
    from circuits.dictionary import DictionaryConfig
    from circuits.dictionary_evaluation import evaluate_dictionary
    from circuits.dictionary_io import save_dictionary
    from circuits.dictionary_training import TrainingConfig, train_dictionary
    from interp.loading import load_model

    start = time.perf_counter()
    training = TrainingConfig(total_tokens=args.tokens, batch_tokens=args.batch_tokens, lr=args.lr, seed=args.seed).validate()
    print(f"loading {args.model} ({args.backend}) ...", file=sys.stderr)
    model = load_model(args.model, backend=args.backend, device=args.device)
    d_model = model.config.d_model
    if args.dictionary_kind == "sae":
        site, kind = args.site.upper(), "sae"
    else:
        site, kind = f"L{args.layer}.MLP", "skip_transcoder" if args.skip else "transcoder"
    config = DictionaryConfig(
        d_in=d_model, d_sae=args.d_sae or args.expansion * d_model, architecture=args.architecture, kind=kind, k=args.k,
        l1_coefficient=args.l1, l0_coefficient=args.l0, sparsity_warmup_steps=args.sparsity_warmup, site=site,
        model_name=model.config.name, seed=args.seed, dead_tokens=max(args.tokens // 10, args.batch_tokens),
    ).validate()
    train, held = _corpus_chunks(model, args)
    chunks = train.token_chunks(model.tokenizer, args.chunk_length, seed=args.seed)
    store = ActivationStore(model, site, "sae" if kind == "sae" else "transcoder", chunks, batch_tokens=args.batch_tokens,
                            buffer_tokens=args.buffer_tokens, seed=args.seed)
    print(f"{kind} {config.architecture} at {site}: d_in {config.d_in} -> d_sae {config.d_sae}; {training.steps} steps of "
          f"{args.batch_tokens} tokens; buffer {store.memory_bytes / 2**20:.0f} MiB", file=sys.stderr)
    trained = train_dictionary(iter(store), config, training, log=lambda line: print(line, file=sys.stderr))
    metrics = evaluate_dictionary(model, trained.dictionary, held)
    out = Path(args.out or f"runs/{'sae' if kind == 'sae' else 'tc'}-{site.lower().replace('.', '-')}")
    save_dictionary(trained.dictionary, out / "dictionary", extra={"training": trained.summary()})
    result = _result(model, trained.dictionary, metrics, time.perf_counter() - start,
                     {"training": trained.summary(), "buffer_bytes": store.memory_bytes},
                     {f"history_{k}": np.asarray(v) for k, v in trained.history.items()})
    result.save(out)
    _write_html(result, out)
    _print_metrics(metrics, trained.tokens_per_second)
    print(f"wrote {out / 'dictionary'} (SAELens format), {out / 'result.json'} and {out / 'dictionary.html'}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from circuits.dictionary_evaluation import evaluate_dictionary
    from circuits.dictionary_io import load_dictionary
    from interp.loading import load_model

    start = time.perf_counter()
    dictionary = load_dictionary(args.dictionary)
    print(f"loading {args.model} ({args.backend}) ...", file=sys.stderr)
    model = load_model(args.model, backend=args.backend)
    site = args.site or dictionary.config.site
    if not site:
        raise ValueError(f"{args.dictionary} names no site: give --site")
    dictionary.config.site = site
    _, held = _corpus_chunks(model, args)
    metrics = evaluate_dictionary(model, dictionary, held, site)
    out = Path(args.out or f"{str(args.dictionary).rstrip('/')}-eval")
    result = _result(model, dictionary, metrics, time.perf_counter() - start, {"dictionary": str(args.dictionary)}, {})
    result.save(out)
    _write_html(result, out)
    _print_metrics(metrics, None)
    print(f"wrote {out / 'result.json'}")
    return 0


def _parse_target(model, text: str):
    import re

    from circuits.transcoder_circuits import Target

    match = re.fullmatch(r"L(\d+)\.TC\.(\d+)@(\d+)", text.strip().upper())
    if match:
        return Target(feature=tuple(int(g) for g in match.groups()))
    if "|" not in text:
        raise ValueError(f"--target {text!r}: give 'ANSWER|WRONG' (two single tokens) or a feature like L6.TC.123@5")
    answer, wrong = text.split("|", 1)
    return Target(answer=model.to_single_token(answer), wrong=model.to_single_token(wrong))


def _run_circuit(args: argparse.Namespace) -> int:
    import json

    from circuits.dictionary_io import load_dictionary
    from circuits.transcoder_circuits import attribution_graph
    from interp.ui.circuit_figures import feature_graph_figure
    from interp.components import Component
    from interp.loading import load_model
    from interp.ui.figures import write_figures

    transcoders = {}
    for folder in args.transcoders:
        dictionary = load_dictionary(folder)
        if not dictionary.config.site:
            raise ValueError(f"{folder} names no site; it must be a transcoder trained by interp or name its hook")
        layer = Component.parse(dictionary.config.site).layer
        if layer in transcoders:
            raise ValueError(f"two transcoders for layer {layer} ({folder})")
        transcoders[layer] = dictionary
    print(f"loading {args.model} ...", file=sys.stderr)
    model = load_model(args.model, backend="transformer_lens")
    tokens = model.to_tokens(args.prompt)
    target = _parse_target(model, args.target) if args.target else None
    if target is None:
        raise ValueError("give --target")
    start = time.perf_counter()
    graph = attribution_graph(model, transcoders, tokens, target, args.max_features, args.node_threshold, args.edge_threshold,
                              max_heads=args.max_heads, freeze_norms=not args.no_freeze_norms)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph.json").write_text(json.dumps(graph, indent=1))
    write_figures(out / "graph.html", [feature_graph_figure(graph)], f"attribution graph · {graph['target']}")
    _graph_result(graph, args, seconds).save(out)
    print(f"{graph['target']} = {graph['target_value']:.4f}; {len(graph['nodes'])} nodes, {len(graph['edges'])} edges "
          f"(of {graph['n_candidates']} candidate features and {graph['n_candidate_heads']} heads) in {seconds:.1f} s")
    for kind, label in (("feature", "activation"), ("head", "o.dT/do")):
        ranked = sorted((n for n in graph["nodes"] if n["kind"] == kind), key=lambda n: -abs(n["influence"]))
        for node in ranked[:10]:
            shown = node["activation"] if kind == "feature" else node["value"]
            print(f"  {node['id']:<20} {label} {shown:+.3f}  influence {node['influence']:.3f}  "
                  f"direct attribution {node['attribution']:+.4f}")
    print(f"wrote {out / 'graph.json'}, {out / 'graph.html'} and {out / 'result.json'} (the app's Features page opens it)")
    return 0


def _graph_result(graph: dict, args: argparse.Namespace, seconds: float):
    """The run folder's result.json: one score per kept node (its influence on the target)."""
    from interp.results import Result

    nodes = [n for n in graph["nodes"] if n["kind"] != "target"]
    return Result(method="feature-graph", model=graph["model"], task=args.prompt, metric=graph["target"], granularity="nodes",
                  components=[n["id"] for n in nodes], scores=np.array([n["influence"] for n in nodes], dtype=np.float64),
                  shape=[len(nodes)], axes=["node"], wall_seconds=seconds, tokens=graph["tokens"],
                  settings={"transcoders": list(args.transcoders), "max_features": args.max_features, "max_heads": args.max_heads,
                            "node_threshold": args.node_threshold, "edge_threshold": args.edge_threshold,
                            "freeze_norms": graph["freeze_norms"]},
                  extra={"graph_file": "graph.json", "target_value": graph["target_value"]})


def _result(model, dictionary, metrics: dict, seconds: float, extra: dict, arrays: dict):
    from interp.results import Result

    c = dictionary.config
    tag = "SAE" if c.kind == "sae" else "TC"
    layer = c.site.split(".")[0]
    frequency = metrics["log10_frequency"]
    return Result(
        method=c.kind if c.kind == "sae" else "transcoder", model=model.config.name, task=c.site, metric="log10 firing frequency",
        granularity="latents", components=[f"{layer}.{tag}.{i}" for i in range(c.d_sae)], scores=frequency.astype(np.float64),
        shape=[c.d_sae], axes=["latent"], wall_seconds=seconds,
        settings={"config": c.to_dict()}, arrays={"log10_frequency": frequency, **arrays},
        extra={"metrics": {k: v for k, v in metrics.items() if k != "log10_frequency"}, **extra},
    )


def _write_html(result, out: Path) -> None:
    import plotly.graph_objects as go

    from interp.ui.figures import write_figures

    figures = [go.Figure(go.Histogram(x=result.arrays["log10_frequency"], nbinsx=50)).update_layout(
        title=f"latent density · {result.task} · {result.model}", xaxis_title="log10 firing frequency",
        yaxis_title="latents", template="plotly_white")]
    if "history_step" in result.arrays:
        for key in ("mse", "l0", "explained_variance", "dead_fraction"):
            figures.append(go.Figure(go.Scatter(x=result.arrays["history_step"], y=result.arrays[f"history_{key}"])).update_layout(
                title=key.replace("_", " "), xaxis_title="step", template="plotly_white", height=300))
    write_figures(out / "dictionary.html", figures, f"{result.method} · {result.task}")


def _print_metrics(metrics: dict, tokens_per_second: float | None) -> None:
    print(f"{metrics['kind']} {metrics['architecture']} at {metrics['site']} on {metrics['n_tokens']:,} held-out tokens:")
    print(f"  L0 {metrics['l0']:.1f}   explained variance {metrics['explained_variance']:.4f}   "
          f"dead {metrics['dead_fraction']:.3f}   dense {metrics['dense_fraction']:.3f}")
    print(f"  CE clean {metrics['ce_clean']:.4f}   spliced {metrics['ce_spliced']:.4f}   zero-ablated {metrics['ce_zero_ablation']:.4f}"
          f"   CE recovered {metrics['ce_recovered']:.4f}   KL to clean {metrics['kl_to_clean']:.4f}")
    if tokens_per_second:
        print(f"  training throughput {tokens_per_second:,.0f} tokens/s (activations and dictionary step together)")
