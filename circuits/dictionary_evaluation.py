"""Running a model with a dictionary spliced in, and the standard dictionary metrics.

Splicing replaces the site's activation by the dictionary's reconstruction (an SAE) or the MLP's
output by the transcoder's prediction from the MLP's normalized input, as a ``Model.spliced``
splice (``interp.splicing``), so its latents are components (``L6.TC.1234``); ``error_term=True``
adds back what the dictionary misses, so the model's output is unchanged while the latents stay
readable.

Metrics on held-out chunks (special tokens left out): L0; explained variance
1 - E||y - y_hat||^2 / (E||y||^2 - ||E y||^2), pooled; next-token cross-entropy clean, spliced and
with the site zero-ablated, CE recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean), and
KL(clean || spliced) per token; dead (never fired) and dense (fires on > 10% of tokens) fractions;
log10 firing frequency per latent.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from circuits.activation_store import read_pairs
from circuits.dictionary import DictionaryError, SparseDictionary
from interp.components import Component, Site
from interp.metrics import kl_divergence, next_token_loss
from interp.model import Model
from interp.splicing import Splice
from interp.sublayers import Sublayers

SPLICEABLE = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def _check_site(model: Model, dictionary: SparseDictionary, site: str) -> Component:
    component = Component.parse(site).validate(model.config)
    if dictionary.config.d_in != model.config.d_model:
        raise DictionaryError(f"the dictionary reads d_in={dictionary.config.d_in}; {site} of {model.config.name} "
                              f"has d_model={model.config.d_model}")
    return component


def dictionary_splice(model: Model, dictionary: SparseDictionary, site: str | None = None,
                      error_term: bool = True) -> Splice:
    """``dictionary`` as a :class:`Splice` of ``model`` at ``site`` (default: its config's): an SAE
    replaces the site's activation, a transcoder the MLP output from the MLP's normalized input.
    Its latents become the components ``L<layer>.SAE.<i>`` / ``L<layer>.TC.<i>``. The splice runs a
    frozen copy of the dictionary (no gradients reach its weights)."""
    site = site or dictionary.config.site
    component = _check_site(model, dictionary, site)
    if component.index is not None or component.position is not None or component.kind not in SPLICEABLE:
        raise DictionaryError(f"a dictionary replaces a whole activation ({', '.join(k.upper() for k in SPLICEABLE)} "
                              f"of a layer), not {site}")
    frozen = copy.deepcopy(dictionary).requires_grad_(False).eval()
    layer = component.layer
    if dictionary.config.kind == "sae":
        return Splice(Site("sae", layer), component.site, dictionary.config.d_sae, frozen.encode, frozen.decode,
                      lambda finish: {component.site: lambda value: finish(value, value)}, error_term)
    if component.kind != "mlp_out":
        raise DictionaryError(f"a transcoder replaces an MLP: splice it at L<layer>.MLP, not {site}")
    sublayers = Sublayers(model)
    return Splice(Site("tc", layer), component.site, dictionary.config.d_sae, frozen.encode, frozen.decode,
                  lambda finish: sublayers.mlp_replacement_edits(layer, finish), error_term)


@contextmanager
def spliced(model: Model, dictionary: SparseDictionary, site: str | None = None,
            error_term: bool = False) -> Iterator[Model]:
    """Within the block, runs of ``model`` use ``dictionary`` at ``site`` (default: its config's);
    with ``error_term`` the model's output is unchanged and the latents are readable."""
    with model.spliced(dictionary_splice(model, dictionary, site, error_term)):
        yield model


@torch.no_grad()
def evaluate_dictionary(model: Model, dictionary: SparseDictionary, chunks: torch.Tensor, site: str | None = None,
                        batch_size: int = 8) -> dict:
    """Metrics of ``dictionary`` on ``chunks`` [n, length] (see the module docstring)."""
    site = site or dictionary.config.site
    component = _check_site(model, dictionary, site)
    special = torch.tensor(sorted(set(model.tokenizer.all_special_ids)))
    fired = torch.zeros(dictionary.config.d_sae)
    n_tokens = 0
    sums = {"l0": 0.0, "error": 0.0, "energy": 0.0}
    mean_y = None
    ce = {"clean": [], "spliced": [], "zero": []}
    kl = []
    for start in range(0, len(chunks), batch_size):
        tokens = chunks[start:start + batch_size].to(model.device)
        x, y = read_pairs(model, site, dictionary.config.kind, tokens)
        y_hat, f = dictionary(x)
        active = (f > 0).float()
        fired += active.sum(0)
        n_tokens += len(x)
        sums["l0"] += active.sum().item()
        sums["error"] += (y - y_hat).pow(2).sum().item()
        sums["energy"] += y.pow(2).sum().item()
        mean_y = y.sum(0) if mean_y is None else mean_y + y.sum(0)
        keep = ~torch.isin(tokens[:, 1:], special.to(tokens.device))
        clean_logits = model.run(tokens)
        with spliced(model, dictionary, site):
            spliced_logits = model.run(tokens)
        zero_site = component.site if dictionary.config.kind == "sae" else Site("mlp_out", component.layer)
        with model.patch({str(Component(zero_site.kind, zero_site.layer)): lambda v: torch.zeros_like(v)}):
            zero_logits = model.run(tokens)
        for name, logits in (("clean", clean_logits), ("spliced", spliced_logits), ("zero", zero_logits)):
            ce[name].append(next_token_loss(logits, tokens)[keep])
        clean_lp = clean_logits[:, :-1].float().log_softmax(-1)
        spliced_lp = spliced_logits[:, :-1].float().log_softmax(-1)
        kl.append(kl_divergence(clean_lp, spliced_lp)[keep])
    if n_tokens == 0:
        raise DictionaryError(f"the held-out text has no token a dictionary reads: every one of its {chunks.numel()} "
                              f"tokens is a special token of {model.config.name}'s tokenizer")
    mean_y = mean_y / n_tokens
    variance = sums["energy"] / n_tokens - mean_y.pow(2).sum().item()
    ce_mean = {name: torch.cat(values).mean().item() for name, values in ce.items()}
    frequency = fired / n_tokens
    recovered = ((ce_mean["zero"] - ce_mean["spliced"]) / (ce_mean["zero"] - ce_mean["clean"])
                 if ce_mean["zero"] != ce_mean["clean"] else float("nan"))
    return {
        "site": site, "kind": dictionary.config.kind, "architecture": dictionary.config.architecture, "n_tokens": n_tokens,
        "l0": sums["l0"] / n_tokens, "explained_variance": 1 - (sums["error"] / n_tokens) / max(variance, 1e-12),
        "ce_clean": ce_mean["clean"], "ce_spliced": ce_mean["spliced"], "ce_zero_ablation": ce_mean["zero"],
        "ce_recovered": recovered, "kl_to_clean": torch.cat(kl).mean().item(),
        "dead_fraction": float((fired == 0).float().mean()), "dense_fraction": float((frequency > 0.1).float().mean()),
        "log10_frequency": np.log10(frequency.clamp_min(1e-10).numpy()),
    }


@torch.no_grad()
def latent_activations(model: Model, dictionary: SparseDictionary, chunks: torch.Tensor, latents: list[int],
                       site: str | None = None) -> torch.Tensor:
    """The activations [n_chunks, length, len(latents)] (float32, CPU) of ``latents`` at every
    token of ``chunks`` [n_chunks, length], one chunk per forward."""
    site = site or dictionary.config.site
    _check_site(model, dictionary, site)
    rows = []
    for row in range(len(chunks)):
        x, _ = read_pairs(model, site, dictionary.config.kind, chunks[row:row + 1].to(model.device), exclude_special=False)
        rows.append(dictionary.encode(x)[:, latents].float().cpu())
    return torch.stack(rows) if rows else torch.zeros(0, chunks.shape[1], len(latents))


def strongest(activations: torch.Tensor, k: int) -> list[tuple[float, int, int]]:
    """(value, chunk, position) of the ``k`` largest positive entries of ``activations`` [n_chunks,
    length], largest first."""
    flat = activations.reshape(-1)
    values, indices = flat.topk(min(k, flat.numel()))
    width = activations.shape[1]
    return [(float(v), int(i) // width, int(i) % width) for v, i in zip(values, indices) if v > 0]


def top_contexts(model: Model, dictionary: SparseDictionary, chunks: torch.Tensor, latents: list[int], k: int = 5,
                 window: int = 8, site: str | None = None) -> dict[int, list[dict]]:
    """The ``k`` strongest activations of each latent in ``chunks``, with ``window`` tokens of context."""
    activations = latent_activations(model, dictionary, chunks, latents, site)
    out = {}
    for j, latent in enumerate(latents):
        rows = []
        for value, row, position in strongest(activations[..., j], k):
            context = chunks[row, max(0, position - window):position + 1]
            rows.append({"activation": value, "chunk": row, "position": position,
                         "context": model.tokenizer.decode(context[:-1]), "token": model.tokenizer.decode(context[-1:])})
        out[latent] = rows
    return out
