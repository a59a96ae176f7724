"""The nnsight trace itself. nnsight compiles the source of a ``with model.trace()`` block,
so this module holds only that block and its helpers (kept in a file, never built at run time).

Activations are visited in execution order, one access per module port, and converted to and
from the canonical shapes of ``interp.components``.
"""

from __future__ import annotations

import dataclasses

import nnsight
import torch

from interp.architectures import Layout, get_path, join_fused_qkv, split_fused_qkv
from interp.backends.base import RunSpec, appended, apply_edits, spec_kwargs
from interp.components import ACTIVATION_KINDS, PORT_ORDER, Site


# kind -> (module path inside the layer, "input" or "output") for the one-tensor ports
def _simple_ports(layout: Layout) -> dict[str, tuple[str, str]]:
    return {
        "resid_pre": ("", "input"),
        "z": (layout.z_proj, "input"),
        "mlp_post": (layout.mlp_out_proj, "input"),
        "mlp_out": (layout.mlp_post_norm or layout.mlp, "output"),
        "resid_post": ("", "output"),
    }


# (port, kinds served) in the order a decoder layer executes them.
# (port, the kinds it serves), in execution order, from the one kinds table
_PORTS = tuple((port, tuple(kind for kind, k in ACTIVATION_KINDS.items() if k.port == port)) for port in PORT_ORDER)


def _visit(spec: RunSpec, site: Site, module, attribute: str, view: tuple[int, ...] | None) -> torch.Tensor:
    """Read a module port (the first element of a tuple output), apply the site's edits in
    canonical shape, write it back."""
    port = getattr(module, attribute)
    raw = port[0] if isinstance(port, tuple) else port
    canonical = raw if view is None else raw.reshape(*raw.shape[:2], *view)
    value = apply_edits(spec, site, canonical)
    flat = value.reshape(raw.shape)
    setattr(module, attribute, (flat, *port[1:]) if isinstance(port, tuple) else flat)
    return value


def run_trace(lm, layout: Layout, n_heads: int, n_kv: int, d_head: int, spec: RunSpec, inputs: dict, model_kwargs: dict,
              cache_field: str | None, remote: bool | str, unembed: str):
    """Run ``spec`` through nnsight; returns (logits, activations by site, past_key_values, what
    ``spec.after`` returned: it runs inside the trace, on the logits and reads in the graph).

    ``inputs``: the token ids and attention mask; ``model_kwargs``: the rest of the Hugging Face
    forward's arguments; ``cache_field``: the output's KV cache field, None when none is returned.
    ``unembed`` is the unembedding's module path: with ``spec.logit_positions`` its input is
    gathered at those positions inside the trace (so a remote model unembeds only them too).

    A remote request pickles this function and what it uses (``interp.backends.nnsight_backend``):
    it calls no module-level cached function and names no module of interp's."""
    by_layer: dict[int, set[str]] = {}
    for site in spec.sites:
        by_layer.setdefault(site.layer, set()).add(site.kind)
    saved: dict[Site, torch.Tensor] = {}
    layers = get_path(lm, layout.layers)
    with lm.trace(inputs, remote=remote, **model_kwargs):
        for layer in sorted(by_layer):
            kinds = by_layer[layer]
            block = layers[layer]
            for port, served in _PORTS:
                wanted = [k for k in served if k in kinds]
                if not wanted:
                    continue
                if port == "attn" and layout.attn_post_norm is None:  # one access: output and pattern together
                    module = get_path(block, layout.attn)
                    out = module.output
                    value = apply_edits(spec, Site("attn_out", layer), out[0])
                    module.output = (value, *out[1:])
                    saved[Site("attn_out", layer)], saved[Site("pattern", layer)] = value, out[1]
                elif port == "attn":  # the attention's output is normed before the residual add
                    if "pattern" in kinds:
                        saved[Site("pattern", layer)] = get_path(block, layout.attn).output[1]
                    if "attn_out" in kinds:
                        post_norm = get_path(block, layout.attn_post_norm)
                        saved[Site("attn_out", layer)] = _visit(spec, Site("attn_out", layer), post_norm, "output", None)
                elif port != "qkv":
                    path, attribute = _simple_ports(layout)[port]
                    view = (n_heads, d_head) if port == "z" else None
                    saved[Site(port, layer)] = _visit(spec, Site(port, layer), get_path(block, path), attribute, view)
                elif layout.fused_qkv:
                    module = get_path(block, layout.qkv[0])
                    parts = split_fused_qkv(layout, module.output, n_heads, n_kv, d_head)
                    parts = [apply_edits(spec, Site(kind, layer), part) for kind, part in zip(("q", "k", "v"), parts)]
                    module.output = join_fused_qkv(layout, parts)
                    for kind, part in zip(("q", "k", "v"), parts):
                        saved[Site(kind, layer)] = part
                else:
                    for kind, path, n in zip(("q", "k", "v"), layout.qkv, (n_heads, n_kv, n_kv)):
                        if kind in kinds:
                            saved[Site(kind, layer)] = _visit(spec, Site(kind, layer), get_path(block, path), "output", (n, d_head))
        if spec.logit_positions is not None:
            unembedding = get_path(lm, unembed)
            hidden = unembedding.input
            index = spec.logit_positions.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
            unembedding.input = hidden.gather(1, index)
        output = lm.output
        reads = {site: saved[site] for site in spec.reads}
        after = None
        if spec.after is not None:  # a remote run's backward: the graph exists only here
            with torch.enable_grad():
                after = spec.after(output.logits, reads)
            reads = {site: value.detach() for site, value in reads.items()}
        results = nnsight.save({
            "logits": output.logits if spec.after is None else output.logits.detach(),
            "cache": None if cache_field is None else getattr(output, cache_field),
            "activations": reads,
            "after": after,
        })
    return results["logits"], results["activations"], results["cache"], results["after"]


def run_session(lm, runs: list, remote: bool | str) -> list:
    """Each of ``runs`` (calls of :func:`run_trace` with ``remote=False``) in one nnsight session:
    with ``remote``, one request to NDIF that runs them all. Returns their results, in order."""
    with lm.session(remote=remote):
        results = nnsight.save([run() for run in runs])
    return results


def run_generation(lm, trace_args: tuple, spec: RunSpec, new_tokens: int, next_token, remote: bool | str, unembed: str):
    """``spec``'s prompts continued by ``new_tokens`` tokens in one nnsight session (with
    ``remote``, one request): each step a trace of the whole sequence so far with ``spec``'s edits,
    then ``next_token`` (logits [batch, d_vocab] -> tokens [batch]) where the trace ran. Returns
    the ids [batch, pos + new_tokens]. ``trace_args``: :func:`run_trace`'s (layout, n_heads, n_kv,
    d_head)."""
    with lm.session(remote=remote):
        ids, mask = spec.input_ids, spec.attention_mask
        for _ in range(new_tokens):
            step = dataclasses.replace(spec, input_ids=ids, attention_mask=mask, logits_to_keep=1)
            kwargs = {"use_cache": False, **spec_kwargs(step)}
            inputs = {"input_ids": ids, "attention_mask": kwargs.pop("attention_mask")}
            logits = run_trace(lm, *trace_args, step, inputs, kwargs, None, False, unembed)[0]
            ids, mask = appended(ids, mask, next_token(logits[:, -1].float()))
        result = nnsight.save(ids)
    return result
