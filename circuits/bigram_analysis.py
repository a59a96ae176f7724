"""The bigram-subnetwork analysis: continuous sparsification of every attention and MLP weight
matrix towards the corpus bigram distribution (or the full model's own predictions: "optimal
pruning"), with a lambda sweep.

``run_bigram(model, corpus, BigramConfig(lambdas=(10,)))`` returns a :class:`Result` whose
``scores`` are the first lambda's kept fraction per weight matrix over [layer, matrix]; arrays hold
kept fractions per layer and matrix for every lambda, surprisal pairs and the training history;
the payload holds the per-lambda fit, ablations and stop reasons; each lambda's boolean masks are
the result's ``masks-lambda<value>.npz`` documents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from circuits.bigram_subnetwork import TARGETS, BigramTarget, FullModelTarget, SubnetworkConfig, train_subnetwork
from circuits.bigram_table import BigramTable
from circuits.subnetwork_evaluation import (ablation_table, kept_by_layer, kept_by_matrix, mask_overlap, residual_maps,
                                            surprisal_pairs)
from circuits.weight_masks import maskable_matrices, save_masks
from interp.analysis import Analysis, Config, ConfigError, note, option, register
from interp.corpus import Corpus
from interp.model import Model
from interp.results import Result

_PAPER = SubnetworkConfig()


@dataclass(frozen=True)
class BigramConfig(Config):
    """``interp bigram``. Training defaults are the paper's (15k steps of 32 x 128 tokens): on a CPU
    use e.g. steps=600, batch_size=4, seq_len=64, lr=1e-3, temperature_growth=1.01."""

    lambdas: tuple[float, ...] = option((_PAPER.lam,), "sparsity weight(s); several values run a sweep "
                                                       "(paper: 0 1 5 10 50 100 500 1000)", flags=("--lambda",))
    target: Literal[TARGETS] = option(  # type: ignore[valid-type]
        "bigram", "bigram: the corpus bigram distribution; model: the full model's own predictions (optimal pruning)")
    compare_optimal: bool = option(False, "also train an optimal-pruning mask at the first lambda and report its "
                                          "overlap with the subnetwork")
    steps: int = option(_PAPER.steps, "optimizer steps (at most)", minimum=1, quick=3)
    batch_size: int = option(_PAPER.batch_size, "sequences (chunks) per step", minimum=1)
    seq_len: int = option(_PAPER.seq_len, "tokens per chunk", minimum=2)
    lr: float = option(_PAPER.lr, "AdamW learning rate of the mask scores", minimum=0)
    temperature_growth: float = option(_PAPER.temperature_growth, "factor of the mask temperature per step", minimum=1)
    max_epochs: int = option(_PAPER.max_epochs, "passes over the corpus the steps may take", minimum=1)
    max_restarts: int = option(_PAPER.max_restarts, "restarts after a diverging loss", minimum=0)
    held_out: float = option(0.1, "fraction of corpus documents held out for evaluation", minimum=0, maximum=1)
    held_out_chunks: int = option(32, "held-out chunks for r, ablations and residual maps", minimum=1, quick=4)
    permutations: int = option(20, "row-shuffle permutations for the overlap null", minimum=1, quick=2)
    residual: bool = option(True, "the per-layer residual-stream ridge maps")
    seed: int = option(0, "seed of the split, the chunk order and the baselines")
    progress: bool = option(True, "show training progress")

    def subnetwork(self, lam: float, target: str) -> SubnetworkConfig:
        """The training settings of one lambda."""
        return SubnetworkConfig(lam=lam, target=target, steps=self.steps, batch_size=self.batch_size,
                                seq_len=self.seq_len, lr=self.lr, temperature_growth=self.temperature_growth,
                                max_epochs=self.max_epochs, max_restarts=self.max_restarts, seed=self.seed).validate()

    def validate(self) -> None:
        if not self.lambdas:
            raise ConfigError("give at least one --lambda")
        for lam in self.lambdas:
            self.subnetwork(lam, self.target)


@dataclass
class BigramPayload:
    """``sweep``: per lambda its fit, stop reason and ablation table; ``matrix_types`` and
    ``matrices``: the weight matrices masked; ``n_maskable`` weights; the bigram ``table``'s size;
    ``optimal_pruning``: the optimal-pruning mask's summary and overlap (with compare_optimal)."""

    sweep: list
    matrix_types: list
    matrices: list
    n_maskable: int
    table: dict
    optimal_pruning: dict | None = None


