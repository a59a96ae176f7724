"""Command-line flags generated from ``interp.analysis.Config`` dataclasses.

A field ``n_prompts: int = option(16, "...")`` becomes ``--n-prompts N`` with that help text and
default (shown by ``--help``); ``Literal`` fields get their choices, ``tuple[int, ...]`` fields take
a comma-separated list, a ``bool`` that defaults to False is a switch and one that defaults to True
gets ``--no-<name>``. :func:`config_from_args` builds the validated config back from the parsed
namespace, so names, help and defaults live only in the dataclass.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal

from interp.analysis import Config, ConfigError, ModelOptions, analysis_of, flag_name


class Formatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every default (unless the help text already says it) and keeps the
    description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False or action.default in ([], ())
                or action.default is argparse.SUPPRESS or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


_WORDS = {int: "integers", float: "numbers", str: "names"}


def parse_list(text: str | list | tuple | None, item: type, flag: str) -> tuple | None:
    """``"1,2"`` or ``["1", "2"]`` -> ``(1, 2)``; a bad item is a :class:`ConfigError` naming ``flag``."""
    if text is None or isinstance(text, tuple):
        return text
    words = [w for part in ([text] if isinstance(text, str) else text) for w in part.split(",") if w.strip()]
    convert = item if item in _WORDS else str  # a Literal item is checked by the config itself
    try:
        return tuple(convert(x.strip()) for x in words)
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated {_WORDS.get(item, item.__name__)}, got {text!r}") from None


def _default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def add_config_flags(parser: argparse.ArgumentParser, config: type[Config], *, skip: tuple[str, ...] = (),
                     defaults: dict[str, Any] | None = None, group: str | None = None) -> None:
    """Add one flag per field of ``config`` (except ``skip``) to ``parser``; ``defaults``
    overrides a field's default for this command only (e.g. a task's prompt count)."""
    hints = typing.get_type_hints(config)
    target = parser.add_argument_group(group) if group else parser
    for f in fields(config):
        if f.name in skip:
            continue
        hint = _strip_optional(hints[f.name])
        default = (defaults or {}).get(f.name, _default(f))
        help_text = f.metadata.get("help", "")
        names = [flag_name(f.name), *f.metadata.get("flags", ())]
        if hint is bool:
            if default:
                target.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=f"switch off (on by default): {help_text}")
            else:
                target.add_argument(*names, dest=f.name, action="store_true", help=help_text)
            parser.set_defaults(**{f.name: default})
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        origin = typing.get_origin(hint)
        if origin is Literal:
            choices = list(typing.get_args(hint))
            choices += [alias for alias in config.aliases.get(f.name, {}) if alias not in choices]
            kwargs.update(choices=choices)
        elif origin is tuple:
            # "a,b" or "a b"; parsed in config_from_args, so a bad item is one line
            kwargs.update(metavar="A,B", nargs="+")
        elif hint in (int, float, str):
            kwargs.update(type=hint)
        target.add_argument(*names, **kwargs)


QUICK = "INTERP_QUICK"


def quick_mode() -> bool:
    """Whether ``INTERP_QUICK`` asks every command to run at a reduced size (tests of the docs'
    commands, smoke tests): any value but empty or 0."""
    import os

    return os.environ.get(QUICK, "") not in ("", "0")


def quick_caps(config: type[Config], values: dict) -> dict:
    """``values`` with every size that declares a ``quick`` cap (``interp.analysis.option``)
    lowered to it, each change announced on stderr; the config then validates and records the
    values actually used."""
    capped = dict(values)
    for f in fields(config):
        cap = f.metadata.get("quick")
        if cap is None:
            continue
        value = capped.get(f.name, _default(f))
        if value is None or value > cap:
            print(f"interp: {QUICK}: {flag_name(f.name)} {value if value is not None else 'default'} -> {cap}",
                  file=sys.stderr)
            capped[f.name] = cap
    return capped


def config_from_args(config: type[Config], args: argparse.Namespace, **fixed: Any) -> Config:
    """``config`` from the parsed flags (fields the command has no flag for keep their defaults;
    sizes capped under ``INTERP_QUICK``). The full-size values are validated first, so a command
    that is wrong at its own size fails in quick mode too."""
    hints = typing.get_type_hints(config)
    values = {}
    for name in config.field_names():
        if hasattr(args, name):
            hint = _strip_optional(hints[name])
            value = getattr(args, name)
            if typing.get_origin(hint) is tuple:
                value = parse_list(value, typing.get_args(hint)[0], flag_name(name))
            values[name] = value
    values.update(fixed)
    if not quick_mode():
        return config(**values)
    config(**values)  # the command as written must be valid
    return config(**quick_caps(config, values))


def add_model_flags(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """``--model``, ``--backend``, ``--device``, ``--dtype``: the same flags and defaults on every
    command (``defaults`` only where a command cannot run on the default backend)."""
    add_config_flags(parser, ModelOptions, group="model", defaults=defaults)


def load(args: argparse.Namespace):
    """The model the flags of :func:`add_model_flags` name, announced on stderr."""
    options = config_from_args(ModelOptions, args)
    print(f"loading {options.model} ({options.backend}, {options.dtype}, {options.device}) ...", file=sys.stderr)
    return options.load()


def subcommand(subparsers, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows every default."""
    return subparsers.add_parser(name, help=help, description=description, formatter_class=Formatter)


