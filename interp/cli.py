"""The ``interp`` command line. Every subcommand writes a run folder and prints where it is.

    interp patch --model smollm2-135m --task ioi --n-prompts 16 --granularity heads \
        --method exact --direction noising --out runs/ioi-heads
    interp patch --method atp* --granularity heads_pos --verify-top 20 --diagnose
    interp redundancy --model smollm2-135m --out runs/redundancy
    interp drop --model smollm2-135m --attn 8 --out runs/drop-attn8
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from interp.cli_bigram import add_command as add_bigram_command
from interp.cli_edges import add_command as add_edges_command
from interp.cli_probe import add_command as add_probe_command
from interp.cli_dictionaries import add_commands as add_dictionary_commands
from interp.cli_redundancy import add_commands as add_redundancy_commands
from interp.components import GRANULARITIES

# Errors that are the user's input, reported as one line (never a traceback).
_USER_ERRORS = (ValueError, FileNotFoundError, NotImplementedError, KeyError)  # DictionaryError, EdgeError, ... are ValueErrors


def _add_patch(subparsers) -> None:
    from interp.backends import BACKENDS
    from interp.metrics import METRICS
    from interp.corruption import CORRUPTIONS, DIRECTIONS

    p = subparsers.add_parser("patch", help="activation patching sweep over one granularity",
                              description="Activation patching: the effect of each component on the task's metric.")
    p.add_argument("--model", default="smollm2-135m", help="bundled name, toy model, HF folder, .gguf file or hub name")
    p.add_argument("--task", default="ioi", help="ioi | capitals | greater_than | induction | path.jsonl")
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--granularity", default="heads", choices=list(GRANULARITIES))
    p.add_argument("--method", default="exact", choices=["exact", "atp", "atp*"],
                   help="exact patching, or attribution patching (AtP; AtP* = QK fix + GradDrop)")
    p.add_argument("--grad-drop", default="block", choices=["block", "sublayer"], help="AtP*: GradDrop unit")
    p.add_argument("--verify-top", type=int, default=0, metavar="K", help="AtP/AtP*: exactly patch the K top-ranked components")
    p.add_argument("--diagnose", action="store_true", help="AtP/AtP*: bound the effect of unverified components")
    p.add_argument("--diagnose-samples", type=int, default=256)
    p.add_argument("--diagnose-p", type=float, default=0.1, help="inclusion probability per component and sample")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--direction", default="noising", choices=list(DIRECTIONS))
    p.add_argument("--corruption", default="tokens", choices=list(CORRUPTIONS))
    p.add_argument("--metric", default="logit_diff", choices=list(METRICS))
    p.add_argument("--backend", default="transformer_lens", choices=list(BACKENDS))
    p.add_argument("--layers", default=None, help="comma-separated layers to sweep (default all)")
    p.add_argument("--components", default=None,
                   help="comma-separated components to patch instead of a granularity, e.g. L9.H6@13,L3.TC.1234@13")
    p.add_argument("--dictionary", action="append", default=[], metavar="FOLDER",
                   help="splice this SAE/transcoder folder in (repeatable); its latents become components L<layer>.SAE.<i> / "
                        "L<layer>.TC.<i> (granularities features, features_pos) and its error term L<layer>.SAE_ERR / TC_ERR")
    p.add_argument("--no-error-term", action="store_true",
                   help="splice dictionaries without their error term (the model then runs on reconstructions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None, help="patched variants per forward (default: from --memory-mb)")
    p.add_argument("--memory-mb", type=float, default=2048, help="memory budget for one batched forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="run folder (default runs/<task>-<granularity>)")
    p.set_defaults(func=_run_patch)


def _run_patch(args: argparse.Namespace) -> int:
    from interp.loading import load_model
    from interp.patching import activation_patching
    from interp.plotting import result_heatmap
    from interp.tasks import get_task

    if args.n_prompts < 1:
        raise ValueError(f"--n-prompts must be at least 1, got {args.n_prompts}")
    layers = None
    if args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",")]
        except ValueError:
            raise ValueError(f"--layers must be comma-separated integers, got {args.layers!r}") from None
    suffix = "" if args.method == "exact" else "-" + args.method.replace("*", "star")
    out = Path(args.out or f"runs/{Path(args.task).stem}-{args.granularity}{suffix}")
    components = [c for c in args.components.split(",") if c.strip()] if args.components else None
    print(f"loading {args.model} ({args.backend}) ...", file=sys.stderr)
    model = load_model(args.model, backend=args.backend, device=args.device)
    task = get_task(model, args.task, n_prompts=args.n_prompts, seed=args.seed)
    if args.method == "exact" and (args.verify_top or args.diagnose):
        raise ValueError("--verify-top and --diagnose check an AtP/AtP* ranking; use them with --method atp or atp*")
    with ExitStack() as stack:
        for folder in args.dictionary:
            stack.enter_context(_spliced_folder(model, folder, not args.no_error_term))
        if args.method == "exact":
            result = activation_patching(
                model, task, args.granularity, direction=args.direction, metric=args.metric, corruption=args.corruption,
                seed=args.seed, layers=layers, batch_size=args.batch_size, memory_budget_mb=args.memory_mb,
                components=components,
            )
        else:
            result = _attribution(args, model, task, layers, components)
    if args.dictionary:
        result.settings.update(dictionaries=[str(Path(f).resolve()) for f in args.dictionary], error_term=not args.no_error_term)
    result.save(out)
    result_heatmap(result).write_html(out / "heatmap.html", include_plotlyjs=True)
    print(f"{result.method} patching, {args.granularity}, {task.name} on {model.config.name}: "
          f"clean {args.metric} {result.clean_metric:.3f}, corrupt {result.corrupt_metric:.3f}, "
          f"{result.n_forward_passes} forward + {result.n_backward_passes} backward passes, {result.wall_seconds:.1f} s")
    _print_top(result)
    print(f"wrote {out / 'result.json'} and {out / 'heatmap.html'}")
    return 0


def _spliced_folder(model, folder: str, error_term: bool):
    """Context in which ``model`` runs with the dictionary saved in ``folder`` spliced in."""
    from circuits.dictionary_evaluation import spliced
    from circuits.dictionary_io import load_dictionary

    dictionary = load_dictionary(folder)
    print(f"splicing {dictionary.config.kind} {folder} at {dictionary.config.site} ({dictionary.config.d_sae} latents"
          f"{', with its error term' if error_term else ', no error term'})", file=sys.stderr)
    return spliced(model, dictionary, error_term=error_term)


def _attribution(args: argparse.Namespace, model, task, layers, components):
    from interp.attribution import attribution_patching, diagnose, verify_top

    result = attribution_patching(
        model, task, args.granularity, method=args.method, grad_drop=args.grad_drop if args.method == "atp*" else False,
        direction=args.direction, metric=args.metric, corruption=args.corruption, seed=args.seed, layers=layers,
        batch_size=args.batch_size, components=components,
    )
    if args.verify_top:
        verify_top(model, task, result, args.verify_top)
        check = result.extra["verification"]
        print(f"verified the top {check['k']} exactly ({check['forward_passes']} forward passes, {check['seconds']:.1f} s): "
              f"largest |estimate - exact| {check['max_abs_error']:.4f}")
    if args.diagnose:
        diagnose(model, task, result, samples=args.diagnose_samples, p=args.diagnose_p, confidence=args.confidence,
                 seed=args.seed)
        bound = result.extra["diagnostic"]
        print(f"diagnostic: no unverified component has |effect| above {bound['bound']:.4f} (normalized) at "
              f"{bound['confidence']:.0%} confidence (largest: {bound['component']}; {bound['samples']} samples; "
              f"{bound['n_without_enough_samples']} of {bound['n_unverified']} components sampled too rarely to bound; "
              "assumes jointly patched effects add)")
    return result


def _print_top(result) -> None:
    exact = result.arrays.get("exact")
    print("top components (normalized effect" + (", exact where verified):" if exact is not None else "):"))
    for i in result.ranking()[:10]:
        line = f"  {result.components[i]:<16} {result.scores[i]:+.4f}"
        if exact is not None and not np.isnan(exact[i]):
            line += f"   exact {exact[i]:+.4f}"
        print(line)


def _add_app(subparsers) -> None:
    p = subparsers.add_parser("app", help="open the Streamlit circuit explorer on a runs folder",
                              description="Serve the circuit explorer (app/Home.py) on localhost.")
    p.add_argument("--runs", default="runs", help="folder whose run folders the app lists")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--model", default=None, help="model for the live pages (default smollm2-135m)")
    p.set_defaults(func=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    import os
    import subprocess
    from pathlib import Path

    import app

    home = Path(app.__file__).resolve().parent / "Home.py"
    env = {**os.environ, "INTERP_RUNS_DIR": str(Path(args.runs).resolve())}
    if args.model:
        env["INTERP_APP_MODEL"] = args.model
    print(f"serving {home} on http://localhost:{args.port} (runs from {env['INTERP_RUNS_DIR']}); Ctrl-C stops it")
    return subprocess.call([sys.executable, "-m", "streamlit", "run", str(home), "--server.port", str(args.port),
                            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"], env=env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description="Mechanistic interpretability toolkit.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_patch(subparsers)
    add_redundancy_commands(subparsers)
    add_bigram_command(subparsers)
    add_edges_command(subparsers)
    add_dictionary_commands(subparsers)
    add_probe_command(subparsers)
    _add_app(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"interp: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interp: interrupted; no result was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
