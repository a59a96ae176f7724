"""Will it fit? Rough memory estimates of a request, checked against the machine before the work
starts, so a request that cannot fit stops in one line saying how much it would need instead of
running until the kernel kills it.

The estimates count the big tensors an analysis holds at once (activations, caches, gradients),
in bytes; they are deliberately generous, and only requests beyond the memory this machine has
available now are refused.
"""

from __future__ import annotations

import os


class MemoryNeedError(ValueError):
    """A request that needs more memory than the machine has available (a user error: one line)."""


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; else free pages); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def readable(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n_bytes) < 1024 or unit == "PB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} PB"


def require(n_bytes: float, what: str, hint: str = "") -> None:
    """Raise :class:`MemoryNeedError` if ``what`` would need more than the memory available."""
    free = available_memory()
    if free is not None and n_bytes > free:
        advice = f"; {hint}" if hint else ""
        raise MemoryNeedError(f"{what} would need about {readable(n_bytes)} of memory, and this machine has "
                              f"{readable(free)} available{advice}")
