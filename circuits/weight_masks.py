"""Masks over a model's attention and MLP weight matrices, applied as parametrizations.

Every weight matrix inside each layer's attention and MLP module is maskable (q/k/v/o or a fused
qkv, gate/up/down or fc_in/fc_out, a router, and the 3-D weights that hold every expert of a
mixture-of-experts MLP); embeddings, the unembedding, norms and biases never are.
``masked(model, factors)`` makes each named weight W read as ``W * factor`` inside the block
(through ``torch.nn.utils.parametrize``, so the stored weights are never edited) and restores the
original parameters bit-exactly afterwards, also after an exception.

A mask is saved as parameter name -> boolean array (the published bigram-subnetwork format).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Union

import numpy as np
import torch
from torch.nn.utils import parametrize

from interp.architectures import get_path
from interp.model import Model

Factor = Union[torch.Tensor, Callable[[], torch.Tensor]]
BooleanMasks = dict[str, torch.Tensor]


class MaskError(ValueError):
    """Masks that do not fit the model, or a model with nothing to mask."""


@dataclass(frozen=True)
class MaskableMatrix:
    """One maskable weight: ``name`` is its parameter name in the Hugging Face model."""

    name: str
    layer: int
    sublayer: str  # "attn" | "mlp"
    matrix: str  # the owning module's attribute name: "q_proj", "c_fc", "dense_4h_to_h", "experts.down_proj", ...
    shape: tuple[int, ...]
    module: torch.nn.Module = field(compare=False, repr=False)
    parameter: str = "weight"  # the parameter's name on ``module``

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def label(self) -> str:
        """Component-style label, e.g. ``L0.MLP.up_proj``."""
        return f"L{self.layer}.{self.sublayer.upper()}.{self.matrix}"


def maskable_matrices(model: Model) -> list[MaskableMatrix]:
    """Every attention and MLP weight matrix of ``model``, by layer (attention first)."""
    hf = model.hf_model
    layout = model.layout
    if model.backend.name == "transformer_lens" and layout.fused_qkv:
        raise MaskError(f"TransformerLens' bridge runs copies of {model.config.architecture}'s fused qkv weight, "
                        "so masks on it would not act; load the model with backend='nnsight'")
    # TransformerLens' bridge nests each Hugging Face module as "<name>._original_component"
    names = {id(module): name.replace("._original_component", "").replace("_original_component.", "")
             for name, module in hf.named_modules()}
    found: list[MaskableMatrix] = []
    for layer, block in enumerate(model.decoder_layers()):
        for sublayer, path in (("attn", layout.attn), ("mlp", layout.mlp)):
            for child_name, child in get_path(block, path).named_modules():
                if parametrize.is_parametrized(child):
                    continue
                for parameter, weight in child._parameters.items():
                    if weight is None or weight.dim() < 2:
                        continue
                    name = names[id(child)]
                    leaf = name.rsplit(".", 1)[-1]
                    found.append(MaskableMatrix(f"{name}.{parameter}", layer, sublayer,
                                                leaf if parameter == "weight" else f"{leaf}.{parameter}",
                                                tuple(weight.shape), child, parameter))
    if not found:
        raise MaskError(f"found no attention or MLP weight matrices to mask in {model.config.name}")
    return found


class _Scaled(torch.nn.Module):
    """Parametrization W -> W * factor, the factor a tensor or a function returning one."""

    def __init__(self, factor: Factor) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        factor = self.factor() if callable(self.factor) else self.factor
        return weight * factor.to(weight.dtype)


@contextmanager
def masked(model: Model, factors: Mapping[str, Factor]) -> Iterator[None]:
    """Within the block, each weight named in ``factors`` is used as ``weight * factor``.

    ``factors`` maps parameter names (see :func:`maskable_matrices`) to a tensor of the weight's
    shape (boolean or float) or a function returning one (re-evaluated on every forward, so
    learnable mask scores get gradients).
    """
    by_name = {m.name: m for m in maskable_matrices(model)}
    unknown = [name for name in factors if name not in by_name]
    if unknown:
        raise MaskError(f"{unknown[0]!r} is not a maskable weight of {model.config.name} "
                        f"(e.g. {next(iter(by_name))!r})")
    for name, factor in factors.items():
        if isinstance(factor, torch.Tensor) and tuple(factor.shape) != by_name[name].shape:
            raise MaskError(f"mask for {name} has shape {tuple(factor.shape)}, the weight has {by_name[name].shape}")
    registered: list[tuple[torch.nn.Module, str]] = []
    try:
        for name, factor in factors.items():
            matrix = by_name[name]
            parametrize.register_parametrization(matrix.module, matrix.parameter, _Scaled(factor), unsafe=True)
            registered.append((matrix.module, matrix.parameter))
        yield
    finally:
        for module, parameter in registered:
            parametrize.remove_parametrizations(module, parameter, leave_parametrized=False)


# ---------------------------------------------------------------------- boolean masks
def kept_fraction(masks: Mapping[str, torch.Tensor]) -> float:
    """Kept entries over all entries of the masks."""
    total = sum(int(m.numel()) for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / max(total, 1)


def complement(masks: Mapping[str, torch.Tensor]) -> BooleanMasks:
    return {name: ~m.bool() for name, m in masks.items()}


def random_like(masks: Mapping[str, torch.Tensor], seed: int = 0) -> BooleanMasks:
    """Random masks keeping exactly as many entries of each matrix as ``masks`` does."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in masks.items():
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[torch.randperm(mask.numel(), generator=generator)[:int(mask.sum())]] = True
        out[name] = flat.reshape(mask.shape)
    return out


_PACKED = "__packed_bits__"  # marks a file of bit-packed masks; each name's shape is under "<name>.__shape__"


def save_masks(masks: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Parameter name -> boolean array, as ``.npz``: eight mask entries per byte, compressed (a
    mask of every weight of a 135M model writes in under a second instead of seconds)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    arrays: dict[str, np.ndarray] = {_PACKED: np.array(True)}
    for name, mask in masks.items():
        values = mask.bool().cpu().numpy()
        arrays[name], arrays[f"{name}.__shape__"] = np.packbits(values.ravel()), np.array(values.shape, dtype=np.int64)
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    tmp.replace(path)
    return path


def load_masks(path: str | Path) -> BooleanMasks:
    """The masks :func:`save_masks` wrote (also files of plain boolean arrays, as older runs have)."""
    try:
        with np.load(path) as data:
            if _PACKED in data.files:
                masks = {}
                for name in data.files:
                    if name == _PACKED or name.endswith(".__shape__"):
                        continue
                    shape = tuple(int(n) for n in data[f"{name}.__shape__"])
                    bits = np.unpackbits(data[name], count=int(np.prod(shape)))
                    masks[name] = torch.from_numpy(bits.astype(bool).reshape(shape))
            else:
                masks = {name: torch.from_numpy(data[name]) for name in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise MaskError(f"{path} is not a saved mask file ({type(exc).__name__}: {exc})") from None
    bad = [name for name, m in masks.items() if m.dtype != torch.bool]
    if bad:
        raise MaskError(f"{path}: mask {bad[0]!r} is not boolean")
    return masks
