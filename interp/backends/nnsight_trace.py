"""The nnsight trace itself. nnsight compiles the source of a ``with model.trace()`` block,
so this module holds only that block and its helpers (kept in a file, never built at run time).

Activations are visited in execution order, one access per module port, and converted to and
from the canonical shapes of ``interp.components``.
"""

from __future__ import annotations

import nnsight
import torch

from interp.architectures import Layout, get_path, split_fused_qkv
from interp.backends.base import RunSpec, apply_edits
from interp.components import Site

# (port, kinds served) in the order a decoder layer executes them.
_PORTS = (
    ("layer.input", ("resid_pre",)),
    ("qkv", ("q", "k", "v")),
    ("z_proj.input", ("z",)),
    ("attn.output", ("attn_out", "pattern")),
    ("mlp_out_proj.input", ("mlp_post",)),
    ("mlp.output", ("mlp_out",)),
    ("layer.output", ("resid_post",)),
)


# kind -> (module path inside the layer, "input" or "output") for ports that are one tensor
_SIMPLE_PORTS = {
    "resid_pre": lambda layout: ("", "input"),
    "resid_post": lambda layout: ("", "output"),
    "z": lambda layout: (layout.z_proj, "input"),
    "mlp_post": lambda layout: (layout.mlp_out_proj, "input"),
    "mlp_out": lambda layout: (layout.mlp, "output"),
}


def _visit(spec: RunSpec, site: Site, module, attribute: str, view: tuple[int, ...] | None) -> torch.Tensor:
    """Read a module port, apply the site's edits in canonical shape, write it back."""
    raw = getattr(module, attribute)
    canonical = raw if view is None else raw.reshape(*raw.shape[:2], *view)
    value = apply_edits(spec, site, canonical)
    setattr(module, attribute, value.reshape(raw.shape))
    return value


def _join_qkv(layout: Layout, parts: list[torch.Tensor]) -> torch.Tensor:
    batch, pos = parts[0].shape[:2]
    if layout.fused_qkv == "concat":
        return torch.cat([p.reshape(batch, pos, -1) for p in parts], dim=-1)
    return torch.cat(parts, dim=-1).reshape(batch, pos, -1)


def run_trace(lm, layout: Layout, n_heads: int, n_kv: int, d_head: int, spec: RunSpec, model_kwargs: dict, remote: bool):
    """Run ``spec`` through nnsight; returns (logits, activations by site, past_key_values)."""
    by_layer: dict[int, set[str]] = {}
    for site in spec.sites:
        by_layer.setdefault(site.layer, set()).add(site.kind)
    saved: dict[Site, torch.Tensor] = {}
    layers = get_path(lm, layout.layers)
    batch, length = spec.input_ids.shape
    past = spec.past_key_values.get_seq_length() if spec.past_key_values is not None else 0
    mask = torch.ones(batch, past + length, dtype=torch.long, device=spec.input_ids.device)
    inputs = {"input_ids": spec.input_ids, "attention_mask": mask}
    with lm.trace(inputs, remote=remote, **model_kwargs):
        for layer in sorted(by_layer):
            kinds = by_layer[layer]
            block = layers[layer]
            for port, served in _PORTS:
                wanted = [k for k in served if k in kinds]
                if not wanted:
                    continue
                if port == "attn.output":
                    module = get_path(block, layout.attn)
                    out = module.output
                    site = Site("attn_out", layer)
                    value = apply_edits(spec, site, out[0])
                    module.output = (value, *out[1:])
                    saved[site] = value
                    saved[Site("pattern", layer)] = out[1]
                elif port != "qkv":
                    kind = served[0]
                    path, attribute = _SIMPLE_PORTS[kind](layout)
                    module = get_path(block, path) if path else block
                    view = (n_heads, d_head) if kind == "z" else None
                    saved[Site(kind, layer)] = _visit(spec, Site(kind, layer), module, attribute, view)
                else:  # qkv
                    kinds_qkv = ("q", "k", "v")
                    if layout.fused_qkv:
                        module = get_path(block, layout.qkv[0])
                        fused = module.output
                        parts = split_fused_qkv(layout, fused, n_heads, n_kv, d_head)
                        parts = [apply_edits(spec, Site(kind, layer), part) for kind, part in zip(kinds_qkv, parts)]
                        module.output = _join_qkv(layout, parts)
                        for kind, part in zip(kinds_qkv, parts):
                            saved[Site(kind, layer)] = part
                    else:
                        for kind, path, n in zip(kinds_qkv, layout.qkv, (n_heads, n_kv, n_kv)):
                            if kind not in kinds:
                                continue
                            module = get_path(block, path)
                            flat = module.output
                            value = apply_edits(spec, Site(kind, layer), flat.reshape(*flat.shape[:2], n, d_head))
                            module.output = value.reshape(flat.shape)
                            saved[Site(kind, layer)] = value
        output = lm.output
        results = nnsight.save({
            "logits": output.logits,
            "cache": output.past_key_values if spec.return_cache else None,
            "activations": {site: saved[site] for site in spec.reads},
        })
    return results["logits"], results["activations"], results["cache"]
