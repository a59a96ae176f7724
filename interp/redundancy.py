"""Layer redundancy scores: how much each attention sublayer, MLP sublayer and block changes what
flows through it ("What Matters in Transformers? Not All Attention is Needed"; ShortGPT; FinerCut).

Similarity (one pass over calibration text): for a sublayer with residual input X (the stream
entering its pre-norm) and output Y = X + f(norm(X)), score = mean over tokens of cos(X, Y);
importance = 1 - score. A block's X and Y are its input and output residual streams (ShortGPT's
Block Influence). Angular distance arccos(cos) / pi is averaged over tokens alongside.

Ablation (one pass per unit): drop the unit and measure the change of the next-token loss and
the divergence of the output distribution from the intact model's. ``kl`` is the textbook
KL(P_full || P_dropped), summed over the vocabulary and averaged over every position; ``js`` is
the textbook Jensen-Shannon divergence 0.5 KL(P || M) + 0.5 KL(Q || M), M = (P + Q) / 2. (FinerCut's
released code computes a "JS divergence" with the KL arguments swapped; neither here does that.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.components import Site
from interp.corpus import row_batches
from interp.metrics import kl_divergence
from interp.layer_dropping import DropError, Unit, dropped, sublayers_of
from interp.metrics import next_token_loss

DIVERGENCES = ("kl", "js")
UnitLike = Union[Unit, str]


def check_tokens(tokens: torch.Tensor, what: str = "calibration") -> None:
    """One-line errors for token batches that cannot be scored."""
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise DropError(f"{what} text must be token ids [n_chunks >= 1, length >= 2], got shape {tuple(tokens.shape)}")


@dataclass
class SimilarityScores:
    """Mean cos(X, Y) and angular distance per unit, over ``n_tokens`` tokens."""

    units: list[Unit]
    cos: np.ndarray  # [n_units]
    angular: np.ndarray  # [n_units], in [0, 1]
    n_tokens: int
    n_forward_passes: int = 0

    @property
    def importance(self) -> np.ndarray:
        """1 - cos: 0 for a unit that leaves the stream unchanged."""
        return 1.0 - self.cos

    def of(self, unit: UnitLike) -> float:
        return float(self.cos[self.units.index(Unit.parse(unit))])


def _cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token cosine [tokens] in float64; exactly 1 where y equals x bit for bit
    (dot = |x|^2 = |y|^2 and sqrt(fl(s * s)) = s)."""
    x, y = x.double(), y.double()
    dot, xx, yy = (x * y).sum(-1), (x * x).sum(-1), (y * y).sum(-1)
    return (dot / (xx * yy).sqrt().clamp_min(1e-300)).clamp(-1.0, 1.0)


@torch.no_grad()
def similarity_scores(model, tokens: torch.Tensor, kinds: Sequence[str] = ("attn", "mlp", "block"),
                      skip_first: int = 0, last_token_only: bool = False, batch_size: int = 8,
                      already_dropped: Sequence[UnitLike] = (), progress: bool = False) -> SimilarityScores:
    """Similarity of every unit of ``kinds`` from one pass over ``tokens`` [n_chunks, length].

    ``skip_first`` drops the first tokens of each chunk (e.g. 1 for BOS); ``last_token_only``
    scores the last token alone. With ``already_dropped``, the model runs without those units
    (iterative dropping) and only the remaining ones are scored.
    """
    check_tokens(tokens)
    config = model.config
    gone = set(sublayers_of(already_dropped, config))
    if not 0 <= skip_first < tokens.shape[1]:
        raise DropError(f"skip_first={skip_first} leaves no tokens in chunks of {tokens.shape[1]}")
    units = [Unit(kind, layer) for kind in kinds for layer in range(config.n_layers)]
    units = [u for u in units if not set(u.sublayers) <= gone]
    sites = {Site("resid_pre", l) for l in range(config.n_layers)}
    sites |= {Site("attn_out", l) for l in range(config.n_layers) if Unit("attn", l) not in gone}
    sites |= {Site("mlp_out", l) for l in range(config.n_layers) if Unit("mlp", l) not in gone}
    cos_sum = torch.zeros(len(units), dtype=torch.float64)
    angle_sum = torch.zeros(len(units), dtype=torch.float64)
    n_tokens = 0
    batches = row_batches(tokens, batch_size)
    with dropped(model, gone):
        for batch in tqdm(batches, desc="similarity", disable=not progress, leave=False):
            _, cache = model.run_with_cache(batch, sites)
            keep = slice(-1, None) if last_token_only else slice(skip_first, None)
            for i, unit in enumerate(units):
                x, y = _unit_input_output(cache, unit, gone, config.parallel_attn_mlp)
                cos = _cosine(x[:, keep], y[:, keep]).reshape(-1)
                cos_sum[i] += cos.sum()
                angle_sum[i] += (torch.arccos(cos) / math.pi).sum()
            n_tokens += batch[:, keep].numel()
    return SimilarityScores(units, (cos_sum / n_tokens).numpy(), (angle_sum / n_tokens).numpy(), n_tokens, len(batches))


