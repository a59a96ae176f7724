"""The analysis contract: one shape for every analysis.

An analysis is

* a ``Config``: a frozen dataclass whose fields are typed (``Literal`` choices, ``int``/``float``
  with an optional minimum, ``tuple[int, ...]``, ``X | None``) and carry their help text
  (:func:`option`). It is validated on construction, so a bad value fails before any model loads,
  with one line naming the field;
* ``run(model, inputs, config) -> Result``: the work, which builds its own :class:`Result`
  (``Result.analysis`` names the analysis; its typed payload is ``payload_type(**result.extra)``);
* an :class:`Analysis` entry in :data:`ANALYSES` (:func:`register`), which names the app page that
  shows its results and, as an ``"module:function"`` path, the function that draws its figures
  (``figures(result) -> list[plotly Figure]``). The path is resolved only when figures are asked
  for, so the core never imports the interface layer.

Settings several analyses share have one meaning each and live in :class:`RunSettings`:
``batch_size`` is always *sequences per forward pass* and ``progress`` always defaults to True.
The command line (``interp.ui.cli``) generates its flags from these dataclasses.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Literal

from interp.backends import BACKENDS
from interp.corruption import CORRUPTIONS, DIRECTIONS
from interp.metrics import METRICS


class ConfigError(ValueError):
    """A configuration value outside what its field allows (a user error: one line)."""


def option(default: Any, help: str, *, minimum: float | None = None, flags: tuple[str, ...] = (),
           maximum: float | None = None, quick: float | None = None) -> Any:
    """A config field: its default, its help text (shown by ``--help``), an optional numeric range,
    extra command-line spellings (``flags``, e.g. an old name kept as an alias) and, for a size,
    the value ``INTERP_QUICK=1`` caps it at on the command line (``quick``; see
    ``interp.ui.flags.quick_caps``)."""
    kwargs = {"default_factory": lambda: default} if isinstance(default, (list, dict)) else {"default": default}
    return field(metadata={"help": help, "minimum": minimum, "maximum": maximum, "flags": flags, "quick": quick}, **kwargs)


def flag_name(name: str) -> str:
    """The command-line spelling of a field: ``n_prompts`` -> ``--n-prompts``."""
    return "--" + name.replace("_", "-")


def _check(name: str, hint: Any, value: Any) -> Any:
    """``value`` converted to ``hint`` where that is lossless (list -> tuple, int -> float), else
    :class:`ConfigError`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = []
        for option_hint in (h for h in options if h is not type(None)):
            try:
                return _check(name, option_hint, value)
            except ConfigError as exc:
                problems.append(str(exc))
        raise ConfigError(problems[0])
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{flag_name(name)} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{flag_name(name)} must be a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_check(name, item, v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag_name(name)} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{flag_name(name)} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{flag_name(name)} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{flag_name(name)} must be a string, got {value!r}")
        return value
    return value


@dataclass(frozen=True)
class Config:
    """Base of every analysis' settings: typed fields, validated on construction (see module doc).

    ``aliases`` maps a field to old or shell-safe spellings of its values (``atp-star`` for
    ``atp*``), replaced by the canonical value on construction."""

    aliases: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                value = self.aliases.get(f.name, {}).get(value, value)
            value = _check(f.name, hints[f.name], value)
            low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{flag_name(f.name)} must be a finite number, got {value}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if low is not None and value < low:
                    raise ConfigError(f"{flag_name(f.name)} must be at least {low:g}, got {value:g}")
                if high is not None and value > high:
                    raise ConfigError(f"{flag_name(f.name)} must be at most {high:g}, got {value:g}")
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields (override; raise :class:`ConfigError`)."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


Direction = Literal[DIRECTIONS]  # type: ignore[valid-type]
Corruption = Literal[CORRUPTIONS]  # type: ignore[valid-type]
Metric = Literal[tuple(METRICS)]  # type: ignore[valid-type]


