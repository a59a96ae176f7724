"""Reading the edge graph's nodes out of a run: what each upstream node wrote, and the gradient
of the metric with respect to each downstream node's own copy of the residual stream.

Both work on any backend through ``Model`` reads; per-node gradients come from the q/k/v, MLP-output
and final-residual gradients pulled back through ``interp.sublayers`` (the layer's norm and
projections), so each head's query/key/value input gets its own gradient.
"""

from __future__ import annotations

import torch

from circuits.edge_graph import EdgeGraph
from interp.components import Site
from interp.sublayers import Sublayers


def work_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 for float64 models, else float32 (scores are accumulated at least in float32)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def upstream_sites(graph: EdgeGraph) -> set[Site]:
    """Sites whose values give every upstream node's output."""
    sites = {Site("resid_pre", 0)}
    for layer in range(graph.config.n_layers):
        sites |= {Site("z", layer), Site("mlp_out", layer)}
    return sites


def gradient_sites(graph: EdgeGraph) -> set[Site]:
    """Sites read (values and gradients) to pull gradients back to every downstream node."""
    sites = {Site("resid_post", graph.config.n_layers - 1)}
    for layer in range(graph.config.n_layers):
        sites |= {Site(kind, layer) for kind in ("resid_pre", "q", "k", "v", "attn_out", "mlp_out")}
    return sites


def upstream_outputs(sublayers: Sublayers, graph: EdgeGraph, activations: dict[Site, torch.Tensor]) -> torch.Tensor:
    """Every upstream node's write into the residual stream, [n_upstream, batch, pos, d_model]
    (heads without the output bias, which is the same on every run)."""
    parts = [activations[Site("resid_pre", 0)].detach()[None]]
    for layer in range(graph.config.n_layers):
        heads = sublayers.head_outputs(layer, activations[Site("z", layer)].detach())
        parts += [heads.permute(2, 0, 1, 3), activations[Site("mlp_out", layer)].detach()[None]]
    return torch.cat(parts).to(work_dtype(parts[0]))


def downstream_gradients(sublayers: Sublayers, graph: EdgeGraph, activations: dict[Site, torch.Tensor],
                         grads: dict[Site, torch.Tensor]) -> torch.Tensor:
    """d(metric)/d(each downstream node's residual input), [n_downstream, batch, pos, d_model].

    A head's query input r_h feeds only q_h = W_Q^h norm(r_h): its gradient is that map's
    vector-Jacobian product with dL/dq_h, evaluated at the run's residual stream. The projection's
    part, dL/dq_h W_Q^h, uses head h's own slice of the weights (one projection's work for all
    heads together); the norm's part runs once per node on those [n_nodes, batch, pos, d_model]
    cotangents, which is elementwise work.
    """
    c = graph.config
    n_qkv = c.n_heads + 2 * c.n_kv_heads
    resid0 = activations[Site("resid_pre", 0)]
    out = torch.zeros(len(graph.downstream), *resid0.shape, dtype=work_dtype(resid0), device=resid0.device)
    with torch.enable_grad():
        for layer in range(c.n_layers):
            resid = activations[Site("resid_pre", layer)].detach()
            weights = sublayers.head_input_weights(layer)  # [d_model, heads, d_head] each
            normed_cotangent = torch.cat([
                torch.einsum("bphk,ehk->hbpe", grads[Site(kind, layer)].to(weight.dtype), weight)
                for kind, weight in zip(("q", "k", "v"), weights)])  # [n_qkv, batch, pos, d_model]
            copies = resid.expand(n_qkv, *resid.shape).clone().requires_grad_()
            normed = sublayers.norm("attn", layer).forward(copies)
            normed.backward(normed_cotangent.to(normed.dtype))
            out[layer * (n_qkv + 1): layer * (n_qkv + 1) + n_qkv] = copies.grad.to(out.dtype)
            mlp_in = sublayers.mlp_input(layer, resid, activations[Site("attn_out", layer)].detach()).clone().requires_grad_()
            sublayers.mlp_output(layer, mlp_in).backward(grads[Site("mlp_out", layer)].to(mlp_in.dtype))
            out[graph.downstream_slice(layer, "mlp")] = mlp_in.grad.to(out.dtype)[None]
    out[-1] = grads[Site("resid_post", c.n_layers - 1)].to(out.dtype)
    return out
