"""A feature dashboard: what one latent of an SAE or transcoder reads and writes.

- **Top-activating contexts**: the ``k`` strongest activations of the latent over held-out token
  chunks, each with the preceding tokens and every token's activation (for highlighting).
- **Activation histogram**: the latent's non-zero activations over the same chunks, and its firing
  frequency.
- **Logit effect of the decoder row** (when the dictionary writes to the residual stream, width
  d_model): ``W_dec[latent] @ W_U^T``, the tokens whose logits the latent's output raises and
  lowers most, read directly through the unembedding (the final norm's scale ignored, as SAE
  dashboards do: a direction, not a calibrated effect).
- **De-embedding** (when it reads the residual stream): ``W_E @ W_enc[:, latent]``, the input
  tokens whose embeddings alone drive the latent most (a transcoder reads the normalized residual:
  the norm is ignored here too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from circuits.dictionary import SparseDictionary
from circuits.dictionary_evaluation import latent_activations, strongest
from interp import placement
from interp.model import Model


@dataclass
class FeatureDashboard:
    """One latent's dashboard (see the module doc). ``contexts``: dicts with ``tokens`` (strings),
    ``activations`` (one per token, the last is the maximum's token), ``activation``, ``chunk``,
    ``position``; ``promoted`` / ``suppressed`` / ``de_embedding``: (token, value) pairs, largest
    first (empty when the dictionary's input or output is not the residual stream)."""

    latent: int
    contexts: list[dict]
    activations: np.ndarray
    frequency: float
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    de_embedding: list[tuple[str, float]]


@torch.no_grad()
def feature_dashboard(model: Model, dictionary: SparseDictionary, chunks: torch.Tensor, latent: int, k: int = 8,
                      window: int = 12, n_tokens: int = 10) -> FeatureDashboard:
    """The dashboard of ``latent`` on ``chunks`` [n, length] (see the module doc)."""
    if not 0 <= latent < dictionary.config.d_sae:
        raise ValueError(f"latent {latent} is out of range: the dictionary has {dictionary.config.d_sae} latents")
    values = latent_activations(model, dictionary, chunks, [latent])[..., 0]  # [n_chunks, length]
    every = values.reshape(-1)
    contexts = []
    for value, row, position in strongest(values, k):
        start = max(0, position - window)
        ids = chunks[row, start:position + 1].tolist()
        contexts.append({"activation": value, "chunk": row, "position": position,
                         "tokens": [model.tokenizer.decode([i]) for i in ids],
                         "activations": values[row, start:position + 1].tolist()})
    d_model = model.config.d_model
    promoted = suppressed = de_embedding = []
    if dictionary.W_dec.shape[1] == d_model:
        unembedding = placement.weight(model.hf_model.get_output_embeddings()).float()  # [vocab, d_model]
        logits = unembedding @ dictionary.W_dec[latent].float().to(unembedding.device)
        promoted, suppressed = _tokens(model, logits, n_tokens), _tokens(model, -logits, n_tokens, sign=-1.0)
    if dictionary.W_enc.shape[0] == d_model:
        embedding = placement.weight(model.hf_model.get_input_embeddings()).float()  # [vocab, d_model]
        de_embedding = _tokens(model, embedding @ dictionary.W_enc[:, latent].float().to(embedding.device), n_tokens)
    active = every[every > 0].numpy()
    return FeatureDashboard(latent, contexts, active, float(len(active) / max(1, every.numel())), promoted, suppressed,
                            de_embedding)


def _tokens(model: Model, values: torch.Tensor, n: int, sign: float = 1.0) -> list[tuple[str, float]]:
    top = values.topk(min(n, len(values)))
    return [(model.tokenizer.decode([int(i)]), sign * float(v)) for v, i in zip(top.values, top.indices)]
