"""Direct logit attribution: the final residual stream split into what each part wrote, each part
projected on an answer direction through the final norm with its scale frozen at the clean run.

At the last position of a prompt, the residual stream the final norm reads is the sum of the
embeddings, every head's output z_h W_O^h, every attention output bias and every MLP output
(families whose sublayers write to it additively). The final norm is norm(x) = L(x) / s + b with
L linear (gain, and centring for a LayerNorm) and s the per-position scale (rms or std); with s
frozen at its clean value, each part p contributes L(p) / s · d to the logit difference along
d = W_U[answer] - W_U[wrong] (or W_U[answer] alone), and the parts plus the norm's and the
unembedding's biases sum to the model's logit difference before any post-processing of logits
(Gemma-2's soft-capping). Freezing s is what makes the split linear: the true effect of removing a
part would also change s.

Where the attention output passes a norm before the residual add (Gemma-2/3, OLMo-2), that norm's
scale is frozen at the clean run as well: the attention output enters it as o = sum_h z_h W_O^h +
b_O, and the write post(o) = L_post(o) / s_o + b_post splits into each head's L_post(z_h W_O^h) /
s_o and the rest (``ATTN_BIAS``). An MLP's normed output is one part as it is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from interp import placement, shortcuts
from interp.components import Site
from interp.model import Model
from interp.sublayers import Sublayers


@dataclass
class Attribution:
    """``parts``: name -> contribution to the frozen-scale logit difference (``EMBED``,
    ``L<l>.H<h>``, ``L<l>.ATTN_BIAS``, ``L<l>.MLP``, ``FINAL_NORM_BIAS``, ``UNEMBED_BIAS``);
    ``total``: their sum; ``logit_diff``: the model's own (before logit post-processing)."""

    parts: dict[str, float]
    total: float
    logit_diff: float
    neurons: torch.Tensor | None = None  # [n_layers, d_mlp]: each MLP neuron's part of its layer's L<l>.MLP
    # [n_layers, n_heads, n_positions]: each head's part split over the source positions it reads
    by_source: torch.Tensor | None = None


@torch.no_grad()
def direct_logit_attribution(model: Model, ids: list[int], answer: int, wrong: int | None = None,
                             neurons: bool = False, by_source: bool = False) -> Attribution:
    """The direct logit attribution of one prompt's last position (see module doc); raises a
    one-line error for families whose residual stream is not the sum of its writes, and
    :class:`~interp.shortcuts.ShortcutError` if the parts do not sum to the model's value.

    ``neurons``: also split each MLP's part into its neurons' a_n W_out[:, n] (through the MLP's
    output norm with its scale frozen, where it has one); with the output bias they are checked
    to sum to the MLP's part. Mixture-of-experts MLPs are refused in one line.

    ``by_source``: also split each head's part over the source positions s it attends to from the
    last position: z_h = sum_s A_h[-1, s] v_g(h)[s] (g(h): the head's KV group), so the part of
    source s is the projection of A_h[-1, s] v_g(h)[s] W_O^h. Checked: the sources' z sum to the
    head's z, and their parts to the head's part. Reading the pattern runs the forward eager."""
    sublayers = Sublayers(model)
    sublayers.require_additive_writes("direct logit attribution", post_norms=True)
    post_normed = model.layout.attn_post_norm is not None
    n = model.config.n_layers
    if neurons:
        sublayers.require_dense_mlp("direct logit attribution to neurons")
    kinds = ("z", "attn_out", "mlp_out") + (("mlp_post",) if neurons else ()) + (("pattern", "v") if by_source else ())
    sites = [Site("resid_pre", 0), Site("resid_post", n - 1)] + [Site(kind, layer) for layer in range(n) for kind in kinds]
    _, cache = model.run_with_cache(torch.tensor([ids], device=model.device), sites)

    def last(site: Site) -> torch.Tensor:
        return cache[site][0, -1].double()

    head = model.hf_model.get_output_embeddings()
    unembedding = placement.weight(head).double()
    direction = unembedding[answer] - (unembedding[wrong] if wrong is not None else 0)
    final = last(Site("resid_post", n - 1))
    scale = sublayers.norm_scale("final", None, final.float()).double()

    def project(vector: torch.Tensor) -> float:
        vector = vector.float().to(scale.device)  # a device map computes each layer on its own device
        return float((sublayers.norm_linear_part("final", None, vector).double() / scale) @ direction)

    def project_rows(vectors: torch.Tensor) -> torch.Tensor:
        return (sublayers.norm_linear_part("final", None, vectors.float()).double() / scale) @ direction

    parts = {"EMBED": project(last(Site("resid_pre", 0)))}
    per_neuron: list[torch.Tensor] = []
    per_source: list[torch.Tensor] = []
    for layer in range(n):
        writes = sublayers.head_outputs(layer, last(Site("z", layer)).float()[None], before_post_norm=True)[0].double()
        if post_normed:  # [n_heads, d_model] through the attention's output norm, its scale frozen
            bias = sublayers.output_bias(layer)
            entering = writes.sum(0) + (bias.double() if bias is not None else 0)
            frozen = sublayers.norm_scale("attn_post", layer, entering.float()).double()
            writes = sublayers.norm_linear_part("attn_post", layer, writes.float()).double() / frozen
        for h in range(model.config.n_heads):
            parts[f"L{layer}.H{h}"] = project(writes[h])
        if by_source:
            per_source.append(_source_parts(model, sublayers, layer, cache, project_rows,
                                            frozen if post_normed else None, parts))
        parts[f"L{layer}.ATTN_BIAS"] = project(last(Site("attn_out", layer)) - writes.sum(0))
        parts[f"L{layer}.MLP"] = project(last(Site("mlp_out", layer)))
        if neurons:
            per_neuron.append(_neuron_parts(sublayers, layer, last(Site("mlp_post", layer)), project_rows,
                                            parts[f"L{layer}.MLP"], model.config.name))
    norm = sublayers.norm("final")
    norm_bias = getattr(norm, "bias", None)
    parts["FINAL_NORM_BIAS"] = float(norm_bias.double() @ direction) if norm_bias is not None else 0.0
    head_bias = getattr(head, "bias", None)
    parts["UNEMBED_BIAS"] = (float(head_bias[answer] - (head_bias[wrong] if wrong is not None else 0))
                             if head_bias is not None else 0.0)
    total = sum(parts.values())
    logits = head(norm(final.float())).double()
    value = float(logits[answer] - (logits[wrong] if wrong is not None else 0))
    shortcuts.check("direct logit attribution's parts (residual = embeddings + heads + biases + MLPs)",
                    torch.tensor([total]), torch.tensor([value]), model.config.name, rtol=1e-5, what="a sum", dtype=model.dtype)
    return Attribution(parts, total, value, torch.stack(per_neuron) if neurons else None,
                       torch.stack(per_source) if by_source else None)


