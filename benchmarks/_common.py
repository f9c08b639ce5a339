"""Shared by the benchmark scripts: run one measurement per subprocess, collect JSON; measure
the peak extra memory (``serpent_ssm.utils.memory.PeakRSS``) or the best time of a step."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from serpent_ssm.utils.memory import PeakRSS


def peak_extra_mb(step: Callable[[], object]) -> float:
    """Peak resident memory above the level at the start while ``step()`` runs, in MiB."""
    with PeakRSS() as mon:
        step()
    return mon.extra / 2**20


def best_time(step: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``step()``, each after a full garbage
    collection (so that none falls inside a short measurement: one pass over the objects of a
    freshly built model can take tens of milliseconds)."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_worker(script: str, args: list[str], what: str) -> dict | None:
    """Run ``script --worker ... --what {time|memory}`` in a fresh process; parse its last line.

    Memory runs use ``MALLOC_MMAP_THRESHOLD_=65536`` so that the resident size follows what is
    really allocated (glibc otherwise keeps freed blocks); that slows allocation, so times are
    measured in a separate process without it.
    """
    env = dict(os.environ)
    if what == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.run(
        [sys.executable, script, *args, "--what", what], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        print(f"# {' '.join(args)} ({what}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_time_and_memory(script: str, args: list[str]) -> dict | None:
    """Times in one fresh process, memory in another; stops after the first when it reports
    ``"skipped"`` (too slow to measure). None if a process failed."""
    result: dict = {}
    for what in ("time", "memory"):
        r = run_worker(script, args, what)
        if r is None:
            return None
        result.update(r)
        if "skipped" in r:
            break
    return result
