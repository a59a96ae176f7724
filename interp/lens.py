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


def stages(model: Model, sublayers: bool = False) -> list[str]:
    """The residual-stream sites the lens reads: ``L0.RESID_PRE`` (the embeddings) then
    ``L<l>.RESID_POST`` for every layer (with ``sublayers``, ``L<l>.RESID_MID`` before it: after
    the attention, before the MLP); the last is what the final norm reads."""
    names = ["L0.RESID_PRE"]
    for layer in range(model.config.n_layers):
        names += ([f"L{layer}.RESID_MID"] if sublayers else []) + [f"L{layer}.RESID_POST"]
    return names


def stage_label(name: str) -> str:
    """A stage's name for reading: ``embed``, ``L3 attn`` (after layer 3's attention), ``L3``."""
    layer, _, kind = name.partition(".")
    return {"RESID_PRE": "embed", "RESID_MID": f"{layer} attn"}.get(kind, layer)


def _stage_reads(model: Model, names: list[str]) -> list[str]:
    """The sites to read for ``names``: a RESID_MID stage is read as its layer's RESID_PRE plus its
    attention output (one line for families whose attention and MLP run in parallel, which have no
    such stage)."""
    if not any(name.endswith("RESID_MID") for name in names):
        return names
    if model.config.parallel_attn_mlp:
        raise ValueError(f"{model.config.name} runs attention and MLP in parallel on the same input: there is no "
                         "residual stream between them to decode (drop --sublayers)")
    Sublayers(model).require_additive_writes("decoding after each sublayer", post_norms=True)
    layers = [int(name.split(".")[0][1:]) for name in names if name.endswith("RESID_MID")]
    return [name for name in names if not name.endswith("RESID_MID")] + [
        f"L{layer}.{kind}" for layer in layers for kind in ("RESID_PRE", "ATTN")]


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
def lens_logits(model: Model, tokens: Tokens, tuned=None, sublayers: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(lens logits [n_stages, batch, pos, d_vocab], the model's logits [batch, pos, d_vocab]) of
    ``tokens``, each stage decoded directly (the logit lens) or through its translator of a
    :class:`~interp.tuned_lens.TunedLens` (``tuned``); raises
    :class:`~interp.shortcuts.ShortcutError` unless the last stage reproduces the model's logits
    (to 1e-4 of their size). ``sublayers``: also the stage after each attention (the logit lens
    only)."""
    names = stages(model, sublayers)
    if tuned is not None and sublayers:
        raise ValueError("a tuned lens translates the layers' outputs; it has no translators after each sublayer")
    logits, cache = model.run_with_cache(tokens, _stage_reads(model, names))

    def residual(name: str) -> torch.Tensor:
        if name.endswith("RESID_MID"):
            layer = name.split(".")[0]
            return cache[f"{layer}.RESID_PRE"] + cache[f"{layer}.ATTN"]
        return cache[name]

    lens = torch.stack([unembed(model, residual(name) if tuned is None else tuned.translate(i, residual(name)))
                        for i, name in enumerate(names)])
    real = tokens.mask if tokens.mask is not None else torch.ones(tokens.ids.shape, dtype=torch.bool)
    shortcuts.check("the logit lens's decoding of the last residual stream", lens[-1][real.to(lens.device)],
                    logits.float()[real.to(logits.device)], f"{model.config.name}, {len(names)} stages",
                    what="logits", dtype=model.dtype)
    return lens, logits.float()
