"""How well a weight subnetwork makes bigram predictions, and where its weights are.

* :func:`bigram_fit`: Pearson r between the (masked) model's surprisals and the bigram model's on
  held-out text, cross-entropy to the bigram distribution, and the language-model loss;
* :func:`ablation_table`: the same for the full model, the subnetwork, a random mask with the
  subnetwork's per-matrix sparsity, and the subnetwork's complement;
* :func:`kept_by_matrix` / :func:`kept_by_layer`: where the kept weights are;
* :func:`mask_overlap`: overlap of two masks against a row-shuffle permutation null;
* :func:`residual_maps`: per-layer ridge maps from the residual stream to the final layer and to
  the current token's embedding (R^2 on held-out tokens).

Surprisals are in nats.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from circuits.bigram_table import BigramTable
from circuits.weight_masks import MaskableMatrix, complement, masked, random_like
from interp.corpus import row_batches
from interp import placement
from interp.model import Model


@torch.no_grad()
def _statistics(model: Model, chunks: torch.Tensor, table: BigramTable, batch_size: int) -> dict[str, np.ndarray]:
    """Per-token model surprisal of the actual next token and cross-entropy to the bigram row."""
    surprisal, cross_entropy = [], []
    for tokens in row_batches(chunks, batch_size):
        log_probs = torch.log_softmax(model.run(tokens.to(model.device)).float(), dim=-1)
        nexts = tokens[:, 1:].to(log_probs.device)
        surprisal.append(-log_probs[:, :-1].gather(-1, nexts[..., None])[..., 0].cpu().double())
        cross_entropy.append(table.cross_entropy(log_probs[:, :-1], tokens[:, :-1]).cpu().double())
    return {"surprisal": torch.cat(surprisal).numpy().ravel(), "cross_entropy": torch.cat(cross_entropy).numpy().ravel()}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def bigram_surprisal(table: BigramTable, chunks: torch.Tensor) -> np.ndarray:
    """-log P_bigram(next | current) for every next token of ``chunks`` [n, T] (n * (T-1) values; inf where 0)."""
    return -table.log_prob(chunks[:, :-1], chunks[:, 1:]).numpy().ravel()


def surprisal_pairs(model: Model, chunks: torch.Tensor, table: BigramTable,
                    masks: Mapping[str, torch.Tensor] | None = None, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per next token of ``chunks`` [n, T] (n * (T-1) values): ``model`` surprisal (masked if
    ``masks``), ``bigram`` surprisal (inf where the bigram probability is 0) and
    ``cross_entropy`` of the model's distribution to the bigram row, in nats."""
    with masked(model, dict(masks or {})):
        stats = _statistics(model, chunks, table, batch_size)
    return {"model": stats["surprisal"], "bigram": bigram_surprisal(table, chunks), "cross_entropy": stats["cross_entropy"]}


def bigram_fit(model: Model, chunks: torch.Tensor, table: BigramTable, masks: Mapping[str, torch.Tensor] | None = None,
               batch_size: int = 8, smoothing: float = 1.0) -> dict:
    """How bigram-like the (masked) model's predictions are on held-out ``chunks`` [n, T].

    Returns ``r`` (Pearson r of surprisals over tokens whose bigram probability is nonzero),
    ``r_smoothed`` (over all tokens, bigram surprisal from the table with ``smoothing`` pseudo-counts
    of the back-off distribution), ``zero_probability_fraction``, ``cross_entropy_to_bigram`` and
    ``lm_loss`` (mean surprisal of the actual tokens), in nats.
    """
    pairs = surprisal_pairs(model, chunks, table, masks, batch_size)
    reference = pairs["bigram"]
    finite = np.isfinite(reference)
    smoothed = bigram_surprisal(table.with_alpha(smoothing), chunks) if table.alpha == 0 else reference
    return {
        "r": _pearson(pairs["model"][finite], reference[finite]),
        "r_smoothed": _pearson(pairs["model"], smoothed),
        "zero_probability_fraction": float(1 - finite.mean()),
        "cross_entropy_to_bigram": float(pairs["cross_entropy"].mean()),
        "lm_loss": float(pairs["model"].mean()),
        "n_tokens": int(len(reference)),
    }


def ablation_table(model: Model, chunks: torch.Tensor, table: BigramTable, masks: Mapping[str, torch.Tensor],
                   seed: int = 0, batch_size: int = 8) -> dict[str, dict]:
    """:func:`bigram_fit` plus ``kept_fraction`` for: ``full`` (no mask), ``subnetwork``,
    ``random`` (same per-matrix sparsity, seeded) and ``complement`` (every weight but the subnetwork's)."""
    variants = {"full": {}, "subnetwork": dict(masks), "random": random_like(masks, seed), "complement": complement(masks)}
    total = sum(int(m.numel()) for m in masks.values())
    rows = {}
    for name, variant in variants.items():
        kept = sum(int(m.sum()) for m in variant.values()) / total if variant else 1.0
        rows[name] = {"kept_fraction": kept, **bigram_fit(model, chunks, table, variant, batch_size)}
    return rows


