"""The dictionary analyses: train a sparse autoencoder or a transcoder on a model's activations
(``dictionary``), evaluate a saved one on held-out text (``dictionary-eval``), and the attribution
graph of a target through transcoders on one prompt (``feature-graph``).

* ``run_training(model, corpus, DictionaryTrainingConfig(site="L6.RESID_POST"))``: ``scores`` are
  each latent's log10 firing frequency on held-out text; the payload holds the held-out metrics
  (``circuits.dictionary_evaluation``) and the training summary; the trained dictionary is the
  ``dictionary/`` document (SAELens format).
* ``run_evaluation(model, dictionary, corpus, DictionaryEvalConfig())``: the same metrics of a
  saved dictionary.
* ``run_feature_graph(model, transcoders, prompt, FeatureGraphConfig(target=" Mary| John"))``:
  one score per kept node (its influence on the target); the graph is the ``graph.json`` document.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import numpy as np

from circuits.dictionary import ARCHITECTURES, DictionaryConfig, SparseDictionary
from circuits.dictionary_io import save_dictionary
from interp.analysis import Analysis, Config, ConfigError, note, option, register
from interp.corpus import Corpus
from interp.model import Model
from interp.results import Result


@dataclass(frozen=True)
class HeldOutText(Config):
    """The held-out chunks dictionaries are evaluated on (10% of the corpus documents)."""

    chunk_length: int = option(128, "tokens per chunk", minimum=2, quick=32)
    eval_chunks: int = option(16, "held-out chunks for the evaluation", minimum=1, quick=2)
    seed: int = option(0, "seed of the split, the chunks and the training order")

    def split(self, model, corpus: Corpus):
        """(training documents, held-out token chunks [eval_chunks, chunk_length])."""
        train, held_out = corpus.split(held_out=0.1, seed=self.seed)
        return train, held_out.token_chunks(model.tokenizer, self.chunk_length, self.eval_chunks, seed=self.seed)


@dataclass(frozen=True)
class DictionaryTrainingConfig(HeldOutText):
    """``interp sae train`` / ``interp transcoder train``. ``site`` is what an SAE reads
    (``L6.RESID_POST``, ``L6.ATTN``, ``L6.MLP``) or, for a transcoder, the MLP it replaces (``L6.MLP``)."""

    site: str = option("", "what the dictionary reads, e.g. L6.RESID_POST (a transcoder: L<layer>.MLP)")
    kind: Literal["sae", "transcoder", "skip_transcoder"] = option("sae", "sparse autoencoder, transcoder, or "
                                                                          "transcoder with a linear skip term")
    architecture: Literal[ARCHITECTURES] = option("topk", "activation function")  # type: ignore[valid-type]
    expansion: int = option(8, "d_sae = expansion x d_model (unless --d-sae)", minimum=1)
    d_sae: int | None = option(None, "latents", minimum=1)
    k: int = option(32, "TopK/BatchTopK latents per token", minimum=1)
    l1: float = option(5.0, "ReLU: decoder-norm-weighted L1 coefficient", minimum=0)
    l0: float = option(1.0, "JumpReLU: L0 coefficient", minimum=0)
    sparsity_warmup: int = option(100, "steps of linear warm-up of the sparsity coefficient", minimum=0, quick=1)
    tokens: int = option(200_000, "training tokens", minimum=1, quick=2048)
    batch_tokens: int = option(1024, "tokens per training step", minimum=1, quick=256)
    buffer_tokens: int = option(16384, "shuffling buffer (memory: tokens x (d_in + d_out) x 4 bytes)", minimum=1, quick=1024)
    lr: float = option(1e-3, "Adam learning rate", minimum=0)
    progress: bool = option(True, "show training progress")

    def validate(self) -> None:
        if not self.site:
            raise ConfigError("give the site the dictionary reads (--site, or --layer for a transcoder)")
        self.training()

    def training(self):
        """The optimizer's settings (``circuits.dictionary_training.TrainingConfig``), validated."""
        from circuits.dictionary_training import TrainingConfig

        return TrainingConfig(total_tokens=self.tokens, batch_tokens=self.batch_tokens, lr=self.lr, seed=self.seed).validate()


@dataclass(frozen=True)
class DictionaryEvalConfig(HeldOutText):
    """``interp sae eval`` / ``interp transcoder eval``: held-out metrics of a saved dictionary."""

    site: str | None = option(None, "override the site (default: the dictionary's own)")


@dataclass
class DictionaryPayload:
    """``metrics``: held-out metrics (L0, explained variance, dead/dense fractions, CE with the
    dictionary spliced in, CE recovered, KL to the clean model); ``training``: the training summary
    (training runs); ``buffer_bytes``: the activation buffer; ``dictionary``: the evaluated folder."""

    metrics: dict
    training: dict | None = None
    buffer_bytes: int | None = None
    dictionary: str | None = None


