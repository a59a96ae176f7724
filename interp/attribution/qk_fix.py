"""AtP*'s QK fix: the effect of a changed query or key through the exact new softmax.

Plain AtP linearizes the attention softmax, which is useless where it saturates. The QK fix
recomputes the attention probabilities a changed query or key produces and propagates only
their change linearly (through g^A_{s,t} = g^o_s . v_t, the gradient of the metric with respect
to the pattern). One head, target run: A = softmax(scores), o_s = sum_t A_{s,t} v_t,
g^o_s = dL/do_s.

* query at s: only row s changes, A'_{s,.} = softmax(q'_s . K^T * scale + mask);
  I(q_s) = sum_t (A'_{s,t} - A_{s,t}) g^A_{s,t}.
* key at t: every row s >= t changes its logit at t by Delta_s = f(q_s . k'_t) - f(q_s . k_t), f the
  scale (and soft-cap, where the model has one);
  A'_{s,t} = sigmoid(logit(A_{s,t}) + Delta_s) and the rest of the row rescales, so
  I(k_t) = sum_{s>=t} (A'_{s,t} - A_{s,t}) g^o_s . (v_t - obar_s^(-t)), where obar^(-t) is the
  output of row s renormalized without t (= (o_s - A_{s,t} v_t) / (1 - A_{s,t})). O(T^2 d).

Everything is in float64 and computed from the scores, never from clamped probabilities: a row
whose largest probability exceeds 1/2 gets logit(A) and obar^(-t) from the other entries
directly, so A = 1 (and A = 0 from underflow) are exact; a row with one visible key cannot
change.

Tensors: queries and keys are rotated and expanded to query heads, ``[batch, pos, heads, d_head]``
float64; ``grad_o`` is dL/dz in the same shape. Results are per head: ``[batch, pos, heads]``.
"""

from __future__ import annotations

import torch

from interp.attention_geometry import LayerGeometry


def _pattern_gradient(grad_o: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g^A [batch, heads, query, key] = g^o_s . v_t."""
    return torch.einsum("bshd,bthd->bhst", grad_o, v)


def query_fix(geometry: LayerGeometry, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_new: torch.Tensor,
              grad_o: torch.Tensor) -> torch.Tensor:
    """I(q_s) for every query position and head: [batch, pos, heads]."""
    pattern = geometry.scores(q, k).softmax(-1)
    new_pattern = geometry.scores(q_new, k).softmax(-1)  # row s only depends on q_s
    effect = ((new_pattern - pattern) * _pattern_gradient(grad_o, v)).sum(-1)
    return effect.permute(0, 2, 1)


def all_keys_fix(geometry: LayerGeometry, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_new: torch.Tensor,
                 grad_o: torch.Tensor) -> torch.Tensor:
    """Every key of a head replaced at once (each row recomputed): [batch, heads]."""
    pattern = geometry.scores(q, k).softmax(-1)
    new_pattern = geometry.scores(q, k_new).softmax(-1)
    return ((new_pattern - pattern) * _pattern_gradient(grad_o, v)).sum((-1, -2))


def key_fix(geometry: LayerGeometry, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_new: torch.Tensor,
            grad_o: torch.Tensor) -> torch.Tensor:
    """I(k_t) for every key position and head, closed form: [batch, pos, heads]."""
    scores = geometry.scores(q, k)  # [b, h, s, t], -inf above the diagonal
    visible = torch.isfinite(scores)
    log_pattern = scores.log_softmax(-1)
    pattern = log_pattern.exp()
    values = v.permute(0, 2, 1, 3)  # [b, h, t, d]
    output = pattern @ values  # [b, h, s, d]
    g = grad_o.permute(0, 2, 1, 3)  # [b, h, s, d]

    # log(1 - A) and g . (v_t - obar^(-t)): from A where A <= 1/2, from the other entries at each
    # row's dominant entry (the only one that can exceed 1/2)
    log_rest = torch.log1p(-pattern.clamp(max=0.5))
    g_dot_v = g @ values.transpose(-1, -2)  # [b, h, s, t]
    g_dot_o = (g * output).sum(-1, keepdim=True)  # [b, h, s, 1]
    rest_gap = (g_dot_v - g_dot_o) / torch.exp(log_rest)
    dominant = pattern.argmax(-1, keepdim=True)  # [b, h, s, 1]
    is_dominant = torch.zeros_like(visible).scatter_(-1, dominant, True) & (pattern > 0.5)
    others = scores.masked_fill(is_dominant, float("-inf"))
    others_log_mass = others.logsumexp(-1, keepdim=True) - scores.logsumexp(-1, keepdim=True)  # log(1 - A_dominant)
    others_output = torch.nan_to_num(others.softmax(-1)) @ values  # obar^(-dominant), 0 for a lone key
    dominant_gap = g_dot_v.gather(-1, dominant) - (g * others_output).sum(-1, keepdim=True)
    log_rest = torch.where(is_dominant, others_log_mass, log_rest)
    rest_gap = torch.where(is_dominant, dominant_gap, rest_gap)

    delta = geometry.logits(q, k_new) - geometry.logits(q, k)  # each key's own change of logit (soft-capped)
    logit = log_pattern - log_rest  # +inf for a lone visible key: its probability stays 1
    new_pattern = torch.sigmoid(logit + delta)
    change = torch.where(visible & torch.isfinite(logit), new_pattern - pattern, torch.zeros_like(pattern))
    effect = (change * torch.where(visible, rest_gap, torch.zeros_like(rest_gap))).sum(-2)  # over queries s
    return effect.permute(0, 2, 1)
