"""Peak resident memory of a block of code, sampled by a background thread (CPU runs)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil


@contextmanager
def peak_rss_mb(into: dict, key: str, interval: float = 0.005):
    """Store in ``into[key]`` the peak RSS above the starting RSS, in MiB, while the block runs."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        into[key] = (peak[0] - start) / 2**20
