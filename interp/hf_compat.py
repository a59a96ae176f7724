"""The one module that touches transformers' KV caches and TransformerLens' bridge internals.

Both libraries change these between minor releases. transformers 5.24 renamed the cache argument
of every model, decoder layer and attention module from ``past_key_values`` to ``cache`` (and the
output field likewise); TransformerLens 4.3's bridge reimplements attention and still reads
``past_key_values``, so under the bridge the cache silently stayed empty. Everything else in interp
asks this module instead of naming an argument, an attribute or a cache layer itself, and
``tests/test_hf_compat.py`` pins each behaviour relied on here. :func:`check_kv_cache` runs at every
load and compares a cached forward with the plain one, so a release that breaks any of this again
stops with one line instead of returning wrong numbers.

A KV cache here is always a ``DynamicCache`` of full layers (every position kept), also for
sliding-window models: the attention mask applies the window, and a prefix can be cut at any
position. Hugging Face's own per-config cache keeps only the last ``sliding_window`` positions of
a sliding layer, which cannot be cut.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from interp.errors import first_line

_CACHE_ARGUMENTS = ("cache", "past_key_values", "layer_past")  # newest first


class KVCacheError(ValueError):
    """A cached forward disagrees with the plain forward in this environment."""


class BridgeError(ValueError):
    """TransformerLens' bridge cannot wrap this model."""


# ----------------------------------------------------------------------------- argument names
@functools.cache
def _cache_argument_of(forward_class: type) -> str:
    parameters = inspect.signature(forward_class.forward).parameters
    for name in _CACHE_ARGUMENTS:
        if name in parameters:
            return name
    return "past_key_values"


def cache_argument(hf_model: torch.nn.Module) -> str:
    """The keyword under which ``hf_model``'s forward takes a KV cache in this transformers release."""
    return _cache_argument_of(type(hf_model))


def cache_kwargs(hf_model: torch.nn.Module, cache: Any) -> dict:
    """``{name: cache}`` for ``hf_model``'s forward (empty when ``cache`` is None)."""
    return {} if cache is None else {cache_argument(hf_model): cache}


def cache_in(kwargs: dict) -> Any:
    """The KV cache a module was called with, whatever this release names the argument."""
    for name in _CACHE_ARGUMENTS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