def _unit_input_output(cache, unit: Unit, gone: set[Unit], parallel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Y) of a unit from the cached block input and sublayer outputs (dropped ones add 0)."""
    layer = unit.layer
    x = cache[Site("resid_pre", layer)]
    attn = None if Unit("attn", layer) in gone else cache[Site("attn_out", layer)]
    mlp = None if Unit("mlp", layer) in gone else cache[Site("mlp_out", layer)]
    if unit.kind == "attn":
        return x, x + attn
    mid = x if parallel or attn is None else x + attn
    if unit.kind == "mlp":
        return mid, mid + mlp
    out = mid if mlp is None else mid + mlp
    return x, (out + attn if parallel and attn is not None else out)


def divergence(reference_logprobs: torch.Tensor, logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-position divergence [...] of two log-distributions over the last axis (see module doc)."""
    if kind == "kl":
        return kl_divergence(reference_logprobs, logprobs)
    if kind == "js":
        middle = torch.logaddexp(reference_logprobs, logprobs) - math.log(2.0)
        return 0.5 * (divergence(reference_logprobs, middle, "kl") + divergence(logprobs, middle, "kl"))
    raise DropError(f"unknown divergence {kind!r}; known: {', '.join(DIVERGENCES)}")


@dataclass
class OutputChange:
    """For each drop set: mean next-token loss (nats) and mean divergence from the intact model."""

    drop_sets: list[list[Unit]]
    loss: np.ndarray  # [n_sets]
    divergence: np.ndarray  # [n_sets]
    full_loss: float
    kind: str
    n_forward_passes: int


@torch.no_grad()
def output_change(model, tokens: torch.Tensor, drop_sets: Sequence[Sequence[UnitLike]], kind: str = "kl",
                  batch_size: int = 8, progress: bool = False, desc: str = "drop sets") -> OutputChange:
    """Loss and output divergence of the model with each set of units dropped (one forward per set
    and batch; the intact model's distribution is computed once per batch)."""
    check_tokens(tokens)
    if kind not in DIVERGENCES:
        raise DropError(f"unknown divergence {kind!r}; known: {', '.join(DIVERGENCES)}")
    sets = [sublayers_of(s, model.config) for s in drop_sets]
    loss_sum = torch.zeros(len(sets), dtype=torch.float64)
    div_sum = torch.zeros(len(sets), dtype=torch.float64)
    full_sum, n_tokens, n_forward = 0.0, 0, 0
    batches = row_batches(tokens, batch_size)
    bar = tqdm(total=len(batches) * (len(sets) + 1), desc=desc, disable=not progress, leave=False)
    for batch in batches:
        reference = model.run(batch).float().log_softmax(-1)
        full_sum += next_token_loss(reference, batch).double().sum().item()
        n_forward += 1
        bar.update()
        for i, units in enumerate(sets):
            with dropped(model, units):
                logprobs = model.run(batch).float().log_softmax(-1)
            loss_sum[i] += next_token_loss(logprobs, batch).double().sum()
            div_sum[i] += divergence(reference, logprobs, kind).double().sum()
            n_forward += 1
            bar.update()
        n_tokens += batch.shape[0] * (batch.shape[1] - 1)
    bar.close()
    n_positions = tokens.numel()
    return OutputChange(sets, (loss_sum / n_tokens).numpy(), (div_sum / n_positions).numpy(),
                        full_sum / n_tokens, kind, n_forward)


def ablation_scores(model, tokens: torch.Tensor, units: Sequence[UnitLike], kind: str = "kl",
                    batch_size: int = 8, progress: bool = False) -> OutputChange:
    """Each unit dropped alone: loss change = ``loss - full_loss``, and output divergence."""
    return output_change(model, tokens, [[u] for u in units], kind, batch_size, progress, desc="ablation")
