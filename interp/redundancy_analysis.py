"""The layer-redundancy analyses: importance scores and pruning curves (``redundancy``), and one
pruned configuration against the intact model (``drop``).

Both read a corpus, cut it into calibration chunks (scored) and held-out chunks (evaluated), and
return a :class:`Result` over units ``L<layer>.ATTN`` / ``L<layer>.MLP`` / ``L<layer>.BLOCK``.

* ``run_redundancy(model, corpus, RedundancyConfig())``: ``scores`` are the importance 1 - cos of
  every unit ([3, n_layers]: attn, mlp, block rows); arrays ``cos``, ``angular`` and, with
  ablation, ``loss_change`` and ``divergence``; the payload holds the pruning curves and findings.
* ``run_drop(model, corpus, DropConfig(attn=8))``: the chosen units, their importance as
  ``scores``, and the full and pruned models' evaluation and generation speed in the payload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from interp.analysis import Analysis, Config, ConfigError, option, register
from interp.corpus import Corpus
from interp.layer_dropping import DropError, Unit
from interp.pruning import (DROP_METHODS, EvaluationSet, ScoringOptions, drop_order, evaluate,
                            findings, pruning_curves, speed_comparison)
from interp.redundancy import DIVERGENCES, ablation_scores
from interp.results import Result

@dataclass(frozen=True)
class CalibrationSettings(Config):
    """How the corpus is cut and scored, shared by ``redundancy`` and ``drop``."""

    chunk_length: int = option(128, "tokens per calibration/held-out chunk", minimum=1, quick=32)
    calibration_chunks: int = option(4, "chunks the similarity and ablation scores are measured on", minimum=1, quick=2)
    held_out_chunks: int = option(8, "chunks the pruned models are evaluated on", minimum=1, quick=2)
    skip_first: int = option(0, "tokens at the start of each chunk left out of similarity (1 = BOS)", minimum=0)
    last_token: bool = option(False, "similarity at the last token of each chunk only")
    divergence: Literal[DIVERGENCES] = option(  # type: ignore[valid-type]
        "kl", "output change for ablation/greedy: kl = KL(P_full || P_dropped); js = Jensen-Shannon")
    task_prompts: int = option(32, "prompts per evaluation task (ioi, capitals, greater_than)", minimum=1, quick=2)
    gen_tokens: int = option(32, "new tokens per generation-speed measurement (0: no speed)", minimum=0, quick=2)
    seed: int = option(0, "seed of the chunks, the tasks and the random baseline")
    batch_size: int = option(8, "sequences per forward pass", minimum=1)
    progress: bool = option(True, "show progress bars")

    def scoring(self) -> ScoringOptions:
        return ScoringOptions(self.skip_first, self.last_token, self.divergence, self.batch_size)

    def prepare(self, model, corpus: Corpus):
        """(calibration tokens, evaluation set) cut from ``corpus``."""
        calibration, held_out = corpus.split(held_out=0.2, seed=self.seed)
        tokens = calibration.token_chunks(model.tokenizer, self.chunk_length, self.calibration_chunks,
                                          seed=self.seed).to(model.device)
        held = held_out.token_chunks(model.tokenizer, self.chunk_length, self.held_out_chunks, seed=self.seed).to(model.device)
        evaluation = EvaluationSet.build(model, held, n_prompts=self.task_prompts, new_tokens=self.gen_tokens,
                                         seed=self.seed, batch_size=self.batch_size)
        return tokens, evaluation

    def settings(self, corpus: Corpus, tokens, model) -> dict:
        """``Result.settings``: the names the run folders have always used."""
        return {"corpus": corpus.name, "chunk_length": self.chunk_length, "calibration_tokens": int(tokens.numel()),
                "held_out_chunks": self.held_out_chunks, "skip_first": self.skip_first,
                "last_token_only": self.last_token, "divergence": self.divergence, "task_prompts": self.task_prompts,
                "gen_tokens": self.gen_tokens, "backend": model.backend.name, "seed": self.seed,
                "unit_kinds": ["attn", "mlp", "block"]}


@dataclass(frozen=True)
class RedundancyConfig(CalibrationSettings):
    """``interp redundancy``: similarity and ablation importance of every unit, and pruning curves."""

    max_drop: int | None = option(None, "curves for k = 0..K units dropped (default n_layers // 3)", minimum=0, quick=1)
    methods: tuple[str, ...] = option(tuple(DROP_METHODS), f"drop methods that get a pruning curve, from {', '.join(DROP_METHODS)}")
    random_seeds: int = option(3, "random-baseline curves", minimum=0, quick=1)
    ablation: bool = option(True, "the one-forward-per-unit ablation scores")
    curves: bool = option(True, "pruning curves (else importance scores only)")

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in DROP_METHODS]
        if unknown:
            raise ConfigError(f"unknown drop method {unknown[0]!r}; known: {', '.join(DROP_METHODS)}")


@dataclass
class RedundancyPayload:
    """``curves``: ``interp.pruning.pruning_curves``' dict (None without curves); ``findings``:
    which of the published observations hold on this model; ``n_similarity_tokens``."""

    curves: dict | None
    findings: dict
    n_similarity_tokens: int


def run_redundancy(model, corpus: Corpus, config: RedundancyConfig = RedundancyConfig()) -> Result:
    """Importance of every unit and pruning curves (see module doc)."""
    start = time.perf_counter()
    n_layers = model.config.n_layers
    max_k = n_layers // 3 if config.max_drop is None else config.max_drop
    if not 0 <= max_k <= n_layers:
        raise DropError(f"--max-drop {max_k} is out of range: {model.config.name} has {n_layers} layers")
    tokens, evaluation = config.prepare(model, corpus)
    options = config.scoring()
    scores = options.similarity(model, tokens, progress=config.progress)
    arrays = {"cos": scores.cos, "angular": scores.angular}
    n_forward = scores.n_forward_passes
    if config.ablation:
        ablation = ablation_scores(model, tokens, scores.units, config.divergence, config.batch_size,
                                   progress=config.progress)
        arrays["loss_change"] = ablation.loss - ablation.full_loss
        arrays["divergence"] = ablation.divergence
        n_forward += ablation.n_forward_passes
    curves = None
    if config.curves and max_k > 0:
        curves = pruning_curves(model, tokens, evaluation, config.methods, max_k, options,
                                seeds=range(config.random_seeds), scores=scores, progress=config.progress)
    payload = RedundancyPayload(curves, findings(scores, curves, n_layers), scores.n_tokens)
    return Result(
        method="redundancy", analysis="redundancy", model=model.config.name, task=corpus.name, metric="1 - cos",
        granularity="units", components=[str(u) for u in scores.units], scores=scores.importance.astype(np.float64),
        shape=[3, n_layers], axes=["unit", "layer"], wall_seconds=time.perf_counter() - start,
        n_forward_passes=n_forward,
        settings={**config.settings(corpus, tokens, model), "max_drop": max_k, "methods": list(config.methods)},
        arrays=arrays, extra=vars(payload),
    )


@dataclass(frozen=True)
class DropConfig(CalibrationSettings):
    """``interp drop``: the k most redundant units of each kind (or named units) dropped, the pruned
    model compared with the intact one."""

    attn: int = option(0, "drop K attention sublayers, by similarity", minimum=0)
    mlp: int = option(0, "drop K MLP sublayers, by similarity", minimum=0)
    blocks: int = option(0, "drop K blocks, by similarity", minimum=0)
    joint: int = option(0, "drop K attention or MLP sublayers ranked together", minimum=0)
    greedy: int = option(0, "drop K sublayers chosen by FinerCut's greedy search", minimum=0)
    random: int = option(0, "drop K random attention sublayers", minimum=0)
    iterative: bool = option(False, "--attn re-scores after each drop")
    units: tuple[str, ...] = option((), "units to drop as well, e.g. L20.ATTN,L21.MLP,L5.BLOCK")
    repeats: int = option(3, "generation timings per model (median)", minimum=1, quick=1)

    def validate(self) -> None:
        for name in self.units:
            Unit.parse(name)
        if not self.units and not any(k for _, k in self.selections()):
            raise ConfigError("nothing to drop: give --attn, --mlp, --blocks, --joint, --greedy, --random or --units")

    def selections(self) -> list[tuple[str, int]]:
        """(drop method, k) for every unit-kind flag, in a fixed order."""
        return [("attn_iterative" if self.iterative else "attn", self.attn), ("mlp", self.mlp), ("block", self.blocks),
                ("joint", self.joint), ("greedy", self.greedy), ("random", self.random)]

    def label(self) -> str:
        """``attn8-mlp2``: the selections, for a run folder name."""
        return "-".join(f"{m}{k}" for m, k in self.selections() if k) or "units"


@dataclass
class DropPayload:
    """The intact (``full``) and pruned (``dropped``) models' evaluation rows, and the generation
    ``speed`` comparison (empty without ``gen_tokens``)."""

    full: dict
    dropped: dict
    speed: dict = field(default_factory=dict)


def run_drop(model, corpus: Corpus, config: DropConfig) -> Result:
    """One pruned configuration against the intact model (see module doc)."""
    start = time.perf_counter()
    named = [Unit.parse(u) for u in config.units]
    for unit in named:
        unit.validate(model.config)
    tokens, evaluation = config.prepare(model, corpus)
    options = config.scoring()
    scores = options.similarity(model, tokens)
    units = list(named)
    for method, k in config.selections():
        if k:
            order = drop_order(model, method, k, tokens, options, scores=scores, seed=config.seed, progress=config.progress)
            units += [u for u in order.units if u not in units]
    full = evaluate(model, [], evaluation, measure_speed=False)
    pruned = evaluate(model, units, evaluation, measure_speed=False)
    speed = speed_comparison(model, units, evaluation.prompts, config.gen_tokens, config.repeats) if config.gen_tokens else {}
    return Result(
        method="drop", analysis="drop", model=model.config.name, task=corpus.name, metric="perplexity",
        granularity="units", components=[str(u) for u in units],
        scores=np.array([1 - scores.of(u) for u in units], dtype=np.float64), shape=[len(units)], axes=["unit"],
        wall_seconds=time.perf_counter() - start,
        settings={**config.settings(corpus, tokens, model), "selections": {m: k for m, k in config.selections() if k},
                  "named_units": [str(u) for u in named], "repeats": config.repeats},
        extra=vars(DropPayload(full, pruned, speed)),
    )


register(Analysis(
    name="redundancy", inputs="corpus", config=RedundancyConfig, run=run_redundancy, methods=("redundancy",), page="Pruning",
    payload=RedundancyPayload, figures="interp.ui.figures:redundancy_figures",
    summary="similarity and ablation importance of every attention sublayer, MLP sublayer and block; pruning curves"))
register(Analysis(
    name="drop", inputs="corpus", config=DropConfig, run=run_drop, methods=("drop",), page="Pruning", payload=DropPayload,
    figures="interp.ui.figures:drop_figures",
    summary="the model with chosen layers dropped against the intact model: perplexity, tasks, generation speed"))
