"""Recompute a layer's attention scores from its queries and keys, the way the model does.

Methods that change one query or key and need the new softmax (AtP*'s QK fix) must use the
model's own score scale, query/key norms, rotary embedding, logit soft-capping and mask (causal,
sliding window). :class:`AttentionGeometry` reads them off the loaded model: the scale, the
soft-cap and the q/k norms from the attention module, and the rotary cos/sin and the attention
mask from what the model itself hands each attention module in one short forward (so per-layer
rotary bases, as in Gemma-3, and sliding windows come out right without knowing the family).
Every use is checked against the attention pattern the model produced (:meth:`LayerGeometry.check`),
so a model whose attention it cannot reproduce gets a one-line error instead of a silently wrong
number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.architectures import get_path
from interp.hf_compat import unwrapped


class AttentionGeometryError(ValueError):
    """The attention scores of a model cannot be recomputed from its queries and keys."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@dataclass
class LayerGeometry:
    """How one layer turns canonical queries and keys (``[batch, pos, heads, d_head]`` and
    ``[batch, pos, kv_heads, d_head]``, before norms and rotary) into attention scores, for one
    prompt length."""

    label: str
    scale: float
    n_heads: int
    n_kv_heads: int
    softcap: float | None
    visible: torch.Tensor  # [1 or batch, 1, query_pos, key_pos] bool (a padded batch: per row)
    cos: torch.Tensor | None  # [1 or batch, pos, rotary_dim]
    sin: torch.Tensor | None
    q_norm: torch.nn.Module | None
    k_norm: torch.nn.Module | None
    real: torch.Tensor | None = None  # [batch, pos] bool: real tokens of a padded batch (None: all)

    def _normed(self, x: torch.Tensor, norm: torch.nn.Module | None) -> torch.Tensor:
        if norm is None:
            return x
        weight = getattr(norm, "weight", None)
        if weight is not None and weight.numel() == x.shape[-2] * x.shape[-1] != x.shape[-1]:  # over all heads (OLMo-2)
            return norm.forward(x.flatten(-2)).unflatten(-1, x.shape[-2:])
        return norm.forward(x)

    def _rotary(self, x: torch.Tensor) -> torch.Tensor:
        if self.cos is None:
            return x
        width = self.cos.shape[-1]
        cos, sin = self.cos[:, : x.shape[1], None].to(x.dtype), self.sin[:, : x.shape[1], None].to(x.dtype)
        turned, kept = x[..., :width], x[..., width:]
        return torch.cat((turned * cos + _rotate_half(turned) * sin, kept), dim=-1)

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys as the scores see them (normed, rotated; keys expanded to query
        heads), ``[batch, pos, heads, d_head]`` in float64."""
        with torch.no_grad():
            q = self._rotary(self._normed(q, self.q_norm))
            k = self._rotary(self._normed(k, self.k_norm))
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=2)
        return q.double(), k.double()

    def logits(self, q_rot: torch.Tensor, k_rot: torch.Tensor) -> torch.Tensor:
        """Unmasked scores ``[batch, heads, query_pos, key_pos]`` (scaled, soft-capped), float64."""
        scores = torch.einsum("bshd,bthd->bhst", q_rot, k_rot) * self.scale
        return scores if self.softcap is None else torch.tanh(scores / self.softcap) * self.softcap

    def scores(self, q_rot: torch.Tensor, k_rot: torch.Tensor) -> torch.Tensor:
        """Masked scores (masked = -inf), float64. A padding query, which the model lets see no key,
        sees only itself here (its gradient is 0, so its effects are 0, and finite)."""
        scores = self.logits(q_rot, k_rot)
        positions = scores.shape[-1]
        visible = self.visible[..., :positions, :positions]
        alone = ~visible.any(-1, keepdim=True) & torch.eye(positions, dtype=torch.bool, device=visible.device)
        return scores.masked_fill(~(visible | alone), float("-inf"))

    def check(self, q_rot: torch.Tensor, k_rot: torch.Tensor, pattern: torch.Tensor, atol: float = 1e-4) -> None:
        """Raise if the recomputed softmax differs from the model's own ``pattern`` by more than
        ``atol`` at any real query (padding queries hold whatever the model made of a row it masked
        entirely)."""
        gap = (self.scores(q_rot, k_rot).softmax(-1) - pattern.double()).abs()
        if self.real is not None:
            gap = gap * self.real[:, None, :gap.shape[2], None].to(gap.device)
        difference = gap.max().item()
        if not difference <= atol:
            raise AttentionGeometryError(
                f"{self.label}: recomputed attention differs from the model's by {difference:.2e} (> {atol:g}); "
                "the QK fix cannot reproduce this model's attention"
            )


class AttentionGeometry:
    """The :class:`LayerGeometry` of every layer of an ``interp.Model``, per prompt length (and, for
    a padded batch, per attention mask: each row's own mask and rotary positions)."""

    def __init__(self, model) -> None:
        from interp.sublayers import require_local_weights

        require_local_weights(model)  # it runs the local modules to see what each attention is handed
        self.model = model
        self._cache: dict[object, list[LayerGeometry]] = {}

    @classmethod
    def of(cls, model) -> "AttentionGeometry":
        return cls(model)

    def at(self, layer: int, n_positions: int, mask: torch.Tensor | None = None) -> LayerGeometry:
        """Layer ``layer``'s geometry for ``n_positions`` tokens; ``mask`` [batch, n_positions] (True
        = real token) for a padded batch."""
        key = n_positions if mask is None else (n_positions, tuple(map(tuple, mask.bool().tolist())))
        if key not in self._cache:
            self._cache[key] = self._capture(n_positions, mask)
        return self._cache[key][layer]

    @torch.no_grad()
    def _capture(self, n_positions: int, mask: torch.Tensor | None = None) -> list[LayerGeometry]:
        """One forward of ``n_positions`` tokens (under ``mask``, with its position ids), reading
        what each attention module is handed."""
        model, config, layout = self.model, self.model.config, self.model.layout
        layers = model.decoder_layers()
        seen: dict[int, dict] = {}
        handles = []
        for index, layer in enumerate(layers):
            def hook(module, args, kwargs, index=index):
                seen[index] = {"mask": kwargs.get("attention_mask"), "rotary": kwargs.get("position_embeddings")}
            handles.append(get_path(layer, layout.attn).register_forward_pre_hook(hook, with_kwargs=True))
        try:
            if mask is None:
                tokens = torch.ones(1, n_positions, dtype=torch.long, device=model.device)
                model.hf_model(input_ids=tokens, use_cache=False)
            else:
                from interp.backends.base import position_ids

                mask = mask.to(model.device)
                tokens = torch.ones(mask.shape, dtype=torch.long, device=model.device)
                model.hf_model(input_ids=tokens, attention_mask=mask.long(), position_ids=position_ids(mask), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        geometries = []
        for index, layer in enumerate(layers):
            attention = unwrapped(get_path(layer, layout.attn))
            label = f"{config.name} layer {index}"
            scale = getattr(attention, "scaling", None)
            if scale is None:
                raise AttentionGeometryError(f"{label}: its attention module has no 'scaling'; cannot recompute attention scores")
            softcap = getattr(attention, "attn_logit_softcapping", None) or getattr(
                getattr(attention, "config", None), "attn_logit_softcapping", None)
            captured = seen.get(index, {})
            rows = 1 if mask is None else mask.shape[0]
            geometries.append(LayerGeometry(
                label, float(scale), config.n_heads, config.n_kv_heads, softcap,
                self._visible(captured.get("mask"), n_positions, config.causal, model.device, mask),
                *self._cos_sin(captured.get("rotary"), label, rows),
                unwrapped(get_path(layer, layout.q_norm)) if layout.q_norm else None,
                unwrapped(get_path(layer, layout.k_norm)) if layout.k_norm else None,
                None if mask is None else mask.bool(),
            ))
        return geometries

    @staticmethod
    def _visible(handed, n_positions: int, causal: bool, device, mask: torch.Tensor | None) -> torch.Tensor:
        """[1 or batch, 1, query, key] bool: what each query may see (the model's own 4-D mask where
        it hands one; else causal, and the batch's padding)."""
        if isinstance(handed, dict):  # some releases hand a mask per attention type
            raise AttentionGeometryError("the model handed its attention a mask per attention type; cannot read it")
        rows = 1 if mask is None else mask.shape[0]
        if isinstance(handed, torch.Tensor) and handed.dim() == 4:
            visible = handed if handed.dtype == torch.bool else handed > torch.finfo(handed.dtype).min / 2
            return visible[:rows, :1].to(device).expand(rows, 1, n_positions, n_positions)
        full = torch.ones(n_positions, n_positions, dtype=torch.bool, device=device)
        visible = (full.tril() if causal else full)[None, None]
        if mask is not None:
            visible = visible & mask.bool().to(device)[:, None, None, :]
        return visible

    @staticmethod
    def _cos_sin(rotary, label: str, rows: int = 1) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if rotary is None:
            return None, None
        if not (isinstance(rotary, (tuple, list)) and len(rotary) == 2):
            raise AttentionGeometryError(f"{label}: its rotary embedding is not a (cos, sin) pair; cannot recompute attention scores")
        cos, sin = rotary
        return cos.detach()[:rows], sin.detach()[:rows]