def _result(model: Model, trained: SparseDictionary, site: str, metrics: dict, seconds: float, analysis: str,
            arrays: dict | None = None, **payload) -> Result:
    """The Result of the dictionary ``trained`` at ``site``: per-latent log10 firing frequency as
    ``scores``, the other metrics and ``payload``'s fields (of :class:`DictionaryPayload`) in ``extra``."""
    c = trained.config
    tag = "SAE" if c.kind == "sae" else "TC"
    frequency = metrics["log10_frequency"]
    payload_fields = DictionaryPayload(metrics={k: v for k, v in metrics.items() if k != "log10_frequency"}, **payload)
    return Result(
        method=c.kind if c.kind == "sae" else "transcoder", analysis=analysis, model=model.config.name, task=site,
        metric="log10 firing frequency", granularity="latents",
        components=[f"{site.split('.')[0]}.{tag}.{i}" for i in range(c.d_sae)], scores=frequency.astype(np.float64),
        shape=[c.d_sae], axes=["latent"], wall_seconds=seconds, settings={"config": {**c.to_dict(), "site": site}},
        arrays={"log10_frequency": frequency, **(arrays or {})},
        extra={k: v for k, v in vars(payload_fields).items() if v is not None},
    )


def run_training(model: Model, corpus: Corpus, config: DictionaryTrainingConfig) -> Result:
    """Train a dictionary on ``corpus`` and evaluate it on held-out text (see module doc)."""
    from circuits.activation_store import ActivationStore
    from circuits.dictionary_evaluation import evaluate_dictionary
    from circuits.dictionary_training import train_dictionary

    start = time.perf_counter()
    training = replace(config.training(), device=str(model.device))  # the pairs wait on the CPU, the steps run here
    d_model = model.config.d_model
    site = config.site.upper()
    dictionary_config = DictionaryConfig(
        d_in=d_model, d_sae=config.d_sae or config.expansion * d_model, architecture=config.architecture,
        kind=config.kind, k=config.k, l1_coefficient=config.l1, l0_coefficient=config.l0,
        sparsity_warmup_steps=config.sparsity_warmup, site=site, model_name=model.config.name, seed=config.seed,
        dead_tokens=max(config.tokens // 10, config.batch_tokens),
    ).validate()
    train, held = config.split(model, corpus)
    chunks = train.token_chunks(model.tokenizer, config.chunk_length, seed=config.seed)
    store = ActivationStore(model, site, "sae" if config.kind == "sae" else "transcoder", chunks,
                            batch_tokens=config.batch_tokens, buffer_tokens=config.buffer_tokens, seed=config.seed)
    note(config.progress, f"{config.kind} {config.architecture} at {site}: d_in {dictionary_config.d_in} -> d_sae "
                          f"{dictionary_config.d_sae}; {training.steps} steps of {config.batch_tokens} tokens; buffer "
                          f"{store.memory_bytes / 2**20:.0f} MiB")
    trained = train_dictionary(iter(store), dictionary_config, training, log=lambda line: note(config.progress, line))
    metrics = evaluate_dictionary(model, trained.dictionary, held)
    result = _result(model, trained.dictionary, site, metrics, time.perf_counter() - start, "dictionary",
                     {f"history_{k}": np.asarray(v) for k, v in trained.history.items()},
                     training=trained.summary(), buffer_bytes=store.memory_bytes)
    result.settings["tokens_per_second"] = trained.tokens_per_second
    result.documents["dictionary"] = partial(save_dictionary, trained.dictionary, extra={"training": trained.summary()})
    return result


def run_evaluation(model: Model, dictionary: SparseDictionary, corpus: Corpus,
                   config: DictionaryEvalConfig = DictionaryEvalConfig(), source: str | None = None) -> Result:
    """Held-out metrics of a saved ``dictionary`` (read from ``source``) at its own site or
    ``config.site`` (the dictionary itself is left as it is)."""
    from circuits.dictionary_evaluation import evaluate_dictionary

    start = time.perf_counter()
    site = config.site or dictionary.config.site
    if not site:
        raise ConfigError(f"{source or 'the dictionary'} names no site: give --site")
    _, held = config.split(model, corpus)
    metrics = evaluate_dictionary(model, dictionary, held, site)
    return _result(model, dictionary, site, metrics, time.perf_counter() - start, "dictionary-eval", dictionary=source)


_FEATURE_TARGET = re.compile(r"L(\d+)\.TC\.(\d+)@(\d+)")  # a feature target: L6.TC.123@5


@dataclass(frozen=True)
class FeatureGraphConfig(Config):
    """``interp transcoder circuit``: the pruned attribution graph of a target on one prompt.
    ``target`` is ``'ANSWER|WRONG'`` (the logit difference of two single tokens at the last
    position, e.g. ``' Mary| John'``) or a feature ``'L6.TC.123@5'``."""

    target: str = option("", "'ANSWER|WRONG' (two single tokens, e.g. ' Mary| John') or a feature 'L6.TC.123@5'")
    max_features: int = option(64, "candidate features (by attribution to the target)", minimum=1, quick=8)
    max_heads: int = option(16, "attention heads (head x destination position) made nodes, by |o . dT/do| (0: none)",
                            minimum=0, quick=2)
    freeze_norms: bool = option(True, "freeze the norms' scales, as in the transcoder paper")
    node_threshold: float = option(0.8, "cumulative influence kept among nodes", minimum=0, maximum=1)
    edge_threshold: float = option(0.98, "cumulative influence kept among edges", minimum=0, maximum=1)

    def validate(self) -> None:
        if not self.target:
            raise ConfigError("give --target")
        if not _FEATURE_TARGET.fullmatch(self.target.strip().upper()) and "|" not in self.target:
            raise ConfigError(f"--target {self.target!r}: give 'ANSWER|WRONG' (two single tokens) or a feature like L6.TC.123@5")

    def resolved_target(self, model: Model):
        """The :class:`circuits.transcoder_circuits.Target` on ``model``'s vocabulary."""
        from circuits.transcoder_circuits import Target

        match = _FEATURE_TARGET.fullmatch(self.target.strip().upper())
        if match:
            return Target(feature=tuple(int(g) for g in match.groups()))
        answer, wrong = self.target.split("|", 1)
        return Target(answer=model.to_single_token(answer), wrong=model.to_single_token(wrong))


@dataclass
class FeatureGraphPayload:
    """The graph's file in the run folder and the target's value on the prompt."""

    graph_file: str
    target_value: float


def run_feature_graph(model: Model, transcoders: dict[int, SparseDictionary], prompt: str,
                      config: FeatureGraphConfig, sources: list[str] | None = None) -> Result:
    """The attribution graph (see module doc); ``sources`` names the transcoder folders for the
    settings."""
    from circuits.transcoder_circuits import attribution_graph

    if not prompt.strip():
        raise ConfigError("--prompt is empty; the graph explains the model's output on one prompt")
    tokens = model.to_tokens(prompt)
    if tokens.shape[1] > model.config.n_ctx:
        raise ConfigError(f"--prompt has {tokens.shape[1]} tokens; {model.config.name} reads at most {model.config.n_ctx}")
    target = config.resolved_target(model)
    if target.feature is not None:
        layer, latent, position = target.feature
        if layer not in transcoders:
            raise ConfigError(f"--target {config.target}: no transcoder is given at layer {layer} (given: "
                              f"{', '.join(map(str, sorted(transcoders))) or 'none'})")
        if latent >= transcoders[layer].config.d_sae:
            raise ConfigError(f"--target {config.target}: the transcoder at layer {layer} has "
                              f"{transcoders[layer].config.d_sae} latents")
        if position >= tokens.shape[1]:
            raise ConfigError(f"--target {config.target}: the prompt has {tokens.shape[1]} tokens (positions 0-"
                              f"{tokens.shape[1] - 1})")
    start = time.perf_counter()
    graph = attribution_graph(model, transcoders, tokens, target, config.max_features, config.node_threshold,
                              config.edge_threshold, max_heads=config.max_heads, freeze_norms=config.freeze_norms)
    seconds = time.perf_counter() - start
    nodes = [n for n in graph["nodes"] if n["kind"] != "target"]
    return Result(
        method="feature-graph", analysis="feature-graph", model=graph["model"], task=prompt, metric=graph["target"],
        granularity="nodes", components=[n["id"] for n in nodes],
        scores=np.array([n["influence"] for n in nodes], dtype=np.float64), shape=[len(nodes)], axes=["node"],
        wall_seconds=seconds, tokens=graph["tokens"],
        settings={"transcoders": list(sources or []), "max_features": config.max_features, "max_heads": config.max_heads,
                  "node_threshold": config.node_threshold, "edge_threshold": config.edge_threshold,
                  "freeze_norms": graph["freeze_norms"]},
        extra=vars(FeatureGraphPayload("graph.json", graph["target_value"])), documents={"graph.json": graph},
    )


register(Analysis(
    name="dictionary", command="sae train", inputs="corpus",
    config=DictionaryTrainingConfig, run=run_training, methods=("sae", "transcoder"), page="Dictionary",
    payload=DictionaryPayload, figures="interp.ui.figures:dictionary_figures", figure_file="dictionary.html",
    summary="train a sparse autoencoder or transcoder on a model's activations and evaluate it on held-out text"))
register(Analysis(
    name="dictionary-eval", command="sae eval", config=DictionaryEvalConfig, run=run_evaluation, payload=DictionaryPayload,
    page="Dictionary",
    figures="interp.ui.figures:dictionary_figures", figure_file="dictionary.html",
    summary="held-out metrics of a saved dictionary (interp or SAELens format)"))
register(Analysis(
    name="feature-graph", command="transcoder circuit",
    config=FeatureGraphConfig, run=run_feature_graph, methods=("feature-graph",), page="Features", payload=FeatureGraphPayload,
    figures="interp.ui.circuit_figures:feature_graph_figures", figure_file="graph.html",
    summary="attribution graph of a logit difference or a feature through transcoders on one prompt"))