def kept_by_matrix(matrices: Sequence[MaskableMatrix], masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Kept fraction of each matrix, by label (``L0.MLP.up_proj``)."""
    return {m.label: float(masks[m.name].float().mean()) for m in matrices}


def kept_by_layer(matrices: Sequence[MaskableMatrix], masks: Mapping[str, torch.Tensor], n_layers: int) -> np.ndarray:
    """Kept fraction [n_layers, 2] of each layer's attention (column 0) and MLP (column 1) weights."""
    kept = np.zeros((n_layers, 2))
    total = np.zeros((n_layers, 2))
    for m in matrices:
        column = 0 if m.sublayer == "attn" else 1
        kept[m.layer, column] += int(masks[m.name].sum())
        total[m.layer, column] += m.numel
    return kept / np.maximum(total, 1)


def mask_overlap(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], n_permutations: int = 20,
                 seed: int = 0) -> dict:
    """Overlap of two masks over the same matrices, against a row-shuffle null.

    ``overlap`` = |a & b| / min(|a|, |b|); ``jaccard`` = |a & b| / |a | b|. The null shuffles the
    rows of every matrix of ``b`` (keeping each row's pattern and each matrix's sparsity);
    ``p_value`` is the fraction of shuffles (with +1 smoothing) whose overlap reaches the observed one.
    """
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[0]
        raise ValueError(f"the two masks cover different weights (e.g. {missing!r})")

    def overlap(x: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        both = sum(int((x[k] & y[k]).sum()) for k in x)
        either = sum(int((x[k] | y[k]).sum()) for k in x)
        smaller = min(sum(int(x[k].sum()) for k in x), sum(int(y[k].sum()) for k in y))
        return both / max(smaller, 1), both / max(either, 1)

    observed, jaccard = overlap(a, b)
    generator = torch.Generator().manual_seed(seed)
    null = []
    for _ in range(n_permutations):
        shuffled = {k: m[torch.randperm(m.shape[0], generator=generator)] for k, m in b.items()}
        null.append(overlap(a, shuffled)[0])
    null_array = np.asarray(null)
    return {"overlap": observed, "jaccard": jaccard, "null_mean": float(null_array.mean()) if null else float("nan"),
            "null_std": float(null_array.std()) if null else float("nan"),
            "p_value": float((1 + (null_array >= observed).sum()) / (1 + len(null))), "n_permutations": n_permutations}


@torch.no_grad()
def residual_maps(model: Model, chunks: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None,
                  ridge: float = 1.0, max_tokens: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    """R^2 of ridge maps from the residual stream after each layer to (a) the final layer's residual
    stream and (b) the current token's input embedding, on held-out tokens (variance-weighted over
    output dimensions: the fraction of the target's total variance explained).

    Returns ``to_final`` and ``to_embedding``, each [n_layers + 1]: entry 0 is the stream entering
    layer 0 (the embedding), entry l + 1 the stream leaving layer l. Features are standardized
    before the ridge (penalty ``ridge``). Tokens are split into fit and test halves by chunk, so no
    chunk is in both.
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_layers = model.config.n_layers
    sites = ["L0.RESID_PRE"] + [f"L{layer}.RESID_POST" for layer in range(n_layers)]
    streams: list[list[torch.Tensor]] = [[] for _ in sites]
    groups = []
    with masked(model, dict(masks or {})):
        for index, tokens in enumerate(row_batches(chunks, 8)):
            _, cache = model.run_with_cache(tokens.to(model.device), sites)
            for k, site in enumerate(sites):
                streams[k].append(cache[site].reshape(-1, cache[site].shape[-1]).double().cpu())
            groups.append(torch.arange(len(tokens)).repeat_interleave(tokens.shape[1]) + index * 8)
    embedding = placement.weight(model.hf_model.get_input_embeddings()).detach().double().cpu()[chunks.reshape(-1)]
    group = torch.cat(groups).numpy()
    stacked = [torch.cat(s).numpy() for s in streams]
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(group))[:max_tokens]
    fit_groups = set(rng.permutation(np.unique(group))[: max(1, len(np.unique(group)) // 2)].tolist())
    is_fit = np.array([g in fit_groups for g in group[chosen]])
    if is_fit.all() or not is_fit.any():
        raise ValueError("residual maps need at least 2 held-out chunks")
    out = {"to_final": np.zeros(len(sites)), "to_embedding": np.zeros(len(sites))}
    for key, target in (("to_final", stacked[-1]), ("to_embedding", embedding.numpy())):
        y = target[chosen]
        for k, x in enumerate(stacked):
            fitted = make_pipeline(StandardScaler(), Ridge(alpha=ridge)).fit(x[chosen][is_fit], y[is_fit])
            out[key][k] = r2_score(y[~is_fit], fitted.predict(x[chosen][~is_fit]), multioutput="variance_weighted")
    return out
