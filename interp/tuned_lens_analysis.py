"""Fitting a tuned lens (``interp tuned-lens``): translators per stage fitted on a corpus
(:mod:`interp.tuned_lens`), saved in the run folder's ``tuned-lens/`` for ``interp lens --tuned``.

``scores`` are the tuned lens's held-out KL(P_final || P_stage) per stage (nats per token), the
array ``kl_logit_lens`` the logit lens's on the same tokens: text the fit never saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from interp.analysis import Analysis, Config, Printed, note, option, register
from interp.lens import stages
from interp.model import Model
from interp.results import Result
from interp.tuned_lens import fit_tuned_lens


@dataclass(frozen=True)
class TunedLensConfig(Config):
    """``interp tuned-lens``: fit one affine translator per stage on a corpus."""

    train_chunks: int = option(48, "training windows", minimum=1, quick=4)
    held_out_chunks: int = option(16, "held-out windows the KL table is measured on", minimum=1, quick=2)
    chunk_length: int = option(64, "tokens per window", minimum=2, quick=16)
    ridge: float = option(1e-3, "ridge penalty of the least-squares fit, relative to the mean feature energy", minimum=0)
    steps: int = option(0, "Adam steps on the KL after the least-squares fit (0: none); a stage keeps them only where "
                           "they lower its validation KL", minimum=0, quick=1)
    lr: float = option(1e-4, "learning rate of the KL steps", minimum=0)
    batch_tokens: int = option(128, "tokens per KL step", minimum=1)
    seed: int = option(0, "seed of the corpus split and windows")
    progress: bool = option(True, "show progress bars")


@dataclass
class TunedLensPayload:
    """``refined_stages``: stages whose KL steps were kept; ``train_tokens`` / ``held_out_tokens``:
    the tokens fitted on and measured on."""

    train_tokens: int
    held_out_tokens: int
    refined_stages: list


def run_tuned_lens(model: Model, corpus, config: TunedLensConfig = TunedLensConfig()) -> Result:
    """Fit and measure (see module doc)."""
    start = time.perf_counter()
    train, held_out = corpus.split(held_out=0.2, seed=config.seed)
    train_tokens = train.token_chunks(model.tokenizer, config.chunk_length, config.train_chunks, seed=config.seed)
    held_out_tokens = held_out.token_chunks(model.tokenizer, config.chunk_length, config.held_out_chunks, seed=config.seed)
    note(config.progress, f"tuned lens: fitting {len(stages(model))} stages on {train_tokens.numel()} tokens")
    lens = fit_tuned_lens(model, train_tokens, held_out_tokens, ridge=config.ridge, steps=config.steps, lr=config.lr,
                          batch_tokens=config.batch_tokens, seed=config.seed, progress=config.progress)
    report = lens.report
    names = stages(model)
    return Result(
        method="tuned-lens-fit", analysis="tuned-lens", model=model.config.name, task=corpus.name, metric="kl",
        granularity="stages", components=names, scores=np.array(report["kl_tuned_lens"]), shape=[len(names)],
        axes=["stage"], wall_seconds=time.perf_counter() - start,
        n_forward_passes=-(-len(train_tokens) // 8) - (-len(held_out_tokens) // 8), n_backward_passes=config.steps,
        settings={"train_chunks": config.train_chunks, "held_out_chunks": config.held_out_chunks,
                  "chunk_length": config.chunk_length, "ridge": config.ridge, "steps": config.steps, "lr": config.lr,
                  "seed": config.seed},
        arrays={"kl_logit_lens": np.array(report["kl_logit_lens"])},
        extra=vars(TunedLensPayload(report["train_tokens"], report["held_out_tokens"], report.get("refined_stages", []))),
        documents={"tuned-lens": lens.save},
    )


register(Analysis(
    name="tuned-lens", inputs="corpus", config=TunedLensConfig, run=run_tuned_lens, methods=("tuned-lens-fit",),
    page="Lens", payload=TunedLensPayload, figures="interp.ui.figures:tuned_lens_figures", figure_file="tuned-lens.html",
    printed=Printed("tuned lens held-out KL, nats/token; the logit lens's beside it", ordered=True,
                    beside=(("kl_logit_lens", "logit lens"),)),
    summary="fit a tuned lens (an affine translator per stage) on a corpus; held-out KL against the logit lens"))
