"""The one error type of the data package: it names the file and the line or sample."""

from __future__ import annotations

import gzip
from pathlib import Path

__all__ = ["DataFormatError", "maybe_gunzip", "require_file"]


class DataFormatError(ValueError):
    """A data file is missing or malformed. ``str(err)`` reads ``"<path>:<where>: <problem>"``.

    Args:
        path: the file (or directory) at fault.
        problem: what is wrong, with the expected and the received value.
        where: ``"line 12"``, ``"sample 3"``... or None when the whole file is at fault.
    """

    def __init__(self, path: str | Path, problem: str, where: str | None = None):
        self.path = Path(path)
        self.where = where
        self.problem = problem
        super().__init__(f"{self.path}{':' + where if where else ''}: {problem}")


def require_file(path: str | Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise a DataFormatError saying what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, f"missing: expected {what}")
    return path


def maybe_gunzip(raw: bytes, path: str | Path) -> bytes:
    """``raw`` decompressed when it starts with the gzip magic, else unchanged; a corrupt stream
    raises a DataFormatError naming ``path``."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataFormatError(path, f"corrupt gzip stream: {exc}") from None