def run_bigram(model: Model, corpus: Corpus, config: BigramConfig = BigramConfig()) -> Result:
    """Bigram subnetworks over the lambda sweep (see module doc)."""
    start = time.perf_counter()
    matrices = maskable_matrices(model)
    train, held_out = corpus.split(held_out=config.held_out, seed=config.seed)
    table = BigramTable.from_corpus(train, model.tokenizer, vocab_size=model.config.d_vocab)
    chunks = train.token_chunks(model.tokenizer, config.seq_len, seed=config.seed)
    held = held_out.token_chunks(model.tokenizer, config.seq_len, seed=config.seed)[:config.held_out_chunks]
    n_maskable = sum(m.numel for m in matrices)
    note(config.progress, f"{table}; {len(chunks)} training chunks, {len(held)} held-out chunks; {len(matrices)} matrices, "
                 f"{n_maskable:,} maskable weights")
    target = BigramTarget(table) if config.target == "bigram" else FullModelTarget()
    sweep, trained_runs, documents = [], [], {}
    for lam in config.lambdas:
        trained = train_subnetwork(model, chunks, target, config.subnetwork(lam, config.target),
                                   log=lambda line: note(config.progress, line))
        ablations = ablation_table(model, held, table, trained.masks, seed=config.seed)
        documents[f"masks-lambda{lam:g}.npz"] = partial(save_masks, trained.masks)
        sweep.append({"lambda": lam, **trained.summary(), "ablations": ablations})
        trained_runs.append(trained)
        note(config.progress, sweep_line(sweep[-1]))
    first = trained_runs[0]
    matrix_types = list(dict.fromkeys(m.matrix for m in matrices))
    n_layers = model.config.n_layers
    kept_grid = np.full((n_layers, len(matrix_types)), np.nan)
    for m in matrices:
        kept_grid[m.layer, matrix_types.index(m.matrix)] = float(first.masks[m.name].float().mean())
    pairs = surprisal_pairs(model, held, table, first.masks)
    sample = np.random.default_rng(config.seed).permutation(len(pairs["model"]))[:3000]
    arrays = {
        "kept_by_layer": np.stack([kept_by_layer(matrices, t.masks, n_layers) for t in trained_runs]),
        "kept_by_matrix": np.array([list(kept_by_matrix(matrices, t.masks).values()) for t in trained_runs]),
        "lambdas": np.array(config.lambdas, dtype=np.float64),
        "subnetwork_surprisal": pairs["model"][sample], "bigram_surprisal": pairs["bigram"][sample],
        **{f"history_{k}": v for k, v in first.history.items()},
    }
    payload = BigramPayload(sweep, matrix_types, [m.label for m in matrices], n_maskable,
                            {"pairs": table.n_pairs, "tokens": int(table.next_counts.sum())})
    if config.residual:
        full_maps = residual_maps(model, held, seed=config.seed)
        sub_maps = residual_maps(model, held, first.masks, seed=config.seed)
        arrays["residual_to_final"] = np.stack([full_maps["to_final"], sub_maps["to_final"]])
        arrays["residual_to_embedding"] = np.stack([full_maps["to_embedding"], sub_maps["to_embedding"]])
    if config.compare_optimal:
        lam = config.lambdas[0]
        optimal = train_subnetwork(model, chunks, FullModelTarget(), config.subnetwork(lam, "model"),
                                   log=lambda line: note(config.progress, line))
        documents[f"masks-optimal-lambda{lam:g}.npz"] = partial(save_masks, optimal.masks)
        payload.optimal_pruning = {**optimal.summary(),
                                   "overlap": mask_overlap(first.masks, optimal.masks, config.permutations, config.seed)}
    extra = vars(payload)
    if extra["optimal_pruning"] is None:
        del extra["optimal_pruning"]
    return Result(
        method="bigram" if config.target == "bigram" else "optimal-pruning", analysis="bigram",
        model=model.config.name, task=corpus.name, metric="kept fraction", granularity="weights",
        components=[f"L{layer}.{t}" for layer in range(n_layers) for t in matrix_types],
        scores=np.nan_to_num(kept_grid.ravel()), shape=[n_layers, len(matrix_types)], axes=["layer", "matrix"],
        wall_seconds=time.perf_counter() - start, n_forward_passes=sum(t.steps_run for t in trained_runs),
        n_backward_passes=sum(t.steps_run for t in trained_runs),
        settings={"corpus": corpus.name, "held_out": config.held_out, "held_out_chunks": len(held),
                  "backend": model.backend.name, "seed": config.seed, "config": first.summary()["config"],
                  "lambdas": list(config.lambdas)},
        arrays=arrays, extra=extra, documents=documents,
    )


def sweep_line(row: dict) -> str:
    """One lambda's outcome in a line."""
    sub = row["ablations"]["subnetwork"]
    return (f"lambda {row['lambda']:g}: kept {row['kept_fraction']:.4%} of maskable weights, r = {sub['r']:.3f} "
            f"(smoothed {sub['r_smoothed']:.3f}), CE to bigram {sub['cross_entropy_to_bigram']:.3f} nats; "
            f"{row['stop_reason']}" + (f" after {row['restarts']} restart(s)" if row["restarts"] else ""))


register(Analysis(
    name="bigram", inputs="corpus", config=BigramConfig, run=run_bigram, methods=("bigram", "optimal-pruning"), page="Bigram",
    payload=BigramPayload, figures="interp.ui.figures:bigram_figures",
    summary="bigram subnetwork: the minimal weights that make next-token-from-current-token predictions"))
