"""The logit lens: what the residual stream at each layer already predicts.

The residual stream at a *stage* (before layer 0, i.e. the embeddings, and after each layer) is
read and decoded the way the model decodes its last one: the final norm, the unembedding, and the
model's own post-processing of logits (Gemma-2's final soft-capping, Cohere's ``logit_scale``,
Granite's ``logits_scaling``). At the last stage this is the model's output, which every call
checks against the plain forward's logits (:mod:`interp.shortcuts`).
"""

from __future__ import annotations

import torch

from interp import shortcuts
from interp.batch import Tokens
from interp.model import Model
from interp.sublayers import Sublayers


def stages(model: Model) -> list[str]:
    """The residual-stream sites the lens reads: ``L0.RESID_PRE`` (the embeddings) then
    ``L<l>.RESID_POST`` for every layer; the last is what the final norm reads."""
    return ["L0.RESID_PRE"] + [f"L{layer}.RESID_POST" for layer in range(model.config.n_layers)]


def unembed(model: Model, residual: torch.Tensor) -> torch.Tensor:
    """Logits [..., d_vocab] of residual-stream vectors [..., d_model] (float32): the final norm,
    the unembedding and the model's logit post-processing."""
    norm = Sublayers(model).norm("final")
    head = model.hf_model.get_output_embeddings()
    logits = head(norm(residual.to(next(head.parameters()).dtype))).float()
    config = model.hf_model.config
    text = getattr(config, "text_config", None) or config
    scale = getattr(text, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    scaling = getattr(text, "logits_scaling", None)
    if isinstance(scaling, (int, float)) and scaling != 1:
        logits = logits / scaling
    cap = getattr(text, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def lens_logits(model: Model, tokens: Tokens, tuned=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lens logits [n_stages, batch, pos, d_vocab], the model's logits [batch, pos, d_vocab]) of
    ``tokens``, each stage decoded directly (the logit lens) or through its translator of a
    :class:`~interp.tuned_lens.TunedLens` (``tuned``); raises
    :class:`~interp.shortcuts.ShortcutError` unless the last stage reproduces the model's logits
    (to 1e-4 of their size)."""
    names = stages(model)
    logits, cache = model.run_with_cache(tokens, names)
    lens = torch.stack([unembed(model, cache[name] if tuned is None else tuned.translate(i, cache[name]))
                        for i, name in enumerate(names)])
    real = tokens.mask if tokens.mask is not None else torch.ones(tokens.ids.shape, dtype=torch.bool)
    shortcuts.check("the logit lens's decoding of the last residual stream", lens[-1][real.to(lens.device)],
                    logits.float()[real.to(logits.device)], f"{model.config.name}, {len(names)} stages",
                    what="logits")
    return lens, logits.float()
