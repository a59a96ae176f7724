"""The one interface every backend implements: a forward with reads and edits at sites.

Every activation crosses the interface in its canonical shape (see ``interp.components``):
``[batch, pos, d_model]`` for residual/attention/MLP outputs, ``[batch, pos, heads, d_head]``
for z/q/k/v, ``[batch, heads, query_pos, key_pos]`` for patterns, ``[batch, pos, d_mlp]`` for
MLP neurons.
"""

from __future__ import annotations

import dataclasses

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from interp import hf_compat
from interp.components import Site

Edit = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RunSpec:
    """One forward pass.

    ``edits[site]`` are applied in order to the site's canonical tensor; ``reads`` are returned
    after edits. ``logits_to_keep`` = k > 0 unembeds only the last k positions (0 = all);
    ``logit_positions`` [batch, k] unembeds only those positions of each row (logits
    [batch, k, d_vocab]). ``past_key_values`` feeds a KV cache for earlier positions;
    ``return_cache`` asks for the updated cache back. ``keep_grad`` keeps read tensors in the
    autograd graph (``retain_grad``). ``attention_mask`` [batch, past + pos] marks real tokens
    (True) and padding (False) over the cached and the new positions; position ids follow from it
    (the count of real tokens before each one), so left and right padding give the same numbers.
    None: every token is real. ``after(logits, reads)`` runs where the forward ran, with the
    logits and the reads still in the autograd graph (``keep_grad``), and what it returns comes
    back as ``RunOutput.after``: a remote model takes its gradients this way, inside the request.
    """

    input_ids: torch.Tensor
    edits: dict[Site, list[Edit]] = field(default_factory=dict)
    reads: set[Site] = field(default_factory=set)
    logits_to_keep: int = 0
    past_key_values: Any = None
    return_cache: bool = False
    keep_grad: bool = False
    attention_mask: torch.Tensor | None = None
    logit_positions: torch.Tensor | None = None
    after: Callable[[torch.Tensor, dict[Site, Any]], Any] | None = None

    @property
    def sites(self) -> list[Site]:
        return sorted(set(self.edits) | set(self.reads))


@dataclass
class RunOutput:
    logits: torch.Tensor  # [batch, kept positions, d_vocab]
    activations: dict[Site, torch.Tensor]
    past_key_values: Any = None
    after: Any = None  # what ``RunSpec.after`` returned


class Backend(ABC):
    """Runs ``hf_model`` (a transformers causal LM) with reads and edits."""

    name: str
    hf_model: torch.nn.Module

    # True: ``forward`` unembeds only ``spec.logit_positions`` itself; False: the model gathers
    # the unembedding's input with a hook around the backend's forward
    gathers_logit_positions = False
    # False, or how the model runs remotely (``interp.backends.nnsight_backend``)
    remote: bool | str = False

    @abstractmethod
    def forward(self, spec: RunSpec) -> RunOutput:
        """Run one forward pass as described by ``spec``."""

    def forward_many(self, specs: list[RunSpec]) -> list[RunOutput]:
        """``forward`` of each spec, in order (a remote backend sends them in one request)."""
        return [self.forward(spec) for spec in specs]

    def generate(self, spec: RunSpec, new_tokens: int, next_token: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``spec``'s prompts [batch, pos] continued by ``new_tokens`` tokens: ids [batch, pos +
        new_tokens]. Each step is a forward of the whole sequence so far (``spec``'s edits, its
        attention mask extended by one real token a step), and ``next_token`` picks the tokens
        [batch] from the last position's logits [batch, d_vocab] (float32). A remote backend runs
        the whole loop in one request."""
        ids, mask = spec.input_ids, spec.attention_mask
        for _ in range(new_tokens):
            logits = self.forward(dataclasses.replace(spec, input_ids=ids, attention_mask=mask)).logits
            ids, mask = appended(ids, mask, next_token(logits[:, -1].float()))
        return ids

    def model_kwargs(self, spec: RunSpec) -> dict:
        """Keyword arguments for the Hugging Face forward shared by every backend. A run that
        returns its cache starts from an empty full-layer cache (``interp.hf_compat``)."""
        cache = spec.past_key_values
        if cache is None and spec.return_cache:
            cache = hf_compat.new_cache()
        return {"use_cache": cache is not None, **hf_compat.cache_kwargs(self.hf_model, cache), **spec_kwargs(spec)}


def spec_kwargs(spec: RunSpec) -> dict:
    """The Hugging Face forward's arguments that follow from ``spec`` alone (no KV cache):
    ``logits_to_keep``, and with a mask the mask and its position ids. A remote loop builds each
    step's arguments with it, where the backend itself is not at hand."""
    kwargs: dict = {}
    if spec.logits_to_keep:
        kwargs["logits_to_keep"] = spec.logits_to_keep
    if spec.attention_mask is not None:
        kwargs["attention_mask"] = spec.attention_mask.long()
        kwargs["position_ids"] = position_ids(spec.attention_mask)[:, -spec.input_ids.shape[1]:]
    return kwargs


def appended(ids: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``ids`` [batch, pos] and their attention mask with ``tokens`` [batch] appended as real tokens."""
    ids = torch.cat([ids, tokens[:, None].to(ids.device, ids.dtype)], dim=1)
    return ids, None if mask is None else torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [batch, pos] of a padded batch: each real token's count of real tokens before
    it (padding gets 0; nothing reads it)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def apply_edits(spec: RunSpec, site: Site, value: torch.Tensor) -> torch.Tensor:
    """Apply a site's edits to its canonical tensor and keep it for reading."""
    for edit in spec.edits.get(site, ()):
        value = edit(value)
    if spec.keep_grad and site in spec.reads:
        if value.requires_grad:
            value.retain_grad()
        else:  # nothing upstream needs a gradient (weights are frozen): start the graph here
            value = value.detach().requires_grad_()
    return value
