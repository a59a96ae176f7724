"""Saving and loading dictionaries in SAELens' on-disk format.

A dictionary folder holds ``cfg.json`` (SAELens field names: ``architecture``, ``d_in``, ``d_sae``,
``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``, ``k`` for TopK, ``d_out``
for transcoders, and the hook under both ``meta`` (SAELens 6) and the top level (SAELens 5)) and
``sae_weights.safetensors`` (``W_enc`` [d_in, d_sae], ``b_enc``, ``W_dec`` [d_sae, d_out],
``b_dec``, ``threshold`` for JumpReLU, ``W_skip`` for skip transcoders). interp adds
``interp_dictionary.json`` with its full config; without it (a folder written by SAELens or
another tool) the architecture is read from ``cfg.json``. BatchTopK is saved in its inference
form, a JumpReLU with the tracked threshold, as SAELens does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from circuits.dictionary import DictionaryConfig, DictionaryError, SparseDictionary
from interp.backends.transformer_lens_backend import hook_name
from interp.components import Component

CFG_FILE, WEIGHTS_FILE, INTERP_FILE = "cfg.json", "sae_weights.safetensors", "interp_dictionary.json"
_SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk",
                 "transcoder": "relu", "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu"}


def _hook(site: str) -> str | None:
    try:
        return hook_name(Component.parse(site).site)
    except ValueError:
        return None


def saelens_config(config: DictionaryConfig) -> dict:
    """The ``cfg.json`` SAELens reads for this dictionary."""
    architecture = _SAELENS_ARCHITECTURE[config.architecture]
    if config.kind != "sae":
        architecture = {"transcoder": "transcoder", "skip_transcoder": "skip_transcoder"}[config.kind]
        if config.architecture in ("jumprelu", "batchtopk"):
            architecture = "jumprelu_transcoder"
    hook = _hook(config.site)
    layer = Component.parse(config.site).layer if hook else None
    meta = {"model_name": config.model_name, "hook_name": hook, "hook_layer": layer, "prepend_bos": True,
            "exclude_special_tokens": True}
    cfg = {"architecture": architecture, "d_in": config.d_in, "d_sae": config.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": config.kind == "sae", "normalize_activations": "none", "reshape_activations": "none",
           "meta": meta, **meta}
    if config.architecture == "topk":
        cfg["k"] = config.k
    if config.kind != "sae":
        cfg["d_out"] = config.d_out
    return cfg


def save_dictionary(dictionary: SparseDictionary, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``cfg.json``, ``sae_weights.safetensors`` and ``interp_dictionary.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"W_enc": dictionary.W_enc, "b_enc": dictionary.b_enc, "W_dec": dictionary.W_dec, "b_dec": dictionary.b_dec}
    if dictionary.threshold is not None:
        weights["threshold"] = dictionary.threshold.clamp_min(0) if dictionary.config.architecture == "batchtopk" else dictionary.threshold
    if dictionary.W_skip is not None:
        weights["W_skip"] = dictionary.W_skip
    save_file({k: v.detach().float().contiguous().cpu() for k, v in weights.items()}, folder / WEIGHTS_FILE)
    (folder / CFG_FILE).write_text(json.dumps(saelens_config(dictionary.config), indent=1))
    (folder / INTERP_FILE).write_text(json.dumps({"config": dictionary.config.to_dict(), **(extra or {})}, indent=1))
    return folder


def load_dictionary(folder: str | Path) -> SparseDictionary:
    """Open a dictionary folder written by interp or SAELens (standard, topk, jumprelu, transcoders)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        cfg = json.loads((folder / CFG_FILE).read_text())
        weights = load_file(folder / WEIGHTS_FILE)
    except FileNotFoundError as exc:
        raise DictionaryError(f"{folder} is not a dictionary folder ({Path(exc.filename).name} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DictionaryError(f"{folder / CFG_FILE} is not valid JSON ({exc})") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise DictionaryError(f"{folder / WEIGHTS_FILE} is unreadable ({type(exc).__name__}: {exc})") from None
    interp_file = folder / INTERP_FILE
    if interp_file.is_file():
        config = DictionaryConfig(**json.loads(interp_file.read_text())["config"])
        if config.architecture == "batchtopk":
            config.architecture = "jumprelu"  # saved in inference form
    else:
        architecture = cfg.get("architecture", "standard")
        if architecture not in _FROM_SAELENS:
            raise DictionaryError(f"{folder}: SAELens architecture {architecture!r} is not supported; "
                                  f"supported: {', '.join(_FROM_SAELENS)}")
        kind = architecture if architecture in ("transcoder", "skip_transcoder") else (
            "transcoder" if architecture == "jumprelu_transcoder" else "sae")
        meta = cfg.get("meta") or cfg
        config = DictionaryConfig(d_in=cfg["d_in"], d_sae=cfg["d_sae"], architecture=_FROM_SAELENS[architecture], kind=kind,
                                  d_out=cfg.get("d_out", cfg["d_in"]), k=cfg.get("k", 32), model_name=meta.get("model_name") or "")
    missing = [name for name in ("W_enc", "b_enc", "W_dec", "b_dec") if name not in weights]
    if missing:
        raise DictionaryError(f"{folder / WEIGHTS_FILE} lacks {', '.join(missing)}")
    dictionary = SparseDictionary(config)
    expected = {"W_enc": (config.d_in, config.d_sae), "W_dec": (config.d_sae, config.d_out)}
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise DictionaryError(f"{folder}: {name} has shape {tuple(weights[name].shape)}, the config says {shape}")
    if not interp_file.is_file():
        weights = _fold_saelens_options(folder, cfg, config, dict(weights))
    with torch.no_grad():
        for name, value in weights.items():
            parameter = getattr(dictionary, name, None)
            if parameter is not None:
                parameter.copy_(value)
    dictionary.eval()
    return dictionary


def _fold_saelens_options(folder: Path, cfg: dict, config: DictionaryConfig, weights: dict) -> dict:
    """Fold SAELens run-time options into plain weights, so that interp's forward gives SAELens' numbers.

    * ``rescale_acts_by_decoder_norm`` (SAELens' TopK default): pre-activations are multiplied by
      ||W_dec[i]|| and the decoder used divided by it; the same as W_enc[:, i] and b_enc[i] times
      the norm with a unit-norm decoder row (SAELens' own ``fold_W_dec_norm``).
    * ``apply_b_dec_to_input`` false: the encoder reads x, not x - b_dec, so b_enc gains b_dec W_enc.
    """
    normalization = cfg.get("normalize_activations", "none")
    if normalization not in (None, "none"):
        raise DictionaryError(f"{folder}: SAELens activation normalization {normalization!r} is not supported "
                              "(it needs run-time statistics the folder does not hold); supported: none")
    if cfg.get("rescale_acts_by_decoder_norm"):
        norms = weights["W_dec"].norm(dim=-1).clamp_min(1e-8)
        weights["W_dec"] = weights["W_dec"] / norms[:, None]
        weights["W_enc"] = weights["W_enc"] * norms
        weights["b_enc"] = weights["b_enc"] * norms
    if config.kind == "sae" and cfg.get("apply_b_dec_to_input") is False:
        weights["b_enc"] = weights["b_enc"] + weights["b_dec"] @ weights["W_enc"]
    return weights