def _source_parts(model: Model, sublayers: Sublayers, layer: int, cache, project_rows, frozen: torch.Tensor | None,
                  parts: dict[str, float]) -> torch.Tensor:
    """Each head's part of layer ``layer`` split over its source positions [n_heads, n_positions]
    (see :func:`direct_logit_attribution`), checked against the head's z and its part."""
    c = model.config
    pattern = cache[Site("pattern", layer)][0, :, -1].double()  # [n_heads, pos]: from the last position
    values = cache[Site("v", layer)][0].double()  # [pos, n_kv_heads, d_head]
    group = torch.arange(c.n_heads, device=values.device) // (c.n_heads // c.n_kv_heads)
    z = pattern.to(values.device)[..., None] * values[:, group].transpose(0, 1)  # [n_heads, pos, d_head]
    shortcuts.check(f"L{layer}: the heads' values weighted by their attention (sum over the sources)", z.sum(1),
                    cache[Site("z", layer)][0, -1].double(), model.config.name, rtol=1e-4, what="z", dtype=model.dtype)
    writes = sublayers.head_outputs(layer, z.transpose(0, 1).float(), before_post_norm=True).double()  # [pos, heads, d_model]
    if frozen is not None:
        writes = sublayers.norm_linear_part("attn_post", layer, writes.float()).double() / frozen
    found = project_rows(writes).T  # [n_heads, pos]
    heads = torch.tensor([parts[f"L{layer}.H{h}"] for h in range(c.n_heads)], dtype=torch.float64)
    shortcuts.check(f"L{layer}: direct logit attribution's sources of each head", found.sum(1).cpu(), heads,
                    model.config.name, rtol=1e-4, what="a sum", dtype=model.dtype)
    return found.cpu()


def _neuron_parts(sublayers: Sublayers, layer: int, activation: torch.Tensor, project_rows, mlp_part: float,
                  name: str) -> torch.Tensor:
    """Each neuron's part [d_mlp] of layer ``layer``'s MLP part, checked: with the output bias's
    they sum to ``mlp_part``."""
    writes = sublayers.neuron_outputs(layer, activation.float()).double()  # [d_mlp, d_model]
    bias = sublayers.mlp_output_bias(layer)
    bias = bias.double() if bias is not None else torch.zeros(writes.shape[-1], dtype=torch.float64)
    if sublayers.layout.mlp_post_norm is not None:  # through the output norm, its scale frozen
        frozen = sublayers.norm_scale("mlp_post", layer, (writes.sum(0) + bias).float()).double()
        linear = sublayers.norm_linear_part("mlp_post", layer, torch.cat([writes, bias[None]]).float()).double() / frozen
        post_bias = getattr(sublayers.norm("mlp_post", layer), "bias", None)
        writes, bias = linear[:-1], linear[-1] + (post_bias.double() if post_bias is not None else 0)
    found = project_rows(writes)
    rest = float(project_rows(bias[None])[0])
    shortcuts.check(f"direct logit attribution's neurons of L{layer}.MLP (their parts and the output bias's)",
                    torch.tensor([float(found.sum()) + rest]), torch.tensor([mlp_part]), name, rtol=1e-5, what="a sum")
    return found


def mean_by_source(stacked: np.ndarray) -> np.ndarray:
    """The mean over prompts of sources' parts stacked as ``[n_prompts, ..., positions]`` with NaN
    where a shorter prompt has no position (aligned at the last token); NaN where none has one."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a position no prompt has: NaN
        return np.nanmean(stacked, axis=0)
