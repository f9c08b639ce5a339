"""Memory measurement: the peak over a run (CUDA allocator or the process's resident set size,
``reset_peak_memory`` / ``peak_memory_mb``) and the resident set size sampled over a region of
code (``PeakRSS``, what the CPU benchmarks report)."""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

__all__ = ["PeakRSS", "peak_memory_mb", "reset_peak_memory", "rss_bytes"]


def _max_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def rss_bytes() -> int:
    """Current resident set size in bytes (Linux: /proc/self/statm; elsewhere: the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _max_rss_bytes()


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a new peak-memory measurement on ``device`` (CUDA: the allocator's statistics; CPU on
    Linux: the process's high-water mark VmHWM; elsewhere the peak stays that of the process)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not permitted: the peak is then that of the whole process


def peak_memory_mb(device: str | torch.device) -> float:
    """Peak memory in MiB since ``reset_peak_memory(device)``: CUDA allocated bytes, or the
    process's resident set size."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return _max_rss_bytes() / 2**20


class PeakRSS:
    """Context manager sampling the resident set size in a thread every ``interval`` seconds.

    ``peak`` is the largest value seen, ``start`` the value on entry, ``extra`` their
    difference in bytes. Note that glibc keeps freed mid-sized blocks, so for an exact picture
    run the process with ``MALLOC_MMAP_THRESHOLD_=65536``.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.start
