"""Recompute a layer's attention scores from its queries and keys, the way the model does.

Methods that change one query or key and need the new softmax (AtP*'s QK fix) must use the
model's own score scale, causal mask and rotary embedding. :class:`AttentionGeometry` takes them
from the loaded Hugging Face model and is checked against the attention pattern the model itself
produced (:meth:`AttentionGeometry.check`), so a model whose attention it cannot reproduce gets a
one-line error instead of a silently wrong number.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from interp.architectures import decoder_layers, get_path, layout_for


class AttentionGeometryError(ValueError):
    """The attention scores of a model cannot be recomputed from its queries and keys."""


@dataclass
class AttentionGeometry:
    """Score scale and rotary embedding of one model (shared by its layers).

    Queries and keys are in the canonical pre-rotary shapes ``[batch, pos, heads, d_head]`` and
    ``[batch, pos, kv_heads, d_head]``.
    """

    scale: float
    n_heads: int
    n_kv_heads: int
    _rotary: object = None  # the model's rotary-embedding module, or None
    _apply_rotary: object = None  # its modeling module's ``apply_rotary_pos_emb``

    @classmethod
    def of(cls, model) -> "AttentionGeometry":
        """The geometry of an ``interp.Model``."""
        hf = model.hf_model
        config = model.config
        attention = get_path(decoder_layers(hf, config.architecture)[0], layout_for(config.architecture).attn)
        scale = getattr(attention, "scaling", None)
        if scale is None:
            raise AttentionGeometryError(f"{config.name}: its attention module has no 'scaling'; cannot recompute attention scores")
        rotary = getattr(hf.base_model, "rotary_emb", None)
        apply_rotary = getattr(sys.modules[type(hf).__module__], "apply_rotary_pos_emb", None)
        if (rotary is None) != (apply_rotary is None):
            raise AttentionGeometryError(f"{config.name}: found only half of its rotary embedding; cannot recompute attention scores")
        return cls(float(scale), config.n_heads, config.n_kv_heads, rotary, apply_rotary)

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the rotary embedding (identity without one); keys are expanded to query heads.

        Returns q, k as ``[batch, pos, heads, d_head]`` in float64.
        """
        if self._rotary is not None:
            positions = torch.arange(q.shape[1], device=q.device)[None].expand(q.shape[0], -1)
            cos, sin = self._rotary(q, positions)
            q, k = self._apply_rotary(q, k, cos.to(q.dtype), sin.to(q.dtype), unsqueeze_dim=2)
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=2)
        return q.double(), k.double()

    def scores(self, q_rot: torch.Tensor, k_rot: torch.Tensor) -> torch.Tensor:
        """Causally masked scores ``[batch, heads, query_pos, key_pos]`` (masked = -inf), float64."""
        scores = torch.einsum("bshd,bthd->bhst", q_rot, k_rot) * self.scale
        positions = scores.shape[-1]
        future = torch.ones(positions, positions, dtype=torch.bool, device=scores.device).triu(1)
        return scores.masked_fill(future, float("-inf"))

    def check(self, q_rot: torch.Tensor, k_rot: torch.Tensor, pattern: torch.Tensor, label: str, atol: float = 1e-4) -> None:
        """Raise if the recomputed softmax differs from the model's own ``pattern`` by more than ``atol``."""
        difference = (self.scores(q_rot, k_rot).softmax(-1) - pattern.double()).abs().max().item()
        if not difference <= atol:
            raise AttentionGeometryError(
                f"{label}: recomputed attention differs from the model's by {difference:.2e} (> {atol:g}); "
                "this model's attention (sliding window, soft-capping or ALiBi?) is not supported by the QK fix"
            )