def analysis_command(subparsers, name: str, help: str, description: str, config: type[Config],
                     inputs: type[Config] | None, func, *, out: str | None = None, out_help: str = "run folder",
                     skip: tuple[str, ...] = (), inputs_defaults: dict | None = None,
                     model_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The subcommand of one analysis: the model flags, its inputs' flags (a task's prompts or a
    corpus), its config's flags (except ``skip``) and ``--out``; ``func(args)`` runs it."""
    p = subcommand(subparsers, name, help, description)
    add_model_flags(p, defaults=model_defaults)
    if inputs is not None:
        add_config_flags(p, inputs, group="prompts" if "task" in inputs.field_names() else "text", defaults=inputs_defaults)
    add_config_flags(p, config, group="analysis", skip=skip)
    p.add_argument("--out", default=out, help=out_help)
    p.set_defaults(func=func)
    return p


def check_out(out: Path) -> None:
    """A one-line :class:`ConfigError` unless a run folder can be written at ``out``: not an
    existing file, and a folder can be made where it would go (tried, then removed), before any
    work starts."""
    import os
    import tempfile

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; a run writes a folder of files there")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--out {out}: {ancestor} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".interp-out-check-"))
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write in {ancestor} ({exc.strerror})") from None


_command_started: float | None = None


def start_clock(from_process_start: bool = False) -> None:
    """Mark the start of a command: :func:`save_run` makes the result's ``wall_seconds`` the
    whole command (loading the model and inputs included, in ``timings["loading and setup"]``);
    ``from_process_start``: count from when the process started (the console script: Python's
    start-up and imports are part of what the user waits for)."""
    global _command_started
    _command_started = time.perf_counter() - (_process_age() if from_process_start else 0.0)


def _process_age() -> float:
    """Seconds since this process started (Linux; 0 where it cannot be read)."""
    import os

    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in clock ticks
    except (OSError, ValueError, IndexError):
        return 0.0
    return age if 0.0 <= age <= 600.0 else 0.0  # main() runs seconds after start; anything else is a clock it cannot read


def save_run(result, out: Path) -> list[Path]:
    """Save ``result`` into the run folder ``out`` with its analysis' figures (``Analysis.html_name``);
    returns what was written."""
    from interp.ui.figures import write_figures

    analysis = analysis_of(result)
    figures = analysis.figures_of(result) if analysis else []  # built first: part of the command's time
    if _command_started is not None:
        total = time.perf_counter() - _command_started
        parts = dict(result.timings) or {"analysis": result.wall_seconds}
        result.timings = {"loading and setup": max(0.0, total - sum(parts.values())), **parts}
        result.wall_seconds = total
    result.save(out)
    written = [out / "result.json"] + [out / name for name in result.documents]
    if figures:
        name = analysis.html_name
        write_figures(out / name, figures, f"{analysis.name} · {result.task} · {result.model}")
        written.append(out / name)
    return written
