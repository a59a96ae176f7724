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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp import shortcuts
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


@torch.no_grad()
def direct_logit_attribution(model: Model, ids: list[int], answer: int, wrong: int | None = None) -> Attribution:
    """The direct logit attribution of one prompt's last position (see module doc); raises a
    one-line error for families whose sublayers do not write additively, and
    :class:`~interp.shortcuts.ShortcutError` if the parts do not sum to the model's value."""
    sublayers = Sublayers(model)
    sublayers.require_additive_writes("direct logit attribution")
    n = model.config.n_layers
    sites = [Site("resid_pre", 0), Site("resid_post", n - 1)] + [Site(kind, layer) for layer in range(n)
                                                               for kind in ("z", "attn_out", "mlp_out")]
    _, cache = model.run_with_cache(torch.tensor([ids], device=model.device), sites)

    def last(site: Site) -> torch.Tensor:
        return cache[site][0, -1].double()

    head = model.hf_model.get_output_embeddings()
    unembedding = head.weight.double()
    direction = unembedding[answer] - (unembedding[wrong] if wrong is not None else 0)
    final = last(Site("resid_post", n - 1))
    scale = sublayers.norm_scale("final", None, final.float()).double()

    def project(vector: torch.Tensor) -> float:
        return float((sublayers.norm_linear_part("final", None, vector.float()).double() / scale) @ direction)

    parts = {"EMBED": project(last(Site("resid_pre", 0)))}
    for layer in range(n):
        writes = sublayers.head_outputs(layer, last(Site("z", layer)).float()[None])[0].double()  # [n_heads, d_model]
        for h in range(model.config.n_heads):
            parts[f"L{layer}.H{h}"] = project(writes[h])
        parts[f"L{layer}.ATTN_BIAS"] = project(last(Site("attn_out", layer)) - writes.sum(0))
        parts[f"L{layer}.MLP"] = project(last(Site("mlp_out", layer)))
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
                    torch.tensor([total]), torch.tensor([value]), model.config.name, rtol=1e-5, what="a sum")
    return Attribution(parts, total, value)
