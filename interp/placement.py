"""Where a model's weights and activations live: one device, or a device map over several.

``load_model(device_map=...)`` hands the map to the Hugging Face loader (Accelerate places each
module and moves activations between devices in the forward). The rules the rest of interp
follows:

- token ids, masks and task tensors live on the **input device** (the embedding's);
- logits come back on the input device too (``Model.forward`` moves them: metrics index them with
  task tensors);
- a read, an edit and a patch value live on the device of the layer that computes the site;
  a KV cache layer on its layer's device (``hf_compat.kv_prefix`` moves its row index);
- a module whose weights were offloaded to disk has them on the ``meta`` device; code that reads a
  weight goes through :func:`weight`, which loads it.

Nothing names a device: every tensor is created on the device of the tensor it meets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch

DeviceMap = Union[str, dict]
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# device-map values that are places, not torch devices
PLACES = ("disk",)


class PlacementError(ValueError):
    """A device map that cannot be used (unknown strategy, missing file, absent device)."""


def parse_device_map(value: DeviceMap | None) -> DeviceMap | None:
    """A device map as the Hugging Face loader takes it: None, a strategy name, or a dict
    {module path: device}. A string that is not a strategy is a JSON file holding the dict."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        mapping = value
    elif value in STRATEGIES:
        return value
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise PlacementError(f"--device-map {value!r} is neither {', '.join(STRATEGIES)} nor a JSON file "
                                 "{module path: device}")
        try:
            mapping = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PlacementError(f"--device-map {value}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(mapping, dict):
            raise PlacementError(f"--device-map {value}: a JSON object {{module path: device}} was expected, "
                                 f"not a {type(mapping).__name__}")
    for module, device in mapping.items():
        check_map_device(module, device)
    return dict(mapping)


def check_map_device(module: str, device) -> None:
    """A one-line :class:`PlacementError` for a device-map entry naming a device this machine lacks."""
    from interp.analysis import ConfigError, check_device

    if device in PLACES:
        return
    name = f"cuda:{device}" if isinstance(device, int) and not isinstance(device, bool) else device
    if not isinstance(name, str):
        raise PlacementError(f"--device-map: {module!r} maps to {device!r}, which is not a device")
    try:
        check_device(name)
    except ConfigError as exc:
        raise PlacementError(f"--device-map: {module!r} -> {str(exc).removeprefix('--device ')}") from None


def check_modules(device_map: dict, hf_model: torch.nn.Module) -> None:
    """A one-line :class:`PlacementError` for an explicit map naming a module the model lacks, or
    leaving a weight unplaced (the loader's own messages for both are long)."""
    names = dict(hf_model.named_modules())
    unknown = [module for module in device_map if module and module not in names]
    if unknown:
        raise PlacementError(f"--device-map names {unknown[0]!r}, which {type(hf_model).__name__} does not have "
                             f"(its top modules: {', '.join(n for n, _ in hf_model.named_children())})")
    placed = tuple(device_map)
    for name, _ in hf_model.named_parameters():
        if "" not in placed and not any(name == m or name.startswith(m + ".") for m in placed):
            raise PlacementError(f"--device-map places no module holding {name}; map it (or one of its parents)")


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: Accelerate's execution device where a device map placed
    it (its weights may be on ``meta``, offloaded), else its first parameter's or buffer's."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    for child in module.children():
        return execution_device(child)
    return torch.device("cpu")


def weight(module: torch.nn.Module, name: str = "weight") -> torch.Tensor:
    """``module``'s parameter ``name`` on its execution device, loaded from disk when offloaded
    (then a copy, never written back)."""
    tensor = getattr(module, name)
    if tensor.device.type != "meta":
        return tensor
    if getattr(module, "_hf_hook", None) is None:
        raise PlacementError(f"{type(module).__name__}.{name} has no values here (a remote model's weights stay on "
                             "NDIF): this analysis needs a local copy of the model")
    from accelerate.utils import align_module_device

    with align_module_device(module, execution_device(module)):
        return getattr(module, name).detach().clone()


def offload(value):
    """``value`` (a tensor, a dict or list of them, or a KV cache) moved to CPU memory: what
    ``--offload-activations`` does with the activations a sweep keeps. Users move each piece
    back to the device of the layer that reads it."""
    from interp import hf_compat

    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: offload(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(offload(item) for item in value)
    if value is None:
        return None
    return hf_compat.cache_from_states([(keys.cpu(), values.cpu()) for keys, values in hf_compat.layer_states(value)])


def offloaded(hf_model: torch.nn.Module) -> list[str]:
    """Names of the parameters a device map left on ``meta`` (offloaded to disk or CPU)."""
    return [name for name, parameter in hf_model.named_parameters() if parameter.device.type == "meta"]


def devices(hf_model: torch.nn.Module) -> list[torch.device]:
    """The distinct devices the model computes on, input device first."""
    seen = [execution_device(hf_model.get_input_embeddings())]
    for module in hf_model.modules():
        if getattr(module, "_hf_hook", None) is not None or not list(module.children()):
            device = execution_device(module)
            if device.type != "meta" and device not in seen:
                seen.append(device)
    return seen


def synchronize() -> None:
    """Wait for the CUDA work already queued (nothing without CUDA): a clock read after it times
    finished work, not launched work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
