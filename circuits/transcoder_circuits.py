"""Feature circuits through transcoders ("Transcoders Find Interpretable LLM Feature Circuits").

Weights only (input-invariant):
- ``connections(up, down, gain)``: feature i of an upstream transcoder to feature j of a downstream
  one along the residual stream, W_dec_up[i] . (g * W_enc_down[:, j]), with g the downstream MLP
  pre-norm's elementwise gain (the input-dependent 1/rms scale left out);
- ``de_embedding(model, down, layer)``: the same from each token's embedding row.

On a prompt (input-dependent), ``attribution_graph`` builds the replacement model: every given
transcoder replaces its MLP (its error, MLP output minus prediction, is kept as a node so the run is
the model's own), latents and errors are held fixed, attention patterns are frozen, and gradients
then follow only the residual stream through attention's value/output path and the transcoders'
skip terms, as in the paper. The weight of edge i -> j is f_i * d(pre_j)/d(f_i) (pre_j: feature j's
pre-activation; for an embedding or error node, its vector dotted with the gradient); a node's
attribution to the target (a logit difference or a feature) is the same with the target in place
of pre_j. Nodes are pruned by influence on the target (rows of |A| normalized, influence = sum of
powers, kept up to ``node_threshold`` of the cumulative influence) and edges up to
``edge_threshold``. Norm scales are not frozen: gradients pass through them (circuit-tracer freezes
them too; here they are part of the linearization).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from circuits.dictionary import DictionaryError, SparseDictionary
from interp.components import Site
from interp.model import Model
from interp.sublayers import Sublayers

GRAPH_FORMAT = "interp-feature-graph"


def connections(up: SparseDictionary, down: SparseDictionary, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Input-invariant connection [d_sae_up, d_sae_down] = W_dec_up (g * W_enc_down)."""
    encoder = down.W_enc if gain is None else gain[:, None] * down.W_enc
    return (up.W_dec @ encoder).detach()


def de_embedding(model: Model, down: SparseDictionary, layer: int) -> torch.Tensor:
    """[d_vocab, d_sae]: each token embedding's direct input to each latent of the transcoder at
    ``layer`` (the embedding times the MLP pre-norm gain times W_enc)."""
    embedding = model.hf_model.get_input_embeddings().weight.float()
    return (embedding @ (Sublayers(model).mlp_norm_gain(layer)[:, None] * down.W_enc)).detach()


@dataclass
class ReplacementRun:
    """What a replacement-model forward recorded: latents [pos, d_sae] and errors [pos, d_model]
    per layer (leaves), embedding [pos, d_model] (leaf), pre-activations per layer, patterns."""

    latents: dict[int, torch.Tensor] = field(default_factory=dict)
    errors: dict[int, torch.Tensor] = field(default_factory=dict)
    pre: dict[int, torch.Tensor] = field(default_factory=dict)
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def _replacement_edits(model: Model, transcoders: dict[int, SparseDictionary], run: ReplacementRun,
                       fixed: ReplacementRun | None) -> dict:
    """Edits that splice the transcoders with leaf latents/errors and frozen patterns. With ``fixed``,
    latents, errors and patterns are taken from it instead of computed (for finite differences)."""
    sublayers = Sublayers(model)

    def embed(value: torch.Tensor) -> torch.Tensor:
        run.embedding = value.detach()[0].float().clone().requires_grad_()
        return run.embedding[None].to(value.dtype)

    def freeze(layer: int):
        def edit(value: torch.Tensor) -> torch.Tensor:
            run.patterns[layer] = fixed.patterns[layer] if fixed is not None else value.detach()
            return run.patterns[layer]
        return edit

    def replace(layer: int, dictionary: SparseDictionary):
        def edit(value: torch.Tensor, normalized: torch.Tensor) -> torch.Tensor:
            x = normalized[0].float()
            pre = dictionary.pre_activations(x)
            run.pre[layer] = pre
            latents = fixed.latents[layer] if fixed is not None else dictionary.activate(pre).detach()
            run.latents[layer] = latents.detach().clone().requires_grad_()
            out = dictionary.decode(run.latents[layer], x)
            error = fixed.errors[layer] if fixed is not None else value[0].float().detach() - out.detach()
            run.errors[layer] = error.detach().clone().requires_grad_()
            return (out + run.errors[layer])[None].to(value.dtype)
        return edit

    edits: dict[Site, list] = {Site("resid_pre", 0): [embed]}
    for layer in range(model.config.n_layers):
        edits[Site("pattern", layer)] = [freeze(layer)]
    for layer, dictionary in transcoders.items():
        for site, edit in sublayers.mlp_replacement_edits(layer, replace(layer, dictionary)).items():
            edits.setdefault(site, []).append(edit)
    return edits


