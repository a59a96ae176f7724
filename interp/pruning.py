"""Pruning: which units to drop, how the pruned model does, and pruning curves over k.

Selection methods (``DROP_METHODS``): one-shot similarity rankings of attention sublayers, MLP
sublayers, blocks, or attention and MLP together; iterative attention dropping (re-score after
each drop); FinerCut's greedy search (remove the sublayer whose removal changes the output
distribution least, given those already removed); and random attention layers as the baseline.

Evaluation of a pruned model: held-out next-token loss and perplexity, task accuracy (fraction
of prompts whose answer logit beats the wrong answer's) and mean logit difference, forward
throughput on the held-out text and greedy generation throughput with the KV cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from interp import placement
from interp.layer_dropping import DropError, Unit, dropped, parameter_count, sublayer_counts, units_of
from interp.metrics import measure, next_token_loss
from interp.redundancy import SimilarityScores, check_tokens, output_change, similarity_scores

DROP_METHODS = {
    "attn": "attention sublayers, most similar first (one-shot)",
    "mlp": "MLP sublayers, most similar first (one-shot)",
    "block": "whole blocks, most similar first (one-shot)",
    "joint": "attention and MLP sublayers ranked together (one-shot)",
    "attn_iterative": "attention sublayers, re-scored after each drop",
    "greedy": "FinerCut: remove the sublayer whose removal changes the output distribution least",
    "random": "random attention sublayers (baseline, one curve per seed)",
}
EVAL_TASKS = ("ioi", "capitals", "greater_than")


@dataclass
class ScoringOptions:
    """How calibration text is scored: tokens skipped at the start of each chunk (1 = BOS),
    last token only, the output divergence (``kl`` or ``js``), chunks per forward."""

    skip_first: int = 0
    last_token_only: bool = False
    divergence: str = "kl"
    batch_size: int = 8

    def similarity(self, model, tokens: torch.Tensor, kinds: Sequence[str] = ("attn", "mlp", "block"),
                   already_dropped: Sequence[Unit] = (), progress: bool = False) -> SimilarityScores:
        """:func:`similarity_scores` with these options."""
        return similarity_scores(model, tokens, kinds, self.skip_first, self.last_token_only, self.batch_size,
                                 already_dropped, progress)


@dataclass
class DropOrder:
    """Units in the order a method drops them; ``values[i]`` is what chose unit i (its cos
    similarity, or for ``greedy`` the output divergence after removing it; NaN for random)."""

    method: str
    units: list[Unit]
    values: list[float]
    n_forward_passes: int = 0


def candidate_units(config, method: str) -> list[Unit]:
    """The units a method chooses from."""
    if method not in DROP_METHODS:
        raise DropError(f"unknown drop method {method!r}; known: {', '.join(DROP_METHODS)}")
    kind = {"attn": "attn", "attn_iterative": "attn", "random": "attn", "mlp": "mlp", "block": "block"}.get(method)
    return units_of(config, kind) if kind else units_of(config, "attn") + units_of(config, "mlp")


def drop_order(model, method: str, k: int, tokens: torch.Tensor, options: ScoringOptions | None = None,
               scores: SimilarityScores | None = None, seed: int = 0, progress: bool = False) -> DropOrder:
    """The first ``k`` units ``method`` drops, scored on calibration ``tokens`` [n_chunks, length].

    ``scores`` (similarity of the intact model) is reused by the one-shot methods when given.
    """
    options = options or ScoringOptions()
    candidates = candidate_units(model.config, method)
    if not 0 <= k <= len(candidates):
        raise DropError(f"cannot drop {k} units with method {method!r}: {model.config.name} has "
                        f"{len(candidates)} candidates ({model.config.n_layers} layers)")
    check_tokens(tokens)
    if method == "random":
        picked = np.random.default_rng(seed).permutation(len(candidates))[:k]
        return DropOrder(method, [candidates[i] for i in picked], [math.nan] * k)
    if method == "greedy":
        return _greedy(model, candidates, k, tokens, options, progress)
    if method == "attn_iterative":
        units, values, n_forward = [], [], 0
        for _ in tqdm(range(k), desc="iterative", disable=not progress, leave=False):
            step = options.similarity(model, tokens, kinds=("attn",), already_dropped=units)
            best = int(np.argmax(step.cos))
            units.append(step.units[best])
            values.append(float(step.cos[best]))
            n_forward += step.n_forward_passes
        return DropOrder(method, units, values, n_forward_passes=n_forward)
    scores = scores or options.similarity(model, tokens, kinds=sorted({u.kind for u in candidates}))
    cos = [scores.of(u) for u in candidates]
    order = sorted(range(len(candidates)), key=lambda i: -cos[i])[:k]
    return DropOrder(method, [candidates[i] for i in order], [cos[i] for i in order])


def _greedy(model, candidates: list[Unit], k: int, tokens: torch.Tensor, options: ScoringOptions,
            progress: bool) -> DropOrder:
    """FinerCut: at each step try removing each remaining sublayer on top of those removed and
    keep the removal with the smallest output divergence from the intact model."""
    removed: list[Unit] = []
    values: list[float] = []
    n_forward = 0
    for _ in tqdm(range(k), desc="greedy (FinerCut)", disable=not progress, leave=False):
        remaining = [u for u in candidates if u not in removed]
        change = output_change(model, tokens, [removed + [u] for u in remaining], options.divergence,
                               options.batch_size)
        best = int(np.argmin(change.divergence))
        removed.append(remaining[best])
        values.append(float(change.divergence[best]))
        n_forward += change.n_forward_passes
    return DropOrder("greedy", removed, values, n_forward_passes=n_forward)


# --------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationSet:
    """What a pruned model is evaluated on: held-out ``tokens`` [n, length], tasks, and
    ``prompts`` [b, t] for greedy generation of ``new_tokens`` tokens."""

    tokens: torch.Tensor
    tasks: dict = field(default_factory=dict)
    prompts: torch.Tensor | None = None
    new_tokens: int = 32
    batch_size: int = 8

    @classmethod
    def build(cls, model, held_out: torch.Tensor, tasks: Sequence[str] = EVAL_TASKS, n_prompts: int = 32,
              new_tokens: int = 32, prompt_length: int = 16, seed: int = 0, batch_size: int = 8) -> "EvaluationSet":
        """Held-out chunks, the named built-in tasks and generation prompts cut from the held-out text."""
        from interp.tasks import get_task

        check_tokens(held_out, "held-out")
        built = {name: get_task(model, name, n_prompts=n_prompts, seed=seed) for name in tasks}
        prompts = held_out[:4, :prompt_length] if new_tokens > 0 else None
        return cls(held_out, built, prompts, new_tokens, batch_size)


@torch.no_grad()
def evaluate(model, units: Sequence[Unit | str], evaluation: EvaluationSet, measure_speed: bool = True) -> dict:
    """Metrics of the model with ``units`` dropped (see module doc); speeds in tokens per second."""
    units = [Unit.parse(u) for u in units]
    n_attn, n_mlp = sublayer_counts(units)
    row: dict = {"dropped": [str(u) for u in units], "n_attn_dropped": n_attn, "n_mlp_dropped": n_mlp,
                 "parameters_dropped": parameter_count(model, units)}
    with dropped(model, units):
        if measure_speed:  # warm-up: the first forward of a configuration is slower
            model.run(evaluation.tokens[:1])
        start, total, count = time.perf_counter(), 0.0, 0
        for i in range(0, evaluation.tokens.shape[0], evaluation.batch_size):
            batch = evaluation.tokens[i:i + evaluation.batch_size]
            losses = next_token_loss(model.run(batch), batch)
            total, count = total + losses.double().sum().item(), count + losses.numel()
        seconds = time.perf_counter() - start
        row["loss"] = total / count
        row["perplexity"] = math.exp(row["loss"])
        for name, task in evaluation.tasks.items():
            diff = measure(model, task, "logit_diff")
            row[f"{name}_accuracy"] = (diff > 0).float().mean().item()
            row[f"{name}_logit_diff"] = diff.mean().item()
        if measure_speed:
            row["forward_tokens_per_s"] = evaluation.tokens.numel() / seconds
            if evaluation.prompts is not None:
                row["generation_tokens_per_s"] = generation_speed(model, evaluation.prompts, evaluation.new_tokens)
    return row


def generation_speed(model, prompts: torch.Tensor, new_tokens: int) -> float:
    """Greedy generation throughput with the KV cache, new tokens per second (whole batch),
    after a one-token warm-up generation (CUDA work finished before each clock read)."""
    model.generate(prompts, 1)
    placement.synchronize()
    start = time.perf_counter()
    model.generate(prompts, new_tokens)
    placement.synchronize()
    return prompts.shape[0] * new_tokens / (time.perf_counter() - start)


def speed_comparison(model, units: Sequence[Unit | str], prompts: torch.Tensor, new_tokens: int,
                     repeats: int = 3) -> dict:
    """Median greedy-generation throughput (new tokens/s) of the intact and the pruned model,
    timed alternately, and their ratio."""
    if repeats < 1:
        raise DropError(f"repeats must be at least 1, got {repeats}")
    timings: dict[str, list[float]] = {"full": [], "dropped": []}
    for _ in range(repeats):
        for name, drop in (("full", []), ("dropped", units)):
            with dropped(model, drop):
                timings[name].append(generation_speed(model, prompts, new_tokens))
    full, pruned = float(np.median(timings["full"])), float(np.median(timings["dropped"]))
    return {"full_generation_tokens_per_s": full, "dropped_generation_tokens_per_s": pruned,
            "generation_speedup": pruned / full, "repeats": repeats, "new_tokens": new_tokens,
            "batch": int(prompts.shape[0]), "prompt_length": int(prompts.shape[1]), "timings": timings}


# --------------------------------------------------------------------------- curves
def pruning_curves(model, tokens: torch.Tensor, evaluation: EvaluationSet, methods: Sequence[str], max_k: int,
                   options: ScoringOptions | None = None, seeds: Sequence[int] = (0, 1, 2),
                   scores: SimilarityScores | None = None, progress: bool = True) -> dict:
    """For each method (and each seed of ``random``) the model with its first k units dropped,
    k = 0..max_k, evaluated on ``evaluation``. Generation/forward speed depends on how many
    attention and MLP sublayers are dropped, not which, so it is measured once per count.

    Returns ``{"full": row, "curves": [{"name", "method", "seed", "dropped", "values", "points"}]}``.
    """
    options = options or ScoringOptions()
    for method in methods:
        candidate_units(model.config, method)
    full = evaluate(model, [], evaluation)
    speed_by_count = {(0, 0): {k: full[k] for k in ("forward_tokens_per_s", "generation_tokens_per_s") if k in full}}
    runs = [(m, s) for m in methods for s in (seeds if m == "random" else [None])]
    curves = []
    for method, seed in tqdm(runs, desc="pruning curves", disable=not progress):
        order = drop_order(model, method, max_k, tokens, options, scores=scores, seed=seed or 0, progress=progress)
        points = [full]
        for k in range(1, max_k + 1):
            units = order.units[:k]
            count = sublayer_counts(units)
            row = evaluate(model, units, evaluation, measure_speed=count not in speed_by_count)
            if count not in speed_by_count:
                speed_by_count[count] = {key: row[key] for key in speed_by_count[(0, 0)]}
            points.append({**row, **speed_by_count[count]})
        curves.append({"name": method if seed is None else f"random/seed{seed}", "method": method, "seed": seed,
                       "dropped": [str(u) for u in order.units], "values": order.values,
                       "selection_forward_passes": order.n_forward_passes, "points": points})
    return {"full": full, "curves": curves, "max_k": max_k, "options": asdict(options)}


def curve_values(curves: dict, name: str, key: str) -> np.ndarray:
    """One metric along one curve (k = 0..max_k); ``name="random"`` averages the random seeds."""
    picked = [c for c in curves["curves"] if c["name"] == name or (name == "random" and c["method"] == "random")]
    if not picked:
        raise DropError(f"no pruning curve named {name!r}")
    return np.mean([[p.get(key, math.nan) for p in c["points"]] for c in picked], axis=0)


def findings(scores: SimilarityScores, curves: dict | None, n_layers: int) -> dict:
    """Whether the paper's three findings hold on this model, with the numbers behind each."""
    attn = np.array([scores.of(Unit("attn", l)) for l in range(n_layers)])
    mlp = np.array([scores.of(Unit("mlp", l)) for l in range(n_layers)])
    attn_importance, mlp_importance = 1 - attn, 1 - mlp
    k = curves["max_k"] if curves else max(1, n_layers // 3)
    most_redundant = [int(i) for i in np.argsort(attn_importance, kind="stable")[:k]]
    result = {
        "attention_more_redundant_than_mlp": {
            "holds": bool(attn_importance.mean() < mlp_importance.mean()),
            "mean_attention_importance": float(attn_importance.mean()),
            "mean_mlp_importance": float(mlp_importance.mean()),
            "fraction_of_layers_attention_below_mlp": float((attn_importance < mlp_importance).mean()),
        },
        "redundant_attention_in_deeper_layers": {
            "holds": bool(np.mean(most_redundant) > (n_layers - 1) / 2),
            "most_redundant_attention_layers": most_redundant,
            "fraction_in_second_half": float(np.mean([l >= n_layers / 2 for l in most_redundant])),
            "fraction_in_last_third": float(np.mean([l >= 2 * n_layers / 3 for l in most_redundant])),
        },
    }
    names = {c["name"] for c in curves["curves"]} if curves else set()
    if curves and "attn" in names and ("mlp" in names or any(n.startswith("random") for n in names)):
        attn_ppl = curve_values(curves, "attn", "perplexity")[1:]
        check: dict = {"k": list(range(1, k + 1)), "attn_perplexity": attn_ppl.tolist()}
        holds = True
        for other in ("mlp", "random"):
            if other in names or (other == "random" and any(n.startswith("random") for n in names)):
                other_ppl = curve_values(curves, other, "perplexity")[1:]
                check[f"{other}_perplexity"] = other_ppl.tolist()
                check[f"k_where_attn_beats_{other}"] = [i + 1 for i in range(k) if attn_ppl[i] < other_ppl[i]]
                holds = holds and bool(np.all(attn_ppl < other_ppl))
        check["holds"] = holds
        result["dropping_similar_attention_hurts_less"] = check
    return result
