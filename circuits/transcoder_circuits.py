"""Feature circuits through transcoders ("Transcoders Find Interpretable LLM Feature Circuits").

Weights only (input-invariant):
- ``connections(up, down, gain)``: feature i of an upstream transcoder to feature j of a downstream
  one along the residual stream, W_dec_up[i] . (g * W_enc_down[:, j]), with g the downstream MLP
  pre-norm's elementwise gain (the input-dependent 1/rms scale left out);
- ``de_embedding(model, down, layer)``: the same from each token's embedding row.

On a prompt (input-dependent), ``attribution_matrix`` builds the replacement model: every given
transcoder replaces its MLP (its error, MLP output minus prediction, is kept as a node so the run is
the model's own), latents and errors are held fixed, attention patterns are frozen and, with
``freeze_norms`` (the default, as in the transcoder paper and circuit-tracer), so are the norms'
scales: the run is then linear in its leaves (embeddings, latents, errors). Gradients follow the
residual stream through attention's value/output path (``circuits.attention_circuits``: the OV
circuit times the attention weight over the norm scale) and the transcoders' skip terms. The
``max_heads`` heads (head h of layer m at destination t) that matter most to the target become
nodes of their own: their writes are cut out of the gradient paths, so an edge through such a head
goes source -> head -> destination. A head node's value is its write dotted with the target's
gradient there (o . dT/do in the uncut run). The weight of edge i -> j is f_i * d(value_j)/d(f_i)
(value_j: feature j's pre-activation, a head's value, or the target; for an embedding, error or
head source, its vector dotted with the gradient). ``attribution_graph`` prunes nodes by influence
on the target (rows of |A| normalized, influence = sum of powers, kept up to ``node_threshold`` of
the cumulative influence) and edges up to ``edge_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from circuits.dictionary import DictionaryError, SparseDictionary
from interp.components import Site
from interp import placement
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
    embedding = placement.weight(model.hf_model.get_input_embeddings()).float()
    return (embedding @ (Sublayers(model).norm_gain("mlp", layer)[:, None] * down.W_enc)).detach()


@dataclass
class ReplacementRun:
    """What a replacement-model forward recorded for one prompt: latents [pos, d_sae] and errors
    [pos, d_model] per transcoder layer (leaves), the embedding [pos, d_model] (leaf), feature
    pre-activations, frozen patterns, each layer's head writes [pos, n_heads, d_model] (in the
    graph), the leaves standing in for the cut heads, and each attention output [1, pos, d_model]."""

    latents: dict[int, torch.Tensor] = field(default_factory=dict)
    errors: dict[int, torch.Tensor] = field(default_factory=dict)
    pre: dict[int, torch.Tensor] = field(default_factory=dict)
    patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    head_leaves: dict[int, torch.Tensor] = field(default_factory=dict)
    attn_out: dict[int, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def leaves(self) -> list[torch.Tensor]:
        return [self.embedding, *self.latents.values(), *self.errors.values(), *self.head_leaves.values()]


def _replacement_edits(model: Model, transcoders: dict[int, SparseDictionary], run: ReplacementRun,
                       fixed: ReplacementRun | None, freeze_norms: bool, cut_heads: dict[int, torch.Tensor]) -> tuple[dict, dict]:
    """Edits that splice the transcoders with leaf latents/errors, frozen patterns (and norm
    scales), and cut heads (``cut_heads``: layer -> bool [pos, n_heads]), and the dict where the
    forward leaves each layer's residual input (key "final": the last block's output). With
    ``fixed``, latents, errors and patterns are taken from it instead of computed (for finite
    differences)."""
    sublayers = Sublayers(model)
    resid: dict[int, torch.Tensor] = {}
    z: dict[int, torch.Tensor] = {}

    def embed(value: torch.Tensor) -> torch.Tensor:
        run.embedding = value.detach()[0].float().clone().requires_grad_()
        return run.embedding[None].to(value.dtype)

    def keep(store: dict, layer: int):
        def edit(value: torch.Tensor) -> torch.Tensor:
            store[layer] = value
            return value
        return edit

    def freeze(layer: int):
        def edit(value: torch.Tensor) -> torch.Tensor:
            run.patterns[layer] = fixed.patterns[layer] if fixed is not None else value.detach()
            return run.patterns[layer]
        return edit

    def frozen_values(layer: int):  # the value path with the attention pre-norm's scale held fixed
        def edit(value: torch.Tensor) -> torch.Tensor:
            linear = sublayers.attention_projections(layer, sublayers.frozen_norm("attn", layer, resid[layer]))[2]
            return value.detach() + (linear - linear.detach()).to(value.dtype)
        return edit

    def split_heads(layer: int):  # record each head's write; cut the chosen ones out of the gradient paths
        def edit(value: torch.Tensor) -> torch.Tensor:
            run.heads[layer] = sublayers.head_outputs(layer, z[layer][0]).float()
            if layer in cut_heads:
                mask = cut_heads[layer][..., None].float()
                run.head_leaves[layer] = run.heads[layer].detach().clone().requires_grad_()
                value = value + ((run.head_leaves[layer] - run.heads[layer]) * mask).sum(1)[None].to(value.dtype)
            if value.requires_grad:
                value.retain_grad()
            run.attn_out[layer] = value
            return value
        return edit

    def final(value: torch.Tensor) -> torch.Tensor:
        resid["final"] = value
        return value

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
        edits.setdefault(Site("resid_pre", layer), []).append(keep(resid, layer))
        edits[Site("pattern", layer)] = [freeze(layer)]
        if freeze_norms:
            edits[Site("v", layer)] = [frozen_values(layer)]
        edits[Site("z", layer)] = [keep(z, layer)]
        edits[Site("attn_out", layer)] = [split_heads(layer)]
    edits[Site("resid_post", model.config.n_layers - 1)] = [final]
    for layer, dictionary in transcoders.items():
        for site, edit in sublayers.mlp_replacement_edits(layer, replace(layer, dictionary), freeze_norms).items():
            edits.setdefault(site, []).append(edit)
    return edits, resid


def replacement_forward(model: Model, transcoders: dict[int, SparseDictionary], tokens: torch.Tensor,
                        fixed: ReplacementRun | None = None, *, freeze_norms: bool = True,
                        cut_heads: dict[int, torch.Tensor] | None = None) -> ReplacementRun:
    """One forward of the replacement model on ``tokens`` [1, pos], with gradients enabled.

    ``freeze_norms``: gradients see every norm's scale (attention, MLP and final pre-norms) as a
    constant. ``cut_heads``: layer -> bool [pos, n_heads], the heads whose writes become leaves
    (``run.head_leaves``)."""
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
        edits, resid = _replacement_edits(model, transcoders, run, fixed, freeze_norms, cut_heads or {})
        logits = model.forward(RunSpec(tokens, edits=edits, logits_to_keep=1)).logits[0, -1]
        if freeze_norms:  # the logits' value, with the gradient of the frozen final norm and the unembedding
            normed = Sublayers(model).frozen_norm("final", None, resid["final"][0, -1].float())
            linear = normed @ placement.weight(model.hf_model.get_output_embeddings()).float().T
            logits = logits.detach().float() + (linear - linear.detach())
        run.logits = logits
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


Node = tuple[str, int | None, int | None, int | None]  # (kind, layer, position, latent or head)


@dataclass
class AttributionMatrix:
    """The unpruned graph: ``nodes`` (kind embed/feature/error/head/target, layer, position, latent
    or head), ``adjacency`` [n, n] with adjacency[j, i] the weight of edge i -> j, ``values`` [n]
    (a feature's activation, a head's o . dT/do, the target's value; None for embeddings/errors)."""

    nodes: list[Node]
    adjacency: np.ndarray
    values: list[float | None]
    target_value: float

    def index(self, node: Node) -> int:
        return self.nodes.index(node)


def _leaf_attributions(run: ReplacementRun, layers: list[int]) -> dict:
    """Attribution of every leaf to what was just differentiated: f * grad per latent, and the
    dot product for embeddings, errors and cut heads."""

    def dot(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor * tensor.grad).sum(-1).detach() if tensor.grad is not None else torch.zeros(tensor.shape[:-1])

    out = {"embed": dot(run.embedding)}
    for layer in layers:
        latents = run.latents[layer]
        out[("feature", layer)] = (latents * latents.grad).detach() if latents.grad is not None else torch.zeros_like(latents)
        out[("error", layer)] = dot(run.errors[layer])
    for layer, leaf in run.head_leaves.items():
        out[("head", layer)] = dot(leaf)  # [pos, n_heads]
    return out


def _zero_grads(run: ReplacementRun) -> None:
    for tensor in run.leaves():
        tensor.grad = None


def _top_heads(run: ReplacementRun, limit: int) -> tuple[list[tuple[int, int, int]], dict[int, torch.Tensor]]:
    """The ``limit`` (layer, position, head) whose writes matter most to what was differentiated
    (|o . dT/do|, after a backward of the uncut run), and dT/d attn_out per layer [pos, d_model]."""
    gradients = {layer: (out.grad if out.grad is not None else torch.zeros_like(out)).detach()[0]
                 for layer, out in run.attn_out.items()}
    scored = []
    for layer, heads in run.heads.items():
        scores = (heads.detach() * gradients[layer].float()[:, None]).sum(-1)  # [pos, n_heads]
        for position, head in zip(*torch.nonzero(scores != 0, as_tuple=True)):
            scored.append((abs(float(scores[position, head])), layer, int(position), int(head)))
    return [c[1:] for c in sorted(scored, reverse=True)[:limit]], gradients


def attribution_matrix(model: Model, transcoders: dict[int, SparseDictionary], tokens: torch.Tensor, target: Target,
                       max_features: int = 64, max_heads: int = 16, freeze_norms: bool = True) -> AttributionMatrix:
    """The unpruned attribution graph of ``target`` on one prompt (see the module docstring): the
    ``max_features`` active features and ``max_heads`` heads most attributed to the target in the
    uncut replacement model, every embedding and error node, and the target."""
    if max_features < 0 or max_heads < 0:
        raise ValueError(f"max_features and max_heads must be >= 0, got {max_features} and {max_heads}")
    layers = sorted(transcoders)
    n_pos = tokens.shape[1]
    uncut = replacement_forward(model, transcoders, tokens, freeze_norms=freeze_norms)
    value = target.value(uncut)
    value.backward()
    total = _leaf_attributions(uncut, layers)
    candidates = []  # (layer, position, latent) of active features, most attributed first
    for layer in layers:
        scores = total[("feature", layer)]
        for position, latent in zip(*torch.nonzero(uncut.latents[layer].detach() > 0, as_tuple=True)):
            candidates.append((abs(float(scores[position, latent])), layer, int(position), int(latent)))
    if target.feature is not None:  # only earlier layers can feed a feature
        candidates = [c for c in candidates if c[1] < target.feature[0]]
    candidates = [c[1:] for c in sorted(candidates, reverse=True)[:max_features]]
    heads, gradients = _top_heads(uncut, max_heads)
    cut = {}
    for layer, position, head in heads:
        cut.setdefault(layer, torch.zeros(n_pos, model.config.n_heads, dtype=torch.bool))[position, head] = True
    run = replacement_forward(model, transcoders, tokens, freeze_norms=freeze_norms, cut_heads=cut)

    nodes: list[Node] = ([("embed", -1, p, None) for p in range(n_pos)] + [("feature", l, p, i) for l, p, i in candidates]
                         + [("head", l, p, h) for l, p, h in heads]
                         + [("error", l, p, None) for l in layers for p in range(n_pos)] + [("target", None, None, None)])
    index = {node: k for k, node in enumerate(nodes)}
    adjacency = np.zeros((len(nodes), len(nodes)))  # [target node, source node]

    def fill_row(node: Node, scalar: torch.Tensor) -> None:
        _zero_grads(run)
        scalar.backward(retain_graph=True)
        attributions = _leaf_attributions(run, layers)
        row = adjacency[index[node]]
        for p in range(n_pos):
            row[index[("embed", -1, p, None)]] = float(attributions["embed"][p])
            for l in layers:
                row[index[("error", l, p, None)]] = float(attributions[("error", l)][p])
        for l, p, i in candidates:
            row[index[("feature", l, p, i)]] = float(attributions[("feature", l)][p, i])
        for l, p, h in heads:
            row[index[("head", l, p, h)]] = float(attributions[("head", l)][p, h])
        row[index[node]] = 0.0

    values: list[float | None] = [None] * len(nodes)
    fill_row(("target", None, None, None), target.value(run))
    values[-1] = float(value.detach())
    for l, p, i in candidates:
        fill_row(("feature", l, p, i), run.pre[l][p, i])
        values[index[("feature", l, p, i)]] = float(run.latents[l][p, i].detach())
    for l, p, h in heads:
        head_value = run.heads[l][p, h] @ gradients[l][p].float()
        fill_row(("head", l, p, h), head_value)
        values[index[("head", l, p, h)]] = float(head_value.detach())
    return AttributionMatrix(nodes, adjacency, values, float(value.detach()))


def attribution_graph(model: Model, transcoders: dict[int, SparseDictionary], tokens: torch.Tensor, target: Target,
                      max_features: int = 64, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                      max_heads: int = 16, freeze_norms: bool = True) -> dict:
    """The pruned attribution graph of ``target`` on one prompt (see the module docstring), as JSON-ready
    ``{"nodes": [...], "edges": [...], ...}``; nodes carry kind (embed/feature/head/error/target), layer,
    position, latent (features) or head (heads), activation (a feature's) or value (a head's o . dT/do),
    influence and direct attribution to the target; edges their weight."""
    matrix = attribution_matrix(model, transcoders, tokens, target, max_features, max_heads, freeze_norms)
    nodes, adjacency = matrix.nodes, matrix.adjacency
    n = len(nodes)
    target_index = n - 1
    influence = _influence(adjacency, target_index)
    keep_nodes = _cumulative_keep(influence, node_threshold)
    keep_nodes[target_index] = True
    edge_scores = np.abs(_normalized(adjacency)) * (influence + np.eye(n)[target_index])[:, None]
    edge_scores[~keep_nodes] = 0
    edge_scores[:, ~keep_nodes] = 0
    keep_edges = _cumulative_keep(edge_scores.ravel(), edge_threshold).reshape(n, n) & (edge_scores > 0)
    n_pos = tokens.shape[1]

    def node_id(node: Node) -> str:
        kind, layer, position, index = node
        return {"target": "TARGET", "embed": f"EMBED@{position}", "error": f"L{layer}.TC_ERR@{position}",
                "head": f"L{layer}.H{index}@{position}"}.get(kind, f"L{layer}.TC.{index}@{position}")

    out_nodes = []
    for k, node in enumerate(nodes):
        if not keep_nodes[k]:
            continue
        kind, layer, position, index = node
        out_nodes.append({"id": node_id(node), "kind": kind, "layer": layer if kind != "target" else model.config.n_layers,
                          "position": position if position is not None else n_pos - 1,
                          "latent": index if kind == "feature" else None, "head": index if kind == "head" else None,
                          "activation": matrix.values[k] if kind == "feature" else None,
                          "value": matrix.values[k] if kind == "head" else None, "influence": float(influence[k]),
                          "attribution": float(adjacency[target_index, k])})
    rows, cols = np.nonzero(keep_edges)
    out_edges = [{"source": node_id(nodes[c]), "target": node_id(nodes[r]), "weight": float(adjacency[r, c])}
                 for r, c in zip(rows, cols)]
    return {"format": GRAPH_FORMAT, "model": model.config.name, "target": target.describe(model),
            "target_value": matrix.target_value, "tokens": model.to_str_tokens(tokens[0]), "n_layers": model.config.n_layers,
            "transcoder_layers": sorted(transcoders), "node_threshold": node_threshold, "edge_threshold": edge_threshold,
            "freeze_norms": freeze_norms, "n_candidates": sum(node[0] == "feature" for node in nodes),
            "n_candidate_heads": sum(node[0] == "head" for node in nodes), "nodes": out_nodes, "edges": out_edges}


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