def replacement_forward(model: Model, transcoders: dict[int, SparseDictionary], tokens: torch.Tensor,
                        fixed: ReplacementRun | None = None) -> ReplacementRun:
    """One forward of the replacement model on ``tokens`` [1, pos], with gradients enabled."""
    from interp.backends.base import RunSpec

    if model.backend.name != "transformer_lens":
        raise NotImplementedError("attribution graphs freeze attention patterns, which needs backend='transformer_lens'")
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"an attribution graph reads one prompt: tokens must be [1, pos], got {tuple(tokens.shape)}")
    for layer, dictionary in transcoders.items():
        if dictionary.config.kind == "sae":
            raise DictionaryError(f"the dictionary at layer {layer} is an SAE; attribution graphs need transcoders")
        if dictionary.config.d_in != model.config.d_model:
            raise DictionaryError(f"the transcoder at layer {layer} reads d_in={dictionary.config.d_in}; "
                                  f"{model.config.name} has d_model={model.config.d_model}")
    run = ReplacementRun()
    with torch.enable_grad():
        edits = _replacement_edits(model, transcoders, run, fixed)
        run.logits = model.forward(RunSpec(tokens, edits=edits, logits_to_keep=1)).logits[0, -1]
    return run


@dataclass
class Target:
    """What the graph explains: ``logit_diff`` of (answer, wrong) token ids at the last position,
    or the pre-activation of ``feature`` = (layer, latent, position)."""

    answer: int | None = None
    wrong: int | None = None
    feature: tuple[int, int, int] | None = None

    def value(self, run: ReplacementRun) -> torch.Tensor:
        if self.feature is not None:
            layer, latent, position = self.feature
            return run.pre[layer][position, latent]
        return run.logits[self.answer] - run.logits[self.wrong]

    def describe(self, model: Model) -> str:
        if self.feature is not None:
            layer, latent, position = self.feature
            return f"L{layer}.TC.{latent}@{position}"
        return f"logit({model.tokenizer.decode([self.answer])!r}) - logit({model.tokenizer.decode([self.wrong])!r})"


def _leaf_attributions(run: ReplacementRun, layers: list[int]) -> dict:
    """Attribution of every leaf to what was just differentiated: f * grad per latent, and the
    dot product for embeddings and errors."""
    out = {"embed": (run.embedding * run.embedding.grad).sum(-1).detach() if run.embedding.grad is not None
           else torch.zeros(run.embedding.shape[0])}
    for layer in layers:
        latents, errors = run.latents[layer], run.errors[layer]
        out[("feature", layer)] = (latents * latents.grad).detach() if latents.grad is not None else torch.zeros_like(latents)
        out[("error", layer)] = (errors * errors.grad).sum(-1).detach() if errors.grad is not None else torch.zeros(errors.shape[0])
    return out


def _zero_grads(run: ReplacementRun) -> None:
    for tensor in [run.embedding, *run.latents.values(), *run.errors.values()]:
        tensor.grad = None


