"""Shared by the benchmark scripts: run one measurement per subprocess, collect JSON; measure
the peak extra memory (``serpent_ssm.utils.memory.PeakRSS``) or the best time of a step; format a
markdown table and write it into its block of ``benchmarks/README.md`` (``--write-readme``)."""

from __future__ import annotations

import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

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


HERE = Path(__file__).resolve().parent
README = HERE / "README.md"


def markdown_row(cells: Iterable[object]) -> str:
    """One row of a markdown table: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_head(columns: list[str]) -> str:
    """A markdown table's header row and the separator under it."""
    return markdown_row(columns) + "\n|" + "---|" * len(columns)


def _git(*args: str) -> str:
    """``git ARGS`` in this checkout (the code being measured); empty if git fails."""
    out = subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _commit() -> str:
    """``git rev-parse --short HEAD``, with ``+dirty`` when a tracked file other than
    ``benchmarks/README.md`` differs from it (so an earlier ``--write-readme`` does not make the next
    run dirty)."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":!README.md")
    return commit + ("+dirty" if changed else "")


def _machine() -> str:
    """CPU model (and its widest vector extension), cores, RAM, torch version, and the GPU if this
    process used CUDA."""
    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        info = Path("/proc/cpuinfo").read_text()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        cpu, flags = fields.get("model name", cpu), set(fields.get("flags", "").split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [cpu + (f" ({isa})" if isa else ""), f"{os.cpu_count()} cores", f"{ram:.0f} GiB RAM"]
    parts.append(f"torch {torch.__version__}")
    if torch.cuda.is_initialized():
        parts.append(torch.cuda.get_device_name())
    return ", ".join(parts)


def readme_header(command: str, commit: str, machine: str, date: str) -> str:
    """The line above each table of ``benchmarks/README.md``."""
    return f"`{command}` at commit {commit} on {machine}, {date}."


def write_readme_section(
    name: str, table_markdown: str, *, readme: Path = README, command: str | None = None
) -> None:
    """Replace the block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` of ``readme``
    with a header line (the command, default ``python benchmarks/<script> <argv>``; the commit; the
    machine; the date) and ``table_markdown``; every byte outside the block stays. Written to a
    temporary file beside it and renamed over it, so a reader never sees half a README."""
    text = readme.read_bytes().decode()  # bytes: line endings stay as they are
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    for marker in (start, end):
        if text.count(marker) != 1:
            raise ValueError(f"readme: expected one {marker!r} block, found {text.count(marker)}")
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise ValueError(f"readme: {end!r} comes before {start!r}")
    if command is None:
        command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    header = readme_header(command, _commit(), _machine(), time.strftime("%Y-%m-%d"))
    new = text[:i] + f"\n{header}\n\n{table_markdown.strip()}\n" + text[j:]
    fd, tmp = tempfile.mkstemp(dir=readme.parent, prefix=f".{readme.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new.encode())
        os.chmod(tmp, os.stat(readme).st_mode & 0o777)
        os.replace(tmp, readme)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
