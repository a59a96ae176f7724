"""Attribution through attention heads: OV circuits and attention weights.

A head moves information from source position s to destination t by A_h[t, s] * x_s W_V^h W_O^h,
with x_s the attention pre-norm's output at s. With the pattern and the norm's scale held fixed
(the attribution-graph linearization), a vector w written into the residual stream at s reaches
head h's output at t as A_h[t, s] / scale_s * lin(w) W_OV^h, where lin is the norm's linear part
(gain, after centring for a LayerNorm). So:

- ``ov_circuits(model, layer)``: W_OV^h [n_heads, d_model, d_model] (value heads shared under
  grouped-query attention) and the value bias through W_O;
- ``ov_connections(model, layer, head, up, down, down_layer)``: input-invariant, upstream feature i
  (decoder row, or a token embedding) through head h (None: every head at once) into downstream
  transcoder feature j: lin_attn(W_dec[i]) W_OV^h lin_mlp(.) . W_enc[:, j];
- ``head_source_contributions(model, tokens, layer, position, direction)``: input-dependent, the
  share of every (head, source position) in attention's output at ``position`` along
  ``direction``, A_h[t, s] * (v_s W_O^h) . direction; they sum, with the output bias, to the
  attention output's component along ``direction``.

Input-dependent attribution of feature i at s through head h into feature j at t is then
f_i(s) * A_h[t, s] * ov_connections[i, j] / (scale_attn(s) * scale_mlp(t)) (scales from
``Sublayers.norm_scale``); ``attribution_graph`` computes the same by gradients, with heads as
nodes.
"""

from __future__ import annotations

import torch

from circuits.dictionary import SparseDictionary
from interp.backends.base import RunSpec
from interp.components import ComponentError, Site
from interp.model import Model
from interp.sublayers import Sublayers


def _check_head(model: Model, layer: int, head: int | None = None) -> None:
    config = model.config
    if not 0 <= layer < config.n_layers:
        raise ComponentError(f"layer {layer} is out of range: {config.name} has {config.n_layers} layers")
    if head is not None and not 0 <= head < config.n_heads:
        raise ComponentError(f"head {head} is out of range: {config.name} has {config.n_heads} heads per layer")


def kv_group_of_heads(model: Model) -> torch.Tensor:
    """[n_heads]: the key/value head each query head reads (grouped-query attention)."""
    config = model.config
    return torch.arange(config.n_heads) // (config.n_heads // config.n_kv_heads)


def ov_circuits(model: Model, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_OV [n_heads, d_model, d_model], b_OV [n_heads, d_model]): head h writes
    x W_OV[h] + b_OV[h] per source position it attends to, for the attention pre-norm's output x
    (b_OV: the value bias through W_O; the output bias b_O is not any one head's)."""
    _check_head(model, layer)
    sublayers, d_model = Sublayers(model), model.config.d_model
    dtype = next(model.hf_model.parameters()).dtype
    inputs = torch.cat([torch.eye(d_model, dtype=dtype), torch.zeros(1, d_model, dtype=dtype)])
    with torch.no_grad():
        values = sublayers.attention_projections(layer, inputs)[2][:, kv_group_of_heads(model)]  # [d_model + 1, n_heads, d_head]
        writes = sublayers.head_outputs(layer, values).float()  # [d_model + 1, n_heads, d_model]
    bias = writes[-1]
    return (writes[:-1] - bias).transpose(0, 1).contiguous(), bias


def ov_connections(model: Model, layer: int, head: int | None, up: SparseDictionary | torch.Tensor,
                   down: SparseDictionary, down_layer: int) -> torch.Tensor:
    """Input-invariant connection [n_up, d_sae_down] from upstream writes through head ``head`` of
    ``layer`` into the encoder of ``down`` (a transcoder at ``down_layer`` >= ``layer``):
    lin_attn(w_i) W_OV^h, then the MLP pre-norm's linear part, dotted with W_enc[:, j].
    ``head`` None gives every head of the layer at once: [n_heads, n_up, d_sae_down].
    ``up`` is a dictionary (w_i = its decoder rows) or a matrix of written vectors [n_up, d_model]
    (e.g. token embeddings). Scale by f_i * A_h[t, s] / (scale_attn(s) scale_mlp(t)) for one input."""
    _check_head(model, layer, head)
    if down_layer < layer:
        raise ValueError(f"a head at layer {layer} cannot feed a transcoder at earlier layer {down_layer}")
    sublayers = Sublayers(model)
    writes = (up.W_dec if isinstance(up, SparseDictionary) else up).detach().float()
    if writes.shape[-1] != model.config.d_model or down.config.d_in != model.config.d_model:
        raise ValueError(f"upstream writes of width {writes.shape[-1]} and a transcoder reading {down.config.d_in} "
                         f"do not fit {model.config.name}'s d_model={model.config.d_model}")
    weights = ov_circuits(model, layer)[0]  # [n_heads, d_model, d_model]
    through_heads = sublayers.norm_linear_part("attn", layer, writes) @ (weights if head is None else weights[head])
    return (sublayers.norm_linear_part("mlp", down_layer, through_heads) @ down.W_enc.detach()).detach()


def transcoder_input_direction(model: Model, dictionary: SparseDictionary, layer: int, latent: int) -> torch.Tensor:
    """[d_model]: the residual-stream direction whose component, divided by the MLP pre-norm's
    scale, is latent ``latent``'s pre-activation (up to its bias): centre(gain * W_enc[:, j])."""
    if not 0 <= latent < dictionary.config.d_sae:
        raise ComponentError(f"latent {latent} is out of range: the dictionary has {dictionary.config.d_sae} latents")
    sublayers = Sublayers(model)
    direction = sublayers.norm_gain("mlp", layer) * dictionary.W_enc[:, latent].detach().float()
    if sublayers.norm_centres("mlp", layer):
        direction = direction - direction.mean()
    return direction


def head_source_contributions(model: Model, tokens: torch.Tensor, layer: int, position: int,
                              direction: torch.Tensor) -> torch.Tensor:
    """[n_heads, n_positions]: A_h[t, s] * (v_s W_O^h) . direction for destination t = ``position``
    of one prompt ``tokens`` [1, pos]; the sum plus b_O . direction is attn_out[t] . direction."""
    _check_head(model, layer)
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"head contributions read one prompt: tokens must be [1, pos], got {tuple(tokens.shape)}")
    n_positions = tokens.shape[1]
    if not -n_positions <= position < n_positions:
        raise ValueError(f"position {position} is out of range for a prompt of {n_positions} tokens")
    if direction.shape != (model.config.d_model,):
        raise ValueError(f"direction must be [d_model={model.config.d_model}], got {tuple(direction.shape)}")
    sites = {Site("pattern", layer), Site("v", layer)}
    with torch.no_grad():
        acts = model.forward(RunSpec(tokens, reads=sites)).activations
        values = acts[Site("v", layer)][0][:, kv_group_of_heads(model)]  # [pos, n_heads, d_head]
        writes = Sublayers(model).head_outputs(layer, values).float()  # [pos, n_heads, d_model]
        pattern = acts[Site("pattern", layer)][0, :, position].float()  # [n_heads, pos]
    return pattern * (writes @ direction.float()).T
