"""Line-oriented TSV files of the generated tasks (ListOps, sparse digits).

Shared by their generators and readers: split counts and bounds, atomic writing of a split file
and of ``stats.json`` (``serpent_ssm.utils.io``), the per-split statistics a generator records,
and reading line by line with a ``DataFormatError`` that names the file and the line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.utils.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "SPLITS",
    "class_label",
    "read_lines",
    "split_bounds",
    "split_counts",
    "split_stats",
    "tab_fields",
    "write_lines",
    "write_stats",
]

SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- writing
def split_counts(n_train: int, n_val: int, n_test: int) -> dict[str, int]:
    """``{"train": n_train, "val": n_val, "test": n_test}``; a ValueError names the first count that
    is not a non-negative integer."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"n_{split}: expected a non-negative integer, got {v!r}")
    return counts


def split_bounds(counts: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Each split's ``(start, stop)`` in one list of samples holding the splits in order."""
    bounds, lo = {}, 0
    for split, n in counts.items():
        bounds[split] = (lo, lo + n)
        lo += n
    return bounds


def write_lines(path: Path, lines: Iterable[str], header: str | None = None) -> None:
    """Write ``header`` (if any) and ``lines``, one per line (UTF-8), atomically."""

    def write(f) -> None:
        if header is not None:
            f.write((header + "\n").encode("utf-8"))
        for line in lines:
            f.write((line + "\n").encode("utf-8"))

    atomic_write_bytes(path, write)


def split_stats(labels: list[int], lengths: list[int]) -> dict:
    """``{"n", "labels" (count per label, as strings), "length_min", "length_mean", "length_max"}``."""
    return {
        "n": len(labels),
        "labels": {str(k): v for k, v in sorted(Counter(labels).items())},
        "length_min": min(lengths, default=0),
        "length_mean": sum(lengths) / max(len(lengths), 1),
        "length_max": max(lengths, default=0),
    }


def write_stats(folder: Path, stats: dict) -> None:
    """``folder/stats.json`` (indented JSON), atomically."""
    atomic_write_text(folder / "stats.json", json.dumps(stats, indent=1) + "\n")


# ----------------------------------------------------------------------------- reading
def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number from 1, text without its line ending)`` for every line of ``path``; a
    DataFormatError names the file and the line that is not UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"expected UTF-8 text, got {exc.reason} at byte {exc.start}"
                raise DataFormatError(path, problem, f"line {lineno}") from None
            yield lineno, line.rstrip("\r\n")


def tab_fields(line: str, n: int, path: Path, lineno: int) -> list[str]:
    """The ``n`` tab-separated fields of ``line``, or a DataFormatError naming file and line."""
    fields = line.split("\t")
    if len(fields) != n:
        raise DataFormatError(path, f"expected {n} tab-separated fields, got {len(fields)}", f"line {lineno}")
    return fields


def class_label(text: str, path: Path, lineno: int) -> int:
    """The class 0-9 that a label field holds (``"3"``, ``"3.0"``), or a DataFormatError."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or value not in range(10):
        raise DataFormatError(path, f"expected a label 0-9, got {text!r}", f"line {lineno}")
    return int(value)
