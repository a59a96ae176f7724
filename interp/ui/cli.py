"""The ``interp`` command line. Every subcommand writes a run folder and prints where it is.

    interp patch --model smollm2-135m --task ioi --n-prompts 16 --granularity heads \
        --method exact --direction noising --out runs/ioi-heads
    interp patch --method atp-star --granularity heads_pos --verify-top 20 --diagnose
    interp redundancy --model smollm2-135m --out runs/redundancy
    interp drop --model smollm2-135m --attn 8 --out runs/drop-attn8
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from interp.analysis import ANALYSES, CorpusOptions, Printed, TaskOptions, analysis_of
from interp.patching_analysis import PatchingConfig
from interp.ui import analyses  # noqa: F401  (registers every analysis)
from interp.ui.cli_bigram import add_command as add_bigram_command
from interp.ui.cli_edges import add_command as add_edges_command
from interp.ui.cli_probe import add_command as add_probe_command
from interp.ui.cli_dictionaries import add_commands as add_dictionary_commands
from interp.ui.cli_redundancy import add_commands as add_redundancy_commands
from interp.ui.flags import analysis_command, check_out, config_from_args, load, save_run, start_clock

# Errors that are the user's input, reported as one line (never a traceback).
_USER_ERRORS = (ValueError, FileNotFoundError, NotImplementedError, KeyError)  # DictionaryError, EdgeError, ... are ValueErrors


def _add_patch(subparsers) -> None:
    p = analysis_command(subparsers, "patch", "activation patching sweep over one granularity",
                         "Activation patching: the effect of each component on the task's metric.", PatchingConfig,
                         TaskOptions, _run_patch, out_help="run folder (default runs/<task>-<granularity>[-<method>])")
    p.add_argument("--dictionary", action="append", default=[], metavar="FOLDER",
                   help="splice this SAE/transcoder folder in (repeatable); its latents become components L<layer>.SAE.<i> / "
                        "L<layer>.TC.<i> (granularities features, features_pos) and its error term L<layer>.SAE_ERR / TC_ERR")
    p.add_argument("--no-error-term", action="store_true",
                   help="splice dictionaries without their error term (the model then runs on reconstructions)")


def _run_patch(args: argparse.Namespace) -> int:
    from interp.patching_analysis import run_patching

    config = config_from_args(PatchingConfig, args)
    inputs = config_from_args(TaskOptions, args)
    suffix = "" if config.method == "exact" else "-" + config.method.replace("*", "star")
    out = Path(args.out or f"runs/{Path(inputs.task).stem}-{config.granularity}{suffix}")
    model = load(args)
    task = inputs.build(model, seed=config.seed)
    with ExitStack() as stack:
        for folder in args.dictionary:
            stack.enter_context(_spliced_folder(model, folder, not args.no_error_term))
        result = run_patching(model, task, config)
    if args.dictionary:
        result.settings.update(dictionaries=[str(Path(f).resolve()) for f in args.dictionary], error_term=not args.no_error_term)
    written = save_run(result, out)
    baseline = "corrupt" if config.corruption in ("tokens", "gaussian") else f"{config.corruption}-ablated"
    print(f"{result.method} patching, {config.granularity}, {task.name} on {model.config.name}: "
          f"clean {config.metric} {result.clean_metric:.3f}, {baseline} {result.corrupt_metric:.3f}, "
          f"{result.n_forward_passes} forward + {result.n_backward_passes} backward passes, {result.wall_seconds:.1f} s")
    check = result.extra.get("verification")
    if check:
        print(f"verified the top {check['k']} exactly ({check['forward_passes']} forward passes, {check['seconds']:.1f} s): "
              f"largest |estimate - exact| {check['max_abs_error']:.4f}")
    bound = result.extra.get("diagnostic")
    if bound:
        print(f"diagnostic: no unverified component has |effect| above {bound['bound']:.4f} (normalized) at "
              f"{bound['confidence']:.0%} confidence (largest: {bound['component']}; {bound['samples']} samples; "
              f"{bound['n_without_enough_samples']} of {bound['n_unverified']} components sampled too rarely to bound; "
              "assumes jointly patched effects add)")
    _print_top(result)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _spliced_folder(model, folder: str, error_term: bool):
    """Context in which ``model`` runs with the dictionary saved in ``folder`` spliced in."""
    from circuits.dictionary_evaluation import spliced
    from circuits.dictionary_io import load_dictionary

    dictionary = load_dictionary(folder)
    print(f"splicing {dictionary.config.kind} {folder} at {dictionary.config.site} ({dictionary.config.d_sae} latents"
          f"{', with its error term' if error_term else ', no error term'})", file=sys.stderr)
    return spliced(model, dictionary, error_term=error_term)


def _print_top(result) -> None:
    """The ten most important components, or every row in order where the analysis' result is
    over an ordered axis, as its :class:`~interp.analysis.Printed` says."""
    analysis = analysis_of(result)
    printed = analysis.printed if analysis is not None else Printed()
    exact = result.arrays.get("exact")
    beside = [(label, result.arrays[name]) for name, label in printed.beside if name in result.arrays]
    ordered = printed.ordered
    unit = printed.unit.format(metric=result.metric)
    print((f"per {result.axes[0]} (" if ordered else "top components (") + unit
          + (", exact where verified):" if exact is not None else "):"))
    for i in (range(len(result.components)) if ordered else result.ranking()[:10]):
        line = f"  {result.components[i]:<16} {result.scores[i]:+.4f}"
        if exact is not None and not np.isnan(exact[i]):
            line += f"   exact {exact[i]:+.4f}"
        for label, values in beside:
            line += f"   {label} {values[i]:.4f}"
        print(line)


def _add_app(subparsers) -> None:
    p = subparsers.add_parser("app", help="open the Streamlit circuit explorer on a runs folder",
                              description="Serve the circuit explorer (app/Home.py) on this machine (127.0.0.1) only, "
                                          "with Streamlit's usage statistics and address lookups off.")
    p.add_argument("--runs", default="runs", help="folder whose run folders the app lists")
    p.add_argument("--port", type=_port, default=8501, help="TCP port, 1-65535")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; anything else lets other machines "
                        "open the app and run the model, and is warned about)")
    p.add_argument("--model", default=None, help="model for the live pages (default smollm2-135m)")
    p.set_defaults(func=_run_app)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {port}")
    return port


def app_command(home: Path, host: str, port: int) -> list[str]:
    """The Streamlit command ``interp app`` becomes: bound to ``host``, headless (no browser, no
    external-address lookup: an explicit address makes Streamlit print just that URL), no usage
    statistics, no development mode; widgets in a neutral purple, since red and blue mean signs
    (``interp.ui.colors``)."""
    return [sys.executable, "-m", "streamlit", "run", str(home), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
            "--client.toolbarMode", "viewer", "--theme.base", "light", "--theme.primaryColor", "#5e4fa2"]


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run_app(args: argparse.Namespace) -> int:
    """Replace this process with the Streamlit server (``exec``), so stopping ``interp app`` by its
    process id stops the server."""
    import os

    import app

    home = Path(app.__file__).resolve().parent / "Home.py"
    env = {**os.environ, "INTERP_RUNS_DIR": str(Path(args.runs).resolve())}
    if args.model:
        env["INTERP_APP_MODEL"] = args.model
    if not _is_loopback(args.host):
        print(f"interp: warning: --host {args.host} is not this machine's loopback address: other machines that reach "
              "it can open the app, read the runs folder and run the model", file=sys.stderr)
    print(f"serving {home} on http://{args.host}:{args.port} (runs from {env['INTERP_RUNS_DIR']}); Ctrl-C stops it",
          flush=True)
    command = app_command(home, args.host, args.port)
    os.execve(command[0], command, env)
    return 0  # not reached: the process is the server now


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
    for analysis in ANALYSES.values():  # any other registered analysis gets a generic command
        if analysis.inputs and analysis.cli_command.split()[0] not in subparsers.choices:
            add_generic_command(subparsers, analysis)
    return parser


def add_generic_command(subparsers, analysis) -> None:
    """``interp <name>``: model flags, the inputs' flags (a task or a corpus), the config's flags
    and ``--out``; runs the analysis, saves its run folder and prints its top components."""
    p = analysis_command(subparsers, analysis.cli_command, analysis.summary,
                         (analysis.config.__doc__ or analysis.summary).strip(), analysis.config,
                         TaskOptions if analysis.inputs == "task" else CorpusOptions, lambda args: _run_generic(analysis, args),
                         out_help=f"run folder (default runs/<input>-{analysis.name})")
    if "seed" not in analysis.config.field_names():
        p.add_argument("--seed", type=int, default=0, help="seed of the prompts or the corpus chunks")
    if analysis.default_input is not None:
        p.set_defaults(**{analysis.inputs: analysis.default_input})


def _run_generic(analysis, args: argparse.Namespace) -> int:
    config = config_from_args(analysis.config, args)
    model = load(args)
    if analysis.inputs == "task":
        options = config_from_args(TaskOptions, args)
        data, label = options.build(model, seed=args.seed), Path(options.task).stem
    else:
        options = config_from_args(CorpusOptions, args)
        data, label = options.load(), Path(options.corpus).stem
    result = analysis.run(model, data, config)
    result.analysis = analysis.name
    written = save_run(result, Path(args.out or f"runs/{label}-{analysis.name}"))
    print(f"{analysis.name} on {model.config.name}, {result.task}: {len(result.components)} components, "
          f"{result.wall_seconds:.1f} s")
    _print_top(result)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``interp`` command (``argv`` None: the process's own arguments; then the process ends
    as soon as the command has: Python's teardown of torch and the model takes about a second that
    nobody needs, and its time would be missing from ``wall_seconds``)."""
    if argv is None and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a log or pipe keeps stdout's lines in order with stderr's
    code = _main(argv)
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    start_clock(from_process_start=argv is None)  # None: run as the `interp` command
    try:
        if getattr(args, "out", None):
            check_out(Path(args.out))
        return args.func(args)
    except _USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"interp: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interp: interrupted; no result was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: its traceback follows, said to be one
        from interp import shortcuts

        print(f"interp: internal error ({type(exc).__name__}): a bug in interp, not in your input; please report the "
              f"command line and the traceback below ({shortcuts.versions()})", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
