"""Atomic file writes: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], object], fsync: bool = True) -> None:
    """Call ``write(file_object)`` on a temporary file in ``path``'s folder, fsync, rename over ``path``.

    The temporary file is named ``.{name}.<random>`` and removed if ``write`` fails.
    ``fsync=False`` skips the flush to disk (for many small files that can be regenerated: the
    rename still keeps readers from seeing a partial file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    atomic_write_bytes(path, lambda f: f.write(data))
