"""Training checkpoints: atomic writes, a hash per file, and fallback to the previous good one.

``<run>/checkpoints/`` holds ``last.pt`` and ``prev.pt`` (the one before), and ``index.json``
with the SHA-256 and step of each. Saving renames ``last.pt`` to ``prev.pt``, writes the new
file under a temporary name, fsyncs and renames it, then rewrites the index (also atomically).
Loading verifies the hash and the contents (``torch.load(weights_only=True)``: tensors and plain
containers only, no code) and falls back to ``prev.pt`` with a warning when ``last.pt`` is
corrupt or truncated; a corrupt file is never loaded and the good one is never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from serpent_ssm.utils.io import atomic_write_bytes

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]


class CheckpointError(ValueError):
    """No usable checkpoint (the message says which files were tried and why)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_index(folder: Path) -> dict:
    try:
        return json.loads((folder / "index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def save_checkpoint(folder: str | Path, state: dict[str, Any], step: int) -> Path:
    """Write ``state`` (tensors and plain containers) as ``folder/last.pt``; keep the previous."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = _read_index(folder)
    last = folder / "last.pt"
    if last.exists() and "last" in index:
        os.replace(last, folder / "prev.pt")
        index["prev"] = index.pop("last")
    atomic_write_bytes(last, lambda f: torch.save(state, f))
    index["last"] = {"file": "last.pt", "sha256": _sha256(last), "step": step}
    text = json.dumps(index, indent=1).encode()
    atomic_write_bytes(folder / "index.json", lambda f: f.write(text))
    return last


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The newest checkpoint in ``folder`` whose hash (listed in ``index.json``) and contents
    check out. Files are matched to index entries by hash, so a save interrupted between its
    renames still finds the previous good file."""
    folder = Path(folder)
    known = {e["sha256"]: e["step"] for e in _read_index(folder).values() if isinstance(e, dict)}
    candidates, problems = [], []
    for name in ("last.pt", "prev.pt"):
        path = folder / name
        if not path.is_file():
            continue
        digest = _sha256(path)
        if digest not in known:
            problems.append(f"{path}: corrupt or truncated (its SHA-256 is not in index.json)")
            continue
        candidates.append((known[digest], path))
    for step, path in sorted(candidates, reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            problems.append(f"{path}: unreadable ({exc})")
            continue
        if problems:
            warnings.warn(
                f"skipped a bad checkpoint, resuming from {path} (step {step}): {'; '.join(problems)}",
                stacklevel=2,
            )
        return state
    detail = "; ".join(problems) if problems else f"no checkpoint listed in {folder / 'index.json'}"
    raise CheckpointError(f"{folder}: no usable checkpoint to resume from: {detail}")