@functools.cache
def cache_output_field() -> str:
    """The field of a causal LM's output that holds the KV cache (``cache`` from transformers 5.24,
    ``past_key_values`` before)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a Hugging Face forward (or ``generate``) returned."""
    current = cache_output_field()
    for name in (current, "past_key_values" if current == "cache" else "cache"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


# ----------------------------------------------------------------------------- caches
def new_cache() -> Any:
    """An empty cache whose every layer keeps all positions (see the module docstring)."""
    from transformers import DynamicCache

    return DynamicCache()


def layer_states(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer, each [batch, kv_heads, pos, d_head]. Reads the layers'
    ``keys``/``values`` attributes (pinned by a test)."""
    states = []
    for index, layer in enumerate(cache.layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            raise KVCacheError(f"KV cache layer {index} holds no keys: the forward that filled it did not use it "
                               "(a transformers / transformer-lens combination interp does not support)")
        states.append((keys, values))
    return states


def cache_from_states(states: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A new cache holding the given (keys, values) per layer."""
    cache = new_cache()
    for index, (keys, values) in enumerate(states):
        cache.update(keys, values, index)
    return cache


def kv_prefix(cache: Any, position: int, rows: torch.Tensor | None = None,
              devices: list[torch.device] | None = None, repeats: int = 1) -> Any:
    """A read-only cache of ``cache``'s positions < ``position``, with batch rows picked by ``rows``
    (None: all rows); None when ``position`` is 0. ``devices``:
    each layer's device, where the cache was offloaded (None: each layer stays where it is).
    ``repeats``: the forward's batch holds the rows that many times over (variants of one set of
    prompts); the prefix is stored once and tiled one layer at a time, as the layer runs."""
    if position == 0:
        return None
    states = []
    for keys, values in layer_states(cache):
        if position > keys.shape[-2]:
            raise KVCacheError(f"a KV prefix of {position} positions was asked of a cache holding {keys.shape[-2]}")
        index = slice(None) if rows is None else rows.to(keys.device)
        keys, values = keys[index, :, :position], values[index, :, :position]
        if devices is not None:
            keys, values = keys.to(devices[len(states)]), values.to(devices[len(states)])
        states.append((keys, values))
    prefix = read_only(cache_from_states(states))
    for layer in prefix.layers:
        layer.repeats = repeats
    return prefix


def read_only(cache: Any) -> Any:
    """``cache`` whose layers hand each forward the keys and values extended by the new positions
    without keeping them: the forward leaves the cache as it was, so one prefix serves many
    forwards, and no layer's extended K/V is held until the forward ends."""
    for layer in cache.layers:
        layer.__class__ = _read_only_class(type(layer))
    return cache


@functools.cache
def _read_only_class(layer_class: type) -> type:
    """A subclass of a cache layer class whose ``update`` restores the layer's state afterwards."""
    if layer_class.__name__.startswith("ReadOnly"):
        return layer_class

    def update(self, *args, **kwargs):
        state = dict(vars(self))
        try:
            if getattr(self, "repeats", 1) > 1 and getattr(self, "keys", None) is not None:
                self.keys, self.values = self.keys.repeat(self.repeats, 1, 1, 1), self.values.repeat(self.repeats, 1, 1, 1)
            return layer_class.update(self, *args, **kwargs)
        finally:
            vars(self).clear()
            vars(self).update(state)

    return type(f"ReadOnly{layer_class.__name__}", (layer_class,), {"update": update})


def cache_length(cache: Any) -> int:
    """Positions held by ``cache`` (0 for None)."""
    return 0 if cache is None else cache.get_seq_length()


# ----------------------------------------------------------------------------- TransformerLens' bridge
def unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face module itself, under any TransformerLens bridge wrapper around it."""
    while hasattr(module, "_original_component"):
        module = module._original_component
    return module


def executing_layer(layer: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``forward`` runs a decoder layer (a bridge block runs the layer it wraps)."""
    return unwrapped(layer)


def boot_bridge(model_dir: str, hf_model: torch.nn.Module, tokenizer, attention_modules: list[torch.nn.Module]):
    """TransformerLens' ``TransformerBridge`` around ``hf_model`` (wrapped in place).

    ``attention_modules`` are the model's attention modules (as they sit in the tree before the
    bridge wraps them); each bridge attention wrapper gets a pre-hook that hands it the cache
    under the keyword the bridge reads (``past_key_values``) when this transformers release
    passes it as ``cache``. Non-causal models get the bridge's own causal flag switched off.
    """
    from transformer_lens.model_bridge import TransformerBridge

    owners = _attention_owners(hf_model, attention_modules)
    try:
        bridge = TransformerBridge.boot_transformers(model_dir, hf_model=hf_model, tokenizer=tokenizer)
    except Exception as exc:  # the bridge raises many kinds for an architecture it has no adapter for
        raise BridgeError(f"TransformerLens' bridge cannot run {type(hf_model).__name__} ({first_line(exc, 200)}); "
                          "load it with backend='nnsight'") from None
    for owner, name in owners:
        wrapper = getattr(owner, name)
        if wrapper is not None and hasattr(wrapper, "_original_component"):
            wrapper.register_forward_pre_hook(_hand_cache_to_bridge, with_kwargs=True)
    if not getattr(hf_model.config, "is_causal", True):  # e.g. tracr ports: the bridge masks by default
        for block in bridge.blocks:  # the bridge's own flag (plain assignment goes to the HF module)
            vars(block.attn)["is_causal"] = False
    return bridge


def _attention_owners(root: torch.nn.Module, modules: list[torch.nn.Module]) -> list[tuple[torch.nn.Module, str]]:
    """(parent module, attribute name) of each module in ``modules``."""
    wanted = {id(m) for m in modules}
    owners = []
    for parent in root.modules():
        for name, child in parent.named_children():
            if id(child) in wanted:
                owners.append((parent, name))
    return owners


def _hand_cache_to_bridge(module, args, kwargs):
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs["past_key_values"] = kwargs.pop("cache")
    return args, kwargs


# ----------------------------------------------------------------------------- the check
def probe_tokens(model, n_tokens: int, rows: int = 2) -> torch.Tensor:
    """Fixed token ids [rows, n_tokens] for the load-time checks: spread over the vocabulary, never
    id 0, different in each row (at most 2 rows)."""
    steps = torch.arange(n_tokens, device=model.device)
    return (torch.stack([steps * 7919 + 11, steps * 104729 + 5])[:rows] % max(model.config.d_vocab - 1, 1) + 1)


@torch.no_grad()
def check_kv_cache(model, n_tokens: int = 6) -> None:
    """Raise :class:`KVCacheError` unless a forward resumed from a KV prefix (as patching, AtP and
    generation use it) gives the logits of the plain forward, on ``n_tokens`` fixed tokens."""
    from interp.backends.base import RunSpec

    if n_tokens < 2:
        raise ValueError("check_kv_cache needs at least 2 tokens")
    tokens = probe_tokens(model, n_tokens)
    try:
        plain = model.forward(RunSpec(tokens)).logits
    except Exception as exc:  # the first forward through TransformerLens' reimplementation of the model
        if model.backend.name != "transformer_lens":
            raise
        raise BridgeError(f"TransformerLens' bridge cannot run {model.config.architecture} ({first_line(exc, 200)}); "
                          "load it with backend='nnsight'") from None
    recorded = model.forward(RunSpec(tokens, logits_to_keep=1, return_cache=True)).past_key_values
    split = n_tokens // 2
    rows = torch.tensor([1, 0, 1], device=model.device)
    prefix = kv_prefix(recorded, split, rows)
    resumed = model.forward(RunSpec(tokens[rows, split:], past_key_values=prefix)).logits
    if cache_length(prefix) != split:
        raise KVCacheError(_versions_line(f"{model.config.name} on the {model.backend.name} backend: a read-only KV prefix "
                                          f"of {split} positions holds {cache_length(prefix)} after a forward"))
    difference = (resumed - plain[rows, split:]).abs().max().item()
    scale = max(1.0, plain.abs().max().item())
    if not difference <= 1e-3 * scale:
        raise KVCacheError(_versions_line(f"{model.config.name} on the {model.backend.name} backend: a forward resumed "
                                          f"from its KV cache differs from the plain forward by {difference:.3g}"))


@torch.no_grad()
def check_attention(model, n_tokens: int = 6) -> None:
    """Raise :class:`~interp.shortcuts.ShortcutError` unless the model's attention implementation
    (SDPA) gives the eager implementation's logits, on a batch with a left-padded row."""
    from interp import shortcuts
    from interp.backends.base import RunSpec

    if model.attention == "eager":
        return
    tokens = probe_tokens(model, n_tokens)
    mask = torch.ones(tokens.shape, dtype=torch.bool, device=model.device)
    mask[1, :2] = False
    fast = model.forward(RunSpec(tokens, attention_mask=mask)).logits
    with model.eager_attention():
        eager = model.forward(RunSpec(tokens, attention_mask=mask)).logits
    shortcuts.check(f"{model.attention} attention", fast[mask], eager[mask], _versions_line(model.config.name),
                    what="the logits", dtype=model.dtype)


@torch.no_grad()
def check_padding(model, n_tokens: int = 6) -> str | None:
    """None when a padded row gives the logits of its tokens alone, left- and right-padded, through
    the model's backend; else one line saying what differed (with the installed versions). Padding
    relies on how each transformers release builds the attention mask and position ids."""
    from interp.backends.base import RunSpec
    from interp.shortcuts import rounding_rtol

    tokens = probe_tokens(model, n_tokens)
    short = n_tokens // 2
    specs = [RunSpec(tokens[:1]), RunSpec(tokens[1:, :short])]
    real = {}
    for side in ("left", "right"):
        real[side] = torch.zeros(n_tokens, dtype=torch.bool, device=model.device)
        real[side][n_tokens - short:] = True
        if side == "right":
            real[side] = real[side].flip(0)
        row = torch.zeros(n_tokens, dtype=torch.long, device=model.device)
        row[real[side]] = tokens[1, :short]
        specs.append(RunSpec(torch.stack([tokens[0], row]), attention_mask=torch.stack([torch.ones_like(real[side]), real[side]])))
    outputs = [out.logits for out in model.forwards((spec, None) for spec in specs)]  # a remote model: one request
    alone = [outputs[0][0], outputs[1][0]]
    for side, logits in zip(real, outputs[2:]):
        difference = max((logits[0] - alone[0]).abs().max().item(), (logits[1][real[side]] - alone[1]).abs().max().item())
        scale = max(1.0, alone[0].abs().max().item())
        if not difference <= rounding_rtol(1e-3, logits.dtype) * scale:
            return _versions_line(f"{model.config.name} on the {model.backend.name} backend: a {side}-padded row's logits "
                                  f"differ from the same tokens alone by {difference:.3g}, so prompts of different lengths "
                                  "cannot share a batch")
    return None


def _versions_line(message: str) -> str:
    from interp.shortcuts import versions

    return f"{message} ({versions()}); try backend='nnsight', or the versions pyproject.toml lists as tested"
