"""Training one sparse dictionary on batches of (input, target) activations.

Adam with linear learning-rate warm-up and a linear decay over the last ``decay_fraction`` of the
steps. Inputs and targets are rescaled so that E||x||^2 = d_in (and E||y||^2 = d_out), estimated on
the first batch; the scales are folded back into the weights at the end, so the returned
dictionary acts on raw activations. Decoder rows are kept at unit norm after every step except for
ReLU+L1 (whose penalty is decoder-norm weighted); JumpReLU thresholds are kept >= 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from circuits.dictionary import DictionaryConfig, DictionaryError, SparseDictionary
from interp import placement


@dataclass
class TrainingConfig:
    """``total_tokens`` / ``batch_tokens`` steps of Adam(``lr``) on ``device`` (the batches may
    live elsewhere: each is moved there as it is used)."""

    total_tokens: int = 1_000_000
    batch_tokens: int = 4096
    lr: float = 4e-4
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    log_every: int = 50
    seed: int = 0
    device: str = "cpu"

    @property
    def steps(self) -> int:
        return max(1, self.total_tokens // self.batch_tokens)

    def validate(self) -> "TrainingConfig":
        if self.batch_tokens < 1 or self.total_tokens < self.batch_tokens:
            raise DictionaryError(f"need total_tokens >= batch_tokens >= 1, got {self.total_tokens} and {self.batch_tokens}")
        if not self.lr > 0:
            raise DictionaryError(f"learning rate must be positive, got {self.lr}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise DictionaryError(f"training device must name a torch device, got {self.device!r}") from None
        return self


@dataclass
class TrainedDictionary:
    dictionary: SparseDictionary
    history: dict[str, list[float]] = field(default_factory=dict)
    scale_in: float = 1.0
    scale_out: float = 1.0
    tokens_seen: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / max(self.seconds, 1e-9)

    def summary(self) -> dict:
        last = {k: v[-1] for k, v in self.history.items() if v}
        return {"tokens_seen": self.tokens_seen, "seconds": self.seconds, "tokens_per_second": self.tokens_per_second,
                "scale_in": self.scale_in, "scale_out": self.scale_out, "final": last,
                "dead_fraction": self.dictionary.dead_fraction(), "config": self.dictionary.config.to_dict()}


def _learning_rate(step: int, steps: int, config: TrainingConfig) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_start = int(steps * (1 - config.decay_fraction))
    if step >= decay_start and config.decay_fraction > 0:
        return config.lr * max(0.0, (steps - step) / max(1, steps - decay_start))
    return config.lr


def train_dictionary(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], config: DictionaryConfig,
                     training: TrainingConfig | None = None, progress: bool = True,
                     log: Callable[[str], None] | None = None) -> TrainedDictionary:
    """Train a dictionary on ``batches`` of (x [n, d_in], y [n, d_out]) (for an SAE, y is x), on
    ``training.device``; the trained dictionary comes back on the CPU, as one loaded from disk.

    A non-finite loss stops training with a :class:`DictionaryError` naming the step and the term.
    """
    import time

    training = (training or TrainingConfig()).validate()
    torch.manual_seed(training.seed)
    dictionary = SparseDictionary(config).to(training.device)
    optimizer = torch.optim.Adam(dictionary.parameters(), lr=training.lr)
    steps = training.steps
    history: dict[str, list[float]] = {"step": [], "mse": [], "l0": [], "explained_variance": [], "dead_fraction": []}
    scale_in = scale_out = None
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"{config.kind} {config.architecture}", disable=not progress, unit="step")
    for step in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            raise DictionaryError(f"the activation source ran out after {step} of {steps} steps; give more tokens") from None
        x, y = x.to(training.device).float(), y.to(training.device).float()
        if scale_in is None:
            scale_in = math.sqrt(config.d_in / x.pow(2).sum(-1).mean().clamp_min(1e-12).item())
            scale_out = scale_in if config.kind == "sae" else math.sqrt(config.d_out / y.pow(2).sum(-1).mean().clamp_min(1e-12).item())
        x, y = x * scale_in, y * scale_out
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, training)
        losses = dictionary.loss(x, y, step)
        for name, value in losses.items():
            if not torch.isfinite(value):
                raise DictionaryError(f"the {name} loss became {value.item()} at step {step}: lower the learning rate "
                                      "or check the activations for inf/NaN")
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        with torch.no_grad():
            if config.architecture != "relu":
                dictionary.W_dec /= dictionary.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
            if config.architecture == "jumprelu":
                dictionary.threshold.clamp_(min=0.0)
        tokens += x.shape[0]
        if step % training.log_every == 0 or step == steps - 1:
            with torch.no_grad():
                variance = (y - y.mean(0)).pow(2).sum(-1).mean()
                residual = (y - dictionary(x)[0]).pow(2).sum(-1).mean()
            history["step"].append(step)
            history["mse"].append(float(losses["mse"].detach()))
            history["l0"].append(float(losses["l0"]))
            history["explained_variance"].append(float(1 - residual / variance.clamp_min(1e-12)))
            history["dead_fraction"].append(dictionary.dead_fraction())
            bar.set_postfix(mse=f"{history['mse'][-1]:.4f}", l0=f"{history['l0'][-1]:.1f}",
                            ev=f"{history['explained_variance'][-1]:.3f}", dead=f"{history['dead_fraction'][-1]:.2f}")
        bar.update()
    bar.close()
    placement.synchronize()  # the clock reads finished work
    seconds = time.perf_counter() - start
    dictionary.eval()
    dictionary.to("cpu")
    dictionary.fold_scaling(scale_in, scale_out)
    if log:
        log(f"trained {steps} steps on {tokens:,} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    return TrainedDictionary(dictionary, history, scale_in, scale_out, tokens, seconds)