def attribution_graph(model: Model, transcoders: dict[int, SparseDictionary], tokens: torch.Tensor, target: Target,
                      max_features: int = 64, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> dict:
    """The pruned attribution graph of ``target`` on one prompt (see the module docstring), as JSON-ready
    ``{"nodes": [...], "edges": [...], ...}``; nodes carry kind (embed/feature/error/logits), layer,
    position, latent, activation and influence, edges their weight."""
    layers = sorted(transcoders)
    run = replacement_forward(model, transcoders, tokens)
    value = target.value(run)
    value.backward(retain_graph=True)
    direct = _leaf_attributions(run, layers)
    candidates = []  # (layer, position, latent) of active features, most attributed first
    for layer in layers:
        scores = direct[("feature", layer)]
        for position, latent in zip(*torch.nonzero(run.latents[layer].detach() > 0, as_tuple=True)):
            candidates.append((abs(float(scores[position, latent])), layer, int(position), int(latent)))
    if target.feature is not None:  # only earlier layers can feed a feature
        candidates = [c for c in candidates if c[1] < target.feature[0]]
    candidates = [c[1:] for c in sorted(candidates, reverse=True)[:max_features]]
    n_pos = tokens.shape[1]
    nodes = ([("embed", -1, p, None) for p in range(n_pos)] + [("feature", l, p, i) for l, p, i in candidates]
             + [("error", l, p, None) for l in layers for p in range(n_pos)] + [("target", None, None, None)])
    index = {node: k for k, node in enumerate(nodes)}
    n = len(nodes)
    adjacency = np.zeros((n, n))  # [target node, source node]

    def fill_row(row: int, attributions: dict) -> None:
        for p in range(n_pos):
            adjacency[row, index[("embed", -1, p, None)]] = float(attributions["embed"][p])
            for l in layers:
                adjacency[row, index[("error", l, p, None)]] = float(attributions[("error", l)][p])
        for l, p, i in candidates:
            adjacency[row, index[("feature", l, p, i)]] = float(attributions[("feature", l)][p, i])

    fill_row(index[("target", None, None, None)], direct)
    for l, p, i in candidates:
        _zero_grads(run)
        run.pre[l][p, i].backward(retain_graph=True)
        fill_row(index[("feature", l, p, i)], _leaf_attributions(run, layers))
        adjacency[index[("feature", l, p, i)], index[("feature", l, p, i)]] = 0.0
    influence = _influence(adjacency, index[("target", None, None, None)])
    keep_nodes = _cumulative_keep(influence, node_threshold)
    keep_nodes[index[("target", None, None, None)]] = True
    edge_scores = np.abs(_normalized(adjacency)) * (influence + np.eye(n)[index[("target", None, None, None)]])[:, None]
    edge_scores[~keep_nodes] = 0
    edge_scores[:, ~keep_nodes] = 0
    keep_edges = _cumulative_keep(edge_scores.ravel(), edge_threshold).reshape(n, n) & (edge_scores > 0)
    str_tokens = model.to_str_tokens(tokens[0])

    def node_id(node) -> str:
        kind, layer, position, latent = node
        if kind == "target":
            return "TARGET"
        if kind == "embed":
            return f"EMBED@{position}"
        if kind == "error":
            return f"L{layer}.ERR@{position}"
        return f"L{layer}.TC.{latent}@{position}"

    out_nodes = []
    for k, node in enumerate(nodes):
        if not keep_nodes[k]:
            continue
        kind, layer, position, latent = node
        activation = float(run.latents[layer][position, latent].detach()) if kind == "feature" else None
        out_nodes.append({"id": node_id(node), "kind": kind, "layer": layer if kind != "target" else model.config.n_layers,
                          "position": position if position is not None else n_pos - 1, "latent": latent,
                          "activation": activation, "influence": float(influence[k]),
                          "attribution": float(adjacency[index[("target", None, None, None)], k])})
    rows, cols = np.nonzero(keep_edges)
    out_edges = [{"source": node_id(nodes[c]), "target": node_id(nodes[r]), "weight": float(adjacency[r, c])}
                 for r, c in zip(rows, cols)]
    return {"format": GRAPH_FORMAT, "model": model.config.name, "target": target.describe(model),
            "target_value": float(value.detach()), "tokens": str_tokens, "n_layers": model.config.n_layers,
            "transcoder_layers": layers, "node_threshold": node_threshold, "edge_threshold": edge_threshold,
            "n_candidates": len(candidates), "nodes": out_nodes, "edges": out_edges}


def _normalized(adjacency: np.ndarray) -> np.ndarray:
    magnitude = np.abs(adjacency)
    sums = magnitude.sum(axis=1, keepdims=True)
    return np.divide(magnitude, sums, out=np.zeros_like(magnitude), where=sums > 0)


def _influence(adjacency: np.ndarray, target: int) -> np.ndarray:
    """Influence of every node on ``target``: row ``target`` of sum_{k>=1} A^k with |A| row-normalized."""
    a = _normalized(adjacency)
    total = np.linalg.solve(np.eye(len(a)) - a.T, a.T).T  # sum_{k>=1} a^k = (I - a)^-1 a
    return total[target]


def _cumulative_keep(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The largest scores whose cumulative share first reaches ``threshold``."""
    order = np.argsort(-scores, kind="stable")
    total = scores.sum()
    keep = np.zeros(len(scores), dtype=bool)
    if total <= 0:
        return keep
    cumulative = np.cumsum(scores[order]) / total
    count = int(np.searchsorted(cumulative, threshold) + 1)
    keep[order[:count]] = True
    return keep