Backend = Literal[BACKENDS]  # type: ignore[valid-type]
DType = Literal["float32", "float64", "bfloat16", "float16"]
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelOptions(Config):
    """Which model to load, and how: the same flags and defaults for every command."""

    model: str = option(DEFAULT_MODEL, "bundled name, toy model, HF folder, .gguf file or hub name")
    backend: Backend = option("nnsight", "nnsight runs the plain Hugging Face modules (every family); "
                                         "transformer_lens runs TransformerLens' bridge")
    device: str = option("cpu", "torch device, e.g. cpu, cuda, cuda:1, mps")
    dtype: DType = option("float32", "weights' dtype")
    remote: bool = option(False, "run every forward on NDIF: --model is a hub id NDIF hosts, NDIF_API_KEY is set")
    remote_dry_run: bool = option(False, "send every request as --remote would, through nnsight's local simulation of "
                                         "NDIF, on --model here (any local model)")
    device_map: str = option("", "spread the model over devices: auto, balanced, sequential (GPUs, then CPU, then disk) "
                                 "or a JSON file {module path: device or disk}; replaces --device")
    attention: Literal["eager", "auto", "sdpa"] = option("auto", "attention implementation: eager, auto (SDPA where the "
                                                                  "family and backend allow it, else eager) or sdpa; runs "
                                                                  "that read attention probabilities run eager")

    def validate(self) -> None:
        check_device(self.device)
        check_dtype(self.device, self.dtype)
        if self.remote and self.remote_dry_run:
            raise ConfigError("give --remote or --remote-dry-run, not both")
        if self.device_map:
            from interp.placement import PlacementError, parse_device_map

            if self.device != "cpu":
                raise ConfigError(f"give --device-map or --device ({self.device}), not both: the map places every module")
            try:
                parse_device_map(self.device_map)
            except PlacementError as exc:
                raise ConfigError(str(exc)) from None

    def load(self):
        """The model (``interp.load_model``)."""
        import torch

        from interp.loading import load_model

        return load_model(self.model, backend=self.backend, device=self.device, dtype=getattr(torch, self.dtype),
                          attention=self.attention, device_map=self.device_map or None,
                          remote="local" if self.remote_dry_run else self.remote)


def check_dtype(device: str, dtype: str) -> None:
    """A one-line :class:`ConfigError` for a dtype the device cannot compute in."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--dtype bfloat16: {torch.cuda.get_device_name(parsed)} has no bfloat16 arithmetic; use float16 "
                          "or float32")
    if parsed.type == "mps" and dtype == "float64":
        raise ConfigError("--dtype float64: Apple's MPS has no float64; use float32")


def check_device(device: str) -> None:
    """A one-line :class:`ConfigError` for a device string torch cannot read or this machine lacks."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a torch device; e.g. cpu, cuda, cuda:1, mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__})")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: Apple's MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {device}: interp runs on cpu, cuda or mps")


@dataclass(frozen=True)
class TaskOptions(Config):
    """The prompts of a clean-vs-corrupt analysis: a built-in task, a file or folder of prompts, a
    template, or a Hugging Face dataset."""

    task: str = option("ioi", "ioi | capitals | greater_than | landmarks | induction | sentiment | pairs.jsonl | pairs.csv | "
                              "a folder of them | template.json | hf:<dataset>[:<split>]")
    n_prompts: int = option(16, "prompts (built-in tasks and templates draw this many; files and datasets give their "
                                "first this many)", minimum=1, quick=2)
    padding: Literal["left", "right"] = option("left", "side prompts of different lengths are padded on (both give the "
                                                       "same numbers; left is faster when the metric reads the last token)")
    chat_template: bool = option(False, "wrap each prompt in the model's chat template (a user turn, then the "
                                        "assistant's start), for instruction-tuned models")
    fields: tuple[str, ...] | None = option(None, "rename a file's or dataset's columns: clean=prompt,answer=target "
                                                  "(fields: clean, corrupt, answer, wrong_answer, positions)")

    def validate(self) -> None:
        self.field_map()

    def field_map(self) -> dict:
        """``fields`` as {our field: the source's column}."""
        out = {}
        for item in self.fields or ():
            ours, equals, theirs = item.partition("=")
            if not equals or not ours.strip() or not theirs.strip():
                raise ConfigError(f"--fields takes name=column pairs, e.g. clean=prompt,answer=target; got {item!r}")
            out[ours.strip()] = theirs.strip()
        return out

    def build(self, model, seed: int = 0):
        """The :class:`interp.tasks.Task` on ``model``."""
        from interp.tasks import get_task

        return get_task(model, self.task, n_prompts=self.n_prompts, seed=seed, padding_side=self.padding,
                        chat_template=self.chat_template, fields=self.field_map())


@dataclass(frozen=True)
class CorpusOptions(Config):
    """The text of a corpus-based analysis (redundancy, dropping, dictionaries, bigram subnetworks)."""

    corpus: str = option("python-docs", "python-docs (offline default) | toy-markov | file | folder | hf:<dataset>")

    def load(self):
        """The :class:`interp.corpus.Corpus`."""
        from interp.corpus import load_corpus

        return load_corpus(self.corpus)


