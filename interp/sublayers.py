"""A decoder layer's pieces recomputed from its weights, outside the model's own forward.

Edge-level analyses feed each attention head and MLP its own residual-stream input, which the
model's forward never does. These functions compute what a head's q/k/v or an MLP's output would
be for any residual stream ``resid`` [..., pos, d_model] (any leading dims), with the layer's own
pre-norm. Projections are applied from their weights and norms/activations through their own
``forward``, never a module's ``__call__``: these run inside edits of a live forward, where calling
a wrapped module (or the module whose output is being edited) would re-enter the backend's hooks.
"""

from __future__ import annotations

from typing import Callable

import torch

from interp import placement
from interp.architectures import UnsupportedArchitectureError, get_path, split_fused_qkv, weightless
from interp.components import Site
from interp.hf_compat import unwrapped
from interp.model import Model


def _linear_weight(module: torch.nn.Module) -> torch.Tensor:
    """A projection's weight as [out_features, in_features] (nn.Linear, or GPT-2's Conv1D)."""
    weight = placement.weight(module)
    return weight if isinstance(module, torch.nn.Linear) else weight.T


def _project(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a projection (nn.Linear or Conv1D) from its weights."""
    return torch.nn.functional.linear(x, _linear_weight(module), _bias(module))


def _bias(module: torch.nn.Module) -> torch.Tensor | None:
    """A projection's or norm's bias (None where it has none), loaded where offloaded."""
    return None if getattr(module, "bias", None) is None else placement.weight(module, "bias")


def require_local_weights(model: Model) -> None:
    """One line unless ``model``'s weights are here to recompute its parts from (a remote model's
    stay on NDIF)."""
    if model.remote or weightless(model.hf_model):
        raise UnsupportedArchitectureError(
            f"this analysis recomputes parts of {model.config.name} from its weights (as DLA, the lens, the edge "
            "methods, AtP*'s QK fix and transcoder graphs do), and a remote model's weights stay on NDIF: run it on "
            "a local copy, or use exact patching, AtP without the QK fix (qk_fix=False), steering or generation")


class Sublayers:
    """Recompute attention inputs, MLP outputs and per-head output contributions of ``model``."""

    def __init__(self, model: Model) -> None:
        require_local_weights(model)
        self.config = model.config
        self.layout = model.layout
        self._root = model.hf_model
        self._layers = model.decoder_layers()

    def _leaf(self, layer: int, path: str) -> torch.nn.Module:
        return unwrapped(get_path(self._layers[layer], path))

    def require_additive_writes(self, analysis: str, post_norms: bool = False) -> None:
        """Raise a one-line error if sublayer outputs are normed before they join the residual
        stream (Gemma-2/3, OLMo-2; allowed with ``post_norms``, for an analysis that freezes
        those norms' scales): ``analysis`` decomposes the residual stream into linear per-head
        and per-MLP writes, which such norms do not have; or if the residual stream is not the
        sum of the sublayers' outputs."""
        normed = [name for name, path in (("attention", self.layout.attn_post_norm), ("MLP", self.layout.mlp_post_norm)) if path]
        prefix = f"{analysis} does not apply to {self.config.name} ({self.config.architecture}): its "
        if normed and not post_norms:
            raise UnsupportedArchitectureError(
                prefix + f"{' and '.join(normed)} outputs pass through a norm before the residual add, so heads and MLPs "
                "do not write to the residual stream linearly")
        if not self.layout.writes_add:
            raise UnsupportedArchitectureError(
                prefix + "residual stream is not the sum of the attention and MLP outputs (a multiplier sits between "
                "them and the residual add), so heads and MLPs do not write to it as the edges assume")

    def for_edges(self, analysis: str) -> "Sublayers":
        """``self``, after a one-line error if ``analysis`` (an edge method) cannot read this model's
        edges: it needs linear per-head and per-MLP writes and MLPs it can recompute."""
        self.require_additive_writes(analysis)
        self.require_dense_mlp(analysis)
        return self

    def require_dense_mlp(self, analysis: str) -> None:
        """Raise a one-line error for a mixture-of-experts MLP, which ``analysis`` cannot recompute."""
        if self.layout.is_moe:
            raise UnsupportedArchitectureError(
                f"{analysis} does not apply to {self.config.name} ({self.config.architecture}): it recomputes MLPs from "
                f"their weights, and this model's MLPs are mixtures of {self.layout.n_experts} experts")

    def norm(self, which: str, layer: int | None = None) -> torch.nn.Module:
        """The pre-norm of ``which`` ("attn" or "mlp") at ``layer``, the norm a sublayer's output
        passes before the residual add ("attn_post", "mlp_post"), or the final norm ("final");
        an identity where the family has no such norm (OLMo-2's pre-norms, most post-norms)."""
        if which == "final":
            return unwrapped(get_path(self._root, self.layout.final_norm))
        paths = {"attn": self.layout.attn_norm, "mlp": self.layout.mlp_norm, "attn_post": self.layout.attn_post_norm,
                 "mlp_post": self.layout.mlp_post_norm}
        if which not in paths:
            raise ValueError(f"unknown norm {which!r}; known: {', '.join(paths)}, final")
        return torch.nn.Identity() if paths[which] is None else self._leaf(layer, paths[which])

    def norm_gain(self, which: str, layer: int | None = None) -> torch.Tensor:
        """A norm's elementwise gain [d_model] (Gemma's 1 + weight; ones if it has none)."""
        norm = self.norm(which, layer)
        weight = None if getattr(norm, "weight", None) is None else placement.weight(norm)
        if weight is None:
            return torch.ones(self.config.d_model)
        return (weight + 1 if "Gemma" in type(norm).__name__ else weight).detach().float()

    def neuron_outputs(self, layer: int, activations: torch.Tensor) -> torch.Tensor:
        """Each MLP neuron's write, a_n W_out[:, n], without the output bias: activations
        [..., d_mlp] (the input of the MLP's output projection) -> [..., d_mlp, d_model]."""
        self.require_dense_mlp("per-neuron writes")
        weight = _linear_weight(self._leaf(layer, self.layout.mlp_out_proj))  # [d_model, d_mlp]
        return activations[..., :, None] * weight.T.to(activations.dtype)

    def mlp_output_bias(self, layer: int) -> torch.Tensor | None:
        """The MLP output projection's bias [d_model] (None where it has none)."""
        bias = _bias(self._leaf(layer, self.layout.mlp_out_proj))
        return None if bias is None else bias.detach()

    def output_bias(self, layer: int) -> torch.Tensor | None:
        """The attention output projection's bias [d_model] (None where it has none)."""
        bias = _bias(self._leaf(layer, self.layout.z_proj))
        return None if bias is None else bias.detach()

    def norm_centres(self, which: str, layer: int | None = None) -> bool:
        """Whether the norm subtracts the mean first (a LayerNorm; an RMSNorm does not)."""
        return isinstance(self.norm(which, layer), torch.nn.LayerNorm)

    def norm_linear_part(self, which: str, layer: int | None, x: torch.Tensor) -> torch.Tensor:
        """The part of a norm that is linear in ``x`` [..., d_model]: gain * x, centred first for a
        LayerNorm. The norm's output is that divided by a per-position scale (plus its bias)."""
        if self.norm_centres(which, layer):
            x = x - x.mean(-1, keepdim=True)
        return self.norm_gain(which, layer).to(x.dtype) * x

    def _linear_normed_scale(self, which: str, layer: int | None,
                             x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(linear part, norm(x) without gradient, per-position scale [..., 1] without gradient)."""
        norm = self.norm(which, layer)
        linear = self.norm_linear_part(which, layer, x)
        with torch.no_grad():
            normed = norm.forward(x)
            shifted = normed - norm.forward(x.new_zeros(x.shape[-1]))  # = linear / scale
            scale = (linear * linear).sum(-1, keepdim=True) / (linear * shifted).sum(-1, keepdim=True).clamp_min(1e-30)
        return linear, normed, scale.detach()

    def norm_scale(self, which: str, layer: int | None, x: torch.Tensor) -> torch.Tensor:
        """The per-position scale [..., 1] the norm divides by (rms, or std for a LayerNorm, with its
        epsilon): norm(x) = norm_linear_part(x) / scale + bias. No gradient."""
        with torch.no_grad():
            return self._linear_normed_scale(which, layer, x)[2]

    def frozen_norm(self, which: str, layer: int | None, x: torch.Tensor) -> torch.Tensor:
        """The norm of ``x`` [..., d_model], with gradients as if its per-position scale were a
        constant (the linearization of attribution graphs): value norm(x), derivative
        norm_linear_part / scale."""
        linear, normed, scale = self._linear_normed_scale(which, layer, x)
        return normed + (linear - linear.detach()) / scale

    def attention_inputs(self, layer: int, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) that ``resid`` [..., pos, d_model] gives at ``layer``, before rotary:
        q [..., pos, n_heads, d_head]; k, v [..., pos, n_kv_heads, d_head]."""
        return self.attention_projections(layer, self.norm("attn", layer).forward(resid))

    def attention_projections(self, layer: int, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) of the attention pre-norm's output ``normed`` [..., pos, d_model] (shapes as in
        :meth:`attention_inputs`)."""
        c, layout = self.config, self.layout
        if layout.fused_qkv:
            fused = _project(self._leaf(layer, layout.qkv[0]), normed)
            q, k, v = split_fused_qkv(layout, fused, c.n_heads, c.n_kv_heads, c.d_head)
            return q, k, v
        counts = (c.n_heads, c.n_kv_heads, c.n_kv_heads)
        return tuple(_project(self._leaf(layer, path), normed).unflatten(-1, (n, c.d_head))
                     for path, n in zip(layout.qkv, counts))

    def head_input_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k and v projections' weights per head: [d_model, n_heads, d_head] and
        [d_model, n_kv_heads, d_head] twice, so that q_h = normed @ W_q[:, h] (+ bias)."""
        c, layout = self.config, self.layout
        if layout.fused_qkv:
            return tuple(split_fused_qkv(layout, _linear_weight(self._leaf(layer, layout.qkv[0])).T, c.n_heads,
                                         c.n_kv_heads, c.d_head))
        counts = (c.n_heads, c.n_kv_heads, c.n_kv_heads)
        return tuple(_linear_weight(self._leaf(layer, path)).T.unflatten(-1, (n, c.d_head))
                     for path, n in zip(layout.qkv, counts))

    def mlp_output(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """The MLP output [..., pos, d_model] that ``resid`` (the MLP's residual input) gives at ``layer``."""
        layout = self.layout
        self.require_dense_mlp("recomputing an MLP")
        normed = self.mlp_normalized_input(layer, resid)
        hidden = _project(self._leaf(layer, layout.mlp_in), normed)
        act = self._leaf(layer, layout.mlp_act).forward
        if layout.fused_gate_up:
            gate, up = hidden.chunk(2, dim=-1)
            hidden = act(gate) * up
        elif layout.mlp_gate is None:
            hidden = act(hidden)
        else:
            hidden = act(_project(self._leaf(layer, layout.mlp_gate), normed)) * hidden
        return _project(self._leaf(layer, layout.mlp_out_proj), hidden)

    def mlp_normalized_input(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """The MLP's own input after its pre-norm, for the residual stream ``resid`` it reads
        (what a transcoder reads)."""
        return self.norm("mlp", layer).forward(resid)

    def mlp_input(self, layer: int, resid_pre: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The residual stream the MLP of ``layer`` reads: resid_pre (parallel attention/MLP) or
        resid_pre + attn_out (sequential)."""
        return resid_pre if self.config.parallel_attn_mlp else resid_pre + attn_out

    def mlp_replacement_edits(self, layer: int, replace: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                              frozen_scale: bool = False) -> dict:
        """Edits ({Site: edit}) of a forward in which the MLP output at ``layer`` becomes
        ``replace(mlp_output, normalized_mlp_input)``: the residual stream and attention output are
        captured on the way so the MLP's own normalized input can be rebuilt inside the edit
        (with ``frozen_scale``, through :meth:`frozen_norm`)."""
        seen: dict[str, torch.Tensor] = {}

        def keep(name: str):
            def edit(value: torch.Tensor) -> torch.Tensor:
                seen[name] = value
                return value
            return edit

        def swap(value: torch.Tensor) -> torch.Tensor:
            resid = self.mlp_input(layer, seen["resid"], seen["attn"])
            normed = self.frozen_norm("mlp", layer, resid) if frozen_scale else self.mlp_normalized_input(layer, resid)
            return replace(value, normed)

        return {Site("resid_pre", layer): keep("resid"), Site("attn_out", layer): keep("attn"), Site("mlp_out", layer): swap}

    def head_outputs(self, layer: int, z: torch.Tensor, before_post_norm: bool = False) -> torch.Tensor:
        """Each head's write into the residual stream, z_h W_O^h without the output bias:
        z [..., pos, n_heads, d_head] -> [..., pos, n_heads, d_model]. Families whose attention
        output is normed before the residual add have no such write; ``before_post_norm`` asks
        for z_h W_O^h there anyway (what enters that norm)."""
        if not before_post_norm:
            self.require_additive_writes("per-head writes")
        c = self.config
        weight = _linear_weight(self._leaf(layer, self.layout.z_proj)).unflatten(1, (c.n_heads, c.d_head))
        return torch.einsum("...hd,mhd->...hm", z, weight.to(z.dtype))
