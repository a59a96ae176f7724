"""``interp sae train|eval`` and ``interp transcoder train|eval|circuit``: sparse dictionaries on a
model's activations, from the offline corpus, and attribution graphs through transcoders.

    interp sae train --model smollm2-135m --site L6.RESID_POST --architecture topk --k 32 --out runs/sae-l6
    interp transcoder train --model smollm2-135m --layer 6 --architecture topk --k 32 --out runs/tc-l6
    interp sae eval --dictionary runs/sae-l6/dictionary --model smollm2-135m --out runs/sae-l6-eval

A training run folder holds ``dictionary/`` (SAELens format: ``cfg.json``, ``sae_weights.safetensors``),
``result.json`` (per-latent log10 firing frequency as ``scores``; training summary and held-out
metrics under ``extra``), ``arrays.npz`` and ``dictionary.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from circuits.dictionary_analysis import DictionaryEvalConfig, DictionaryTrainingConfig, FeatureGraphConfig
from interp.analysis import CorpusOptions
from interp.ui.flags import add_config_flags, add_model_flags, config_from_args, load, save_run, subcommand


def add_commands(subparsers) -> None:
    for kind in ("sae", "transcoder"):
        top = subparsers.add_parser(kind, help=f"{'sparse autoencoders' if kind == 'sae' else 'transcoders'}: train or evaluate")
        commands = top.add_subparsers(dest="action", required=True)
        what = "an SAE" if kind == "sae" else "a transcoder"
        train = subcommand(commands, "train", f"train {what} on the offline corpus",
                           f"Train {what} on the model's activations over the corpus; evaluate it on held-out text.")
        add_model_flags(train)
        add_config_flags(train, CorpusOptions, group="text")
        if kind == "sae":
            add_config_flags(train, DictionaryTrainingConfig, group="analysis", skip=("kind",))
        else:
            group = train.add_argument_group("transcoder")
            group.add_argument("--layer", type=int, required=True, help="the MLP the transcoder replaces")
            group.add_argument("--skip", action="store_true", help="skip transcoder: add a linear skip term x W_skip")
            add_config_flags(train, DictionaryTrainingConfig, group="analysis", skip=("kind", "site"))
        train.add_argument("--out", default=None, help="run folder (default runs/sae-<site> or runs/tc-<site>)")
        train.set_defaults(func=_run_train, dictionary_kind=kind)

        evaluate = subcommand(commands, "eval", "held-out metrics of a saved dictionary (interp or SAELens format)",
                              "Held-out metrics of a saved dictionary spliced into the model.")
        evaluate.add_argument("--dictionary", required=True, help="folder with cfg.json and sae_weights.safetensors")
        add_model_flags(evaluate)
        add_config_flags(evaluate, CorpusOptions, group="text")
        add_config_flags(evaluate, DictionaryEvalConfig, group="analysis")
        evaluate.add_argument("--out", default=None, help="run folder (default <dictionary>-eval)")
        evaluate.set_defaults(func=_run_eval, dictionary_kind=kind)
        if kind == "transcoder":
            circuit = subcommand(commands, "circuit", "attribution graph of a logit difference or a feature on one prompt",
                                 "The pruned attribution graph of a target through transcoders (one per layer) on one "
                                 "prompt. Attribution graphs freeze attention patterns, which needs TransformerLens' "
                                 "bridge: --backend defaults to transformer_lens here.")
            circuit.add_argument("--transcoders", nargs="+", required=True, help="transcoder folders (one per layer)")
            circuit.add_argument("--prompt", required=True)
            add_model_flags(circuit, defaults={"backend": "transformer_lens"})
            add_config_flags(circuit, FeatureGraphConfig, group="analysis")
            circuit.add_argument("--out", default="runs/transcoder-circuit", help="run folder")
            circuit.set_defaults(func=_run_circuit)


def _run_train(args: argparse.Namespace) -> int:
    from circuits.dictionary_analysis import run_training

    fixed = {"kind": "sae"} if args.dictionary_kind == "sae" else {
        "site": f"L{args.layer}.MLP", "kind": "skip_transcoder" if args.skip else "transcoder"}
    config = config_from_args(DictionaryTrainingConfig, args, **fixed)
    corpus = config_from_args(CorpusOptions, args).load()
    result = run_training(load(args), corpus, config)
    site = config.site.upper()
    out = Path(args.out or f"runs/{'sae' if config.kind == 'sae' else 'tc'}-{site.lower().replace('.', '-')}")
    written = save_run(result, out)
    _print_metrics(result.extra["metrics"], result.settings.get("tokens_per_second"))
    print(f"wrote {', '.join(str(p) for p in written)} (the dictionary in SAELens format)")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from circuits.dictionary_analysis import run_evaluation
    from circuits.dictionary_io import load_dictionary

    config = config_from_args(DictionaryEvalConfig, args)
    dictionary = load_dictionary(args.dictionary)
    corpus = config_from_args(CorpusOptions, args).load()
    result = run_evaluation(load(args), dictionary, corpus, config, source=str(args.dictionary))
    written = save_run(result, Path(args.out or f"{str(args.dictionary).rstrip('/')}-eval"))
    _print_metrics(result.extra["metrics"], None)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _run_circuit(args: argparse.Namespace) -> int:
    from circuits.dictionary_analysis import run_feature_graph
    from circuits.dictionary_io import load_dictionary
    from interp.components import Component

    config = config_from_args(FeatureGraphConfig, args)
    transcoders = {}
    for folder in args.transcoders:
        dictionary = load_dictionary(folder)
        if not dictionary.config.site:
            raise ValueError(f"{folder} names no site; it must be a transcoder trained by interp or name its hook")
        layer = Component.parse(dictionary.config.site).layer
        if layer in transcoders:
            raise ValueError(f"two transcoders for layer {layer} ({folder})")
        transcoders[layer] = dictionary
    result = run_feature_graph(load(args), transcoders, args.prompt, config, sources=list(args.transcoders))
    graph = result.documents["graph.json"]
    written = save_run(result, Path(args.out))
    print(f"{graph['target']} = {graph['target_value']:.4f}; {len(graph['nodes'])} nodes, {len(graph['edges'])} edges "
          f"(of {graph['n_candidates']} candidate features and {graph['n_candidate_heads']} heads) in {result.wall_seconds:.1f} s")
    for kind, label in (("feature", "activation"), ("head", "o.dT/do")):
        ranked = sorted((n for n in graph["nodes"] if n["kind"] == kind), key=lambda n: -abs(n["influence"]))
        for node in ranked[:10]:
            shown = node["activation"] if kind == "feature" else node["value"]
            print(f"  {node['id']:<20} {label} {shown:+.3f}  influence {node['influence']:.3f}  "
                  f"direct attribution {node['attribution']:+.4f}")
    print(f"wrote {', '.join(str(p) for p in written)} (the app's Features page opens it)")
    return 0


def _print_metrics(metrics: dict, tokens_per_second: float | None) -> None:
    print(f"{metrics['kind']} {metrics['architecture']} at {metrics['site']} on {metrics['n_tokens']:,} held-out tokens:")
    print(f"  L0 {metrics['l0']:.1f}   explained variance {metrics['explained_variance']:.4f}   "
          f"dead {metrics['dead_fraction']:.3f}   dense {metrics['dense_fraction']:.3f}")
    print(f"  CE clean {metrics['ce_clean']:.4f}   spliced {metrics['ce_spliced']:.4f}   zero-ablated {metrics['ce_zero_ablation']:.4f}"
          f"   CE recovered {metrics['ce_recovered']:.4f}   KL to clean {metrics['kl_to_clean']:.4f}")
    if tokens_per_second:
        print(f"  training throughput {tokens_per_second:,.0f} tokens/s (activations and dictionary step together)")