@dataclass(frozen=True)
class RunSettings(Config):
    """What every clean-vs-corrupt analysis shares (patching, AtP, edges), one meaning per name."""

    direction: Direction = option("noising", "noising: patch corrupt activations into the clean run; "
                                             "denoising: clean activations into the corrupt run")
    corruption: Corruption = option("tokens", "tokens: the task's corrupt prompts; gaussian: noise on the "
                                              "subject tokens' embeddings (causal tracing); zero, mean, resample: "
                                              "ablate the swept components instead (no corrupt prompt needed)")
    metric: Metric = option("logit_diff", "logit_diff: answer minus wrong-answer logit; prob: answer "
                                          "probability; kl: KL(clean || run) in nats")
    seed: int = option(0, "seed of the prompts, the noise and any sampling")
    layers: tuple[int, ...] | None = option(None, "layers to sweep, comma-separated (default: all)")
    batch_size: int | None = option(None, "sequences per forward pass (default: from --memory-mb, or all prompts)",
                                    minimum=1)
    memory_mb: float = option(2048.0, "memory budget of one batched forward pass, MiB", minimum=1)
    progress: bool = option(True, "show progress bars")
    reference: str | None = option(None, "--corruption mean: what the mean is over: task (this task's own prompts), "
                                         "a task name or file, or corpus[:<name>]")

    def validate(self) -> None:
        if self.corruption == "mean" and self.reference is None:
            raise ConfigError("--corruption mean needs --reference: the prompts whose mean replaces each component "
                              "(task, a task name or file, or corpus[:<name>])")
        if self.reference is not None and self.corruption != "mean":
            raise ConfigError(f"--reference sets the mean of --corruption mean; the corruption is {self.corruption!r}")

    def mean_reference(self, model, task):
        """The reference set of a mean ablation (None for any other corruption)."""
        if self.corruption != "mean":
            return None
        from interp.ablation import mean_reference

        return mean_reference(model, task, self.reference, self.seed)

    def contrast(self) -> dict:
        """direction, metric, corruption and seed: the keyword arguments every clean-vs-corrupt
        function of the library takes under these names."""
        return {"direction": self.direction, "metric": self.metric, "corruption": self.corruption, "seed": self.seed}


@dataclass(frozen=True)
class Printed:
    """How ``interp <command>`` prints a result's scores: ``unit`` names them (``{metric}``: the
    result's metric); ``ordered`` prints every row along the result's axis in order (the lens'
    stages, steering's coefficients), else the ten largest; ``beside`` are (array, label) columns
    printed next to the score where the result has that array."""

    unit: str = "{metric}"
    ordered: bool = False
    beside: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Analysis:
    """A registered analysis.

    ``methods`` are the ``Result.method`` values its runs write (the app picks the page by them,
    for run folders written before ``Result.analysis`` existed); ``page`` is the title of the app
    page that shows them (None: no page); ``figures`` is ``"module:function"``; ``payload`` is the
    dataclass ``Result.extra`` holds (:func:`payload_of`).
    """

    name: str
    config: type[Config]
    run: Callable[..., Any]
    summary: str
    methods: tuple[str, ...] = ()
    page: str | None = None
    figures: str | None = None
    payload: type | None = None
    figure_file: str | None = None  # the run folder's HTML page of figures (default ``<name>.html``)
    # what ``run``'s second argument is: "task" (clean/corrupt prompts) or "corpus" (text); the
    # command line gives an analysis without a hand-written command ``interp <name>`` from it
    inputs: Literal["task", "corpus"] | None = None
    command: str | None = None  # the CLI command that runs it (default: ``interp <name>``)
    default_input: str | None = None  # the command's default --task / --corpus (None: the options' own default)
    printed: Printed = Printed()  # how the command prints the result's scores

    @property
    def cli_command(self) -> str:
        return self.command or self.name

    @property
    def html_name(self) -> str:
        return self.figure_file or f"{self.name}.html"

    def figures_of(self, result) -> list:
        """The analysis' figures of ``result`` (empty when it registers none)."""
        if self.figures is None:
            return []
        module, _, function = self.figures.partition(":")
        return list(getattr(importlib.import_module(module), function)(result))


def note(enabled: bool, line: str) -> None:
    """An analysis' progress line on stderr (its ``progress`` setting switches it off)."""
    if enabled:
        print(line, file=sys.stderr)


ANALYSES: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    """Add ``analysis`` to :data:`ANALYSES` (a second registration of the same name replaces it)."""
    ANALYSES[analysis.name] = analysis
    return analysis


def analysis_of(result) -> Analysis | None:
    """The registered analysis that wrote ``result``: by ``result.analysis``, else by its method."""
    name = getattr(result, "analysis", None)
    if name in ANALYSES:
        return ANALYSES[name]
    return next((a for a in ANALYSES.values() if result.method in a.methods), None)


def payload_of(result):
    """``result.extra`` as its analysis' typed payload (the dict itself where none is registered)."""
    analysis = analysis_of(result)
    if analysis is None or analysis.payload is None:
        return result.extra
    names = {f.name for f in fields(analysis.payload)}
    return analysis.payload(**{k: v for k, v in result.extra.items() if k in names})
