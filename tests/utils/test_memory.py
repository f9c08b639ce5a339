"""Peak memory: the one helper behind the training summary and the benchmarks."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest

from serpent_ssm.utils.memory import PeakRSS, peak_memory_mb, reset_peak_memory, rss_bytes

MIB = 2**20


def _touch(n_mib: int) -> mmap.mmap:
    """``n_mib`` MiB of fresh pages from the OS (an anonymous mapping), one byte written per page
    so that all are resident: never memory that earlier tests freed and the allocator kept."""
    buf = mmap.mmap(-1, n_mib * MIB)
    for offset in range(0, n_mib * MIB, mmap.PAGESIZE):
        buf[offset] = 1
    return buf


def test_rss_and_sampled_peak():
    assert rss_bytes() > 0
    with PeakRSS() as mon:
        x = _touch(96)
    del x
    assert mon.extra >= 64 * MIB and mon.peak >= mon.start


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU peak is reset through /proc (Linux)")
def test_peak_after_reset_follows_a_new_allocation():
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("resetting the peak resident size is not permitted here")
    reset_peak_memory("cpu")
    before = peak_memory_mb("cpu")
    x = _touch(96)
    after = peak_memory_mb("cpu")
    del x
    assert after - before >= 64, (before, after)
