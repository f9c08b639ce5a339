"""Process memory measurement (CPU): resident set size and its peak over a region of code."""

from __future__ import annotations

import os
import resource
import threading
import time

__all__ = ["PeakRSS", "rss_bytes"]


def rss_bytes() -> int:
    """Current resident set size in bytes (Linux: /proc/self/statm; elsewhere: the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: ru_maxrss is the best available (KiB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
