"""One forward with the graph cut at every block, then backward passes block by block.

The residual stream entering each block is detached and made a leaf, so the backward can be
driven by hand one block at a time. That gives, from one forward, both the ordinary gradient
and GradDrop's gradients: for a dropped unit (a block, or one attention/MLP sublayer) the
backward skips the unit's write to the residual stream (its cotangent flows through the skip
connection only), and every unit's backward below it reuses the same graph.

Cost: the plain gradient is one backward; GradDrop with U units adds, per unit, a backward
through the layers below it (about U/2 full backwards in all). At each layer the backwards of every
unit dropped above it go through the block together, as one batched vector-Jacobian product
(``is_grads_batched``): the same arithmetic in one call per layer instead of one per unit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch

from interp import shortcuts
from interp.backends.base import RunSpec
from interp.components import ACTIVATION_KINDS, Site

GRAD_DROP_UNITS = ("block", "sublayer")
ATTENTION_KINDS = frozenset(kind for kind, k in ACTIVATION_KINDS.items() if k.sublayer == "attn")
MLP_KINDS = frozenset(kind for kind, k in ACTIVATION_KINDS.items() if k.sublayer == "mlp")

T = TypeVar("T")
Write = tuple[int, str]  # (layer, "block" | "attn" | "mlp"): a residual-stream write GradDrop can drop


@dataclass
class TracedRun:
    """The cut graph of one forward: per-prompt metric values and activations in the graph."""

    metric: torch.Tensor  # [n_prompts], detached
    total: torch.Tensor  # scalar: sum of the per-prompt metrics, in the graph
    activations: dict[Site, torch.Tensor]
    n_layers: int
    parallel: bool  # attention and MLP read the same residual (no resid_mid)
    hosts: dict[Site, Site]  # a spliced dictionary's latents / error term -> the activation it replaces
    checked_backwards: int = 0  # block backwards spent checking the batched ones (``layer_gradients``)

    def sublayer(self, site: Site) -> str | None:
        """"attn" or "mlp": which residual-stream write a site is part of (None: neither)."""
        kind = self.hosts.get(site, site).kind
        return "attn" if kind in ATTENTION_KINDS else "mlp" if kind in MLP_KINDS else None


def traced_run(model, spec: RunSpec, metric_of, grad_drop: str | None, then: Callable[[TracedRun], T]) -> tuple[torch.Tensor, T]:
    """Run ``spec`` keeping the graph, cut at each block's input, and ``then`` on it.

    ``spec.reads`` are the activations whose gradients are wanted; ``metric_of(logits [n, k,
    d_vocab])`` gives one value per row (rows are independent, so the gradient of the sum is each
    row's own gradient). With ``spec.past_key_values`` (a KV cache of earlier positions, held
    constant) the run holds the positions after them, and so do the activations. ``then`` gets
    the :class:`TracedRun` where the forward ran (inside the request, for a remote model), so it
    must take every gradient it needs and return them detached. Returns (the per-row metric
    values, detached; what ``then`` returned).
    """
    config = model.config
    reads = set(spec.reads)
    reads |= {Site("resid_pre", layer) for layer in range(config.n_layers)}
    reads |= {Site("resid_post", layer) for layer in range(config.n_layers)}
    if grad_drop == "sublayer":
        reads |= {Site(kind, layer) for kind in ("attn_out", "mlp_out") for layer in range(config.n_layers)}
        if not config.parallel_attn_mlp:
            reads |= {Site("resid_mid", layer) for layer in range(config.n_layers)}
    all_edits = {site: list(fns) for site, fns in spec.edits.items()}
    for layer in range(1, config.n_layers):
        all_edits.setdefault(Site("resid_pre", layer), []).append(torch.Tensor.detach)
    n_layers, parallel, hosts = config.n_layers, config.parallel_attn_mlp, model.splice_hosts()

    def after(logits: torch.Tensor, activations: dict[Site, torch.Tensor]) -> tuple[torch.Tensor, T]:
        values = metric_of(logits)
        run = TracedRun(values.detach(), values.sum(), activations, n_layers, parallel, hosts)
        return run.metric, then(run)

    with torch.enable_grad():
        out = model.forward(dataclasses.replace(spec, edits=all_edits, reads=reads, keep_grad=True, after=after))
    return out.after


def _grad(outputs: torch.Tensor, inputs: list[torch.Tensor], cotangents: torch.Tensor) -> list[torch.Tensor]:
    """Vector-Jacobian products for a stack of cotangents [n, *outputs.shape] in one batched
    backward: [n, *input.shape] per input (zeros where an input does not reach the output)."""
    grads = torch.autograd.grad(outputs, inputs, cotangents, retain_graph=True, allow_unused=True, is_grads_batched=True)
    return [cotangents.new_zeros((len(cotangents), *x.shape)) if g is None else g for x, g in zip(inputs, grads)]


def _block_backward(run: TracedRun, layer: int, node_sites: list[Site], cotangents: torch.Tensor,
                    skip: str | None) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
    """Cotangents at the block's input and the gradients at ``node_sites`` (all in ``layer``),
    given a stack of cotangents at its output [n, *resid.shape], with nothing, the block, its
    attention or its MLP dropped; every result has the same leading n."""
    acts = run.activations
    resid_pre = acts[Site("resid_pre", layer)]
    attention = [s for s in node_sites if run.sublayer(s) == "attn"]
    mlp = [s for s in node_sites if run.sublayer(s) == "mlp"]
    count = len(cotangents)
    grads: dict[Site, torch.Tensor] = {s: acts[s].new_zeros((count, *acts[s].shape)) for s in node_sites if s.kind != "resid_pre"}
    if skip is None:
        inner = attention + mlp
        found = _grad(acts[Site("resid_post", layer)], [resid_pre] + [acts[s] for s in inner], cotangents)
        upstream = found[0]
    elif skip == "block":
        inner, found, upstream = [], [None], cotangents
    elif skip == "mlp":  # the attention write stays: resid_post = resid_pre + attn(resid_pre) + const
        inner = attention
        found = _grad(acts[Site("attn_out", layer)], [resid_pre] + [acts[s] for s in inner], cotangents)
        upstream = cotangents + found[0]
    else:  # skip == "attn": only the MLP write stays, and it reads resid_pre through the skip path
        inner = mlp
        mlp_input = resid_pre if run.parallel else acts[Site("resid_mid", layer)]
        found = _grad(acts[Site("mlp_out", layer)], [mlp_input] + [acts[s] for s in inner], cotangents)
        upstream = cotangents + found[0]
    grads.update(zip(inner, found[1:]))
    if Site("resid_pre", layer) in node_sites:
        grads[Site("resid_pre", layer)] = upstream
    return upstream, grads


def layer_gradients(run: TracedRun, node_sites: set[Site], grad_drop: str | None,
                    lowest_layer: int = 0) -> Iterator[tuple[int, Write | None, dict[Site, torch.Tensor]]]:
    """Yield ``(layer, dropped unit or None, gradients at the node sites of that layer)``.

    Layers run from the top down to ``lowest_layer``. At each layer the plain gradient comes
    first (unit None), then one entry per unit already dropped above (these share the block's
    backward: one batched backward per layer), then the layer's own units. A unit below a node's
    layer leaves the node's gradient equal to the plain one and is not yielded for it.
    """
    if grad_drop not in (None, *GRAD_DROP_UNITS):
        raise ValueError(f"unknown GradDrop unit {grad_drop!r}; known: {', '.join(GRAD_DROP_UNITS)}")
    parts = {None: (), "block": ("block",), "sublayer": ("mlp", "attn")}[grad_drop]
    top = run.activations[Site("resid_post", run.n_layers - 1)]
    live: dict[Write | None, torch.Tensor] = {None: torch.autograd.grad(run.total, top, retain_graph=True)[0]}
    by_layer: dict[int, list[Site]] = {}
    for site in node_sites:
        by_layer.setdefault(site.layer, []).append(site)
    for layer in range(run.n_layers - 1, lowest_layer - 1, -1):
        sites = sorted(by_layer.get(layer, []))
        units = list(live)
        upstream, grads = _block_backward(run, layer, sites, torch.stack([live[unit] for unit in units]), None)
        if len(units) > 1 and not run.checked_backwards:  # once: the batched backward against a plain one
            plain = torch.autograd.grad(run.activations[Site("resid_post", layer)], run.activations[Site("resid_pre", layer)],
                                        live[units[-1]], retain_graph=True)[0]
            run.checked_backwards += 1
            shortcuts.check(f"GradDrop's batched backward through layer {layer}", upstream[-1], plain, "one dropped unit's "
                            "cotangent, batched with the others against alone", what="the cotangent", dtype=plain.dtype)
        below: dict[Write | None, torch.Tensor] = {}
        for n, unit in enumerate(units):
            below[unit] = upstream[n]
            yield layer, unit, {site: grad[n] for site, grad in grads.items()}
        for part in parts:
            unit = (layer, part)
            upstream, grads = _block_backward(run, layer, sites, live[None][None], part)
            below[unit] = upstream[0]
            yield layer, unit, {site: grad[0] for site, grad in grads.items()}
        live = below


def n_units(n_layers: int, grad_drop: str | None) -> int:
    """How many residual-stream writes GradDrop drops in turn."""
    return {None: 0, "block": n_layers, "sublayer": 2 * n_layers}[grad_drop]


def units_below(layer: int, grad_drop: str | None) -> int:
    """Writes strictly below ``layer``: dropping them leaves a node of ``layer`` with its plain gradient."""
    return {None: 0, "block": layer, "sublayer": 2 * layer}[grad_drop]
