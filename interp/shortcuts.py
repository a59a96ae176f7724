"""Shortcuts check themselves.

Every way interp saves work and could change a number doing so (resuming a run at a layer and
position, the shared-prefix KV cache, skipping components before the first differing position,
unembedding only the positions the metric reads, batching GradDrop's backwards, reusing a splice's
output) is compared once per call with the plain computation on something already at hand, and
raises :class:`ShortcutError` if they disagree: one line naming the shortcut and the installed
versions. Such a disagreement is a bug in interp or a release it does not support, never the
user's input, so the command line keeps the traceback.
"""

from __future__ import annotations

import torch


class ShortcutError(RuntimeError):
    """A shortcut gives other numbers than the plain computation (a bug, or an unsupported release)."""


def versions() -> str:
    """The installed versions that shortcuts depend on."""
    import importlib.metadata as metadata

    found = []
    for package in ("torch", "transformers", "transformer-lens", "nnsight"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


LOW_PRECISION_ULPS = 32  # a bf16/fp16 model's shortcut may differ from the plain run by this many of its eps


def rounding_rtol(rtol: float, dtype: torch.dtype | None, ulps: int = LOW_PRECISION_ULPS) -> float:
    """``rtol``, a tolerance that holds in float32, widened to ``ulps`` of a half-precision
    ``dtype``'s eps (bf16 rounds to 2**-8 of a value, so two computations of one bf16 number near 1
    differ by far more than 1e-3); unchanged for float32 and float64."""
    if dtype is not None and dtype.is_floating_point and torch.finfo(dtype).bits <= 16:
        return max(rtol, ulps * torch.finfo(dtype).eps)
    return rtol


def check(name: str, shortcut: torch.Tensor, plain: torch.Tensor, where: str, rtol: float = 1e-4,
          error: type[ShortcutError] = ShortcutError, what: str = "the metric", dtype: torch.dtype | None = None) -> None:
    """Raise ``error`` unless ``shortcut`` equals ``plain`` to ``rtol`` relative to the larger of 1
    and the plain values' size; ``name`` says which shortcut, ``where`` on what, ``what`` it gives.
    ``dtype``: the model's; in half precision (bf16, fp16) two computations of one number round
    differently, so ``rtol`` is at least :data:`LOW_PRECISION_ULPS` times that dtype's eps (bf16:
    0.125, fp16: 0.03), which still catches a shortcut that is wrong rather than rounded."""
    rtol = rounding_rtol(rtol, dtype)
    shortcut, plain = shortcut.detach().double().cpu(), plain.detach().double().cpu()
    gap = (shortcut - plain).abs().max().item() if shortcut.numel() else 0.0
    scale = max(1.0, plain.abs().max().item() if plain.numel() else 0.0)
    if not gap <= rtol * scale:
        raise error(f"{name} gives {what} {_short(shortcut)} where the plain computation gives {_short(plain)} ({where}; "
                    f"{versions()}): a bug in interp or a release it does not support")


def _short(values: torch.Tensor) -> str:
    flat = values.reshape(-1)[:6].tolist()
    text = ", ".join(f"{v:.6g}" for v in flat)
    return f"[{text}{', ...' if values.numel() > 6 else ''}]"
