"""Training checkpoints: atomic writes, a hash per file, and fallback to the previous good one.

``<run>/checkpoints/`` holds ``last.pt`` and ``prev.pt`` (the one before), and ``index.json``
with the SHA-256 and step of each. Saving renames ``last.pt`` to ``prev.pt``, writes the new
file under a temporary name, fsyncs and renames it, then rewrites the index (also atomically).
Loading verifies the hash and the contents (``torch.load(weights_only=True)``: tensors and plain
containers only, no code) and falls back to ``prev.pt`` with a warning when ``last.pt`` is
corrupt or truncated; a corrupt file is never loaded and the good one is never deleted.
"""

from __future__ import annotations

import errno
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


def _read_index(folder: Path) -> tuple[dict[str, dict], str | None]:
    """``index.json``'s entries (``{"last"|"prev": {"file", "sha256", "step"}}``) and, when it is
    missing or not such a mapping, what is wrong with it (the entries are then ``{}``)."""
    path = folder / "index.json"
    if not path.is_file():
        return {}, f"{path} is missing, so no checkpoint file can be verified against its SHA-256"
    try:
        index = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"{path} is not valid JSON ({exc}), so no checkpoint file can be verified"
    if not isinstance(index, dict):
        return {}, f"{path}: expected a mapping of checkpoint entries, got {type(index).__name__}"
    for key, entry in index.items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("step"), int)
        )
        if not ok:
            return {}, f"{path}: entry {key!r}: expected {{file, sha256, step}}, got {entry!r}"
    return index, None


def save_checkpoint(folder: str | Path, state: dict[str, Any], step: int) -> Path:
    """Write ``state`` (tensors and plain containers) as ``folder/last.pt``; keep the previous."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index, _ = _read_index(folder)
    last = folder / "last.pt"
    if last.exists() and "last" in index:
        os.replace(last, folder / "prev.pt")
        index["prev"] = index.pop("last")
    try:
        atomic_write_bytes(last, lambda f: torch.save(state, f))
        index["last"] = {"file": "last.pt", "sha256": _sha256(last), "step": step}
        text = json.dumps(index, indent=1).encode()
        atomic_write_bytes(folder / "index.json", lambda f: f.write(text))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise CheckpointError(
            f"{folder}: no space left on device while writing the checkpoint of step {step}; the "
            "previous checkpoint is kept (resume from it with --resume once there is space)"
        ) from None
    return last


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The newest checkpoint in ``folder`` whose hash (listed in ``index.json``) and contents
    check out. Files are matched to index entries by hash, so a save interrupted between its
    renames still finds the previous good file."""
    folder = Path(folder)
    index, index_problem = _read_index(folder)
    present = [n for n in ("last.pt", "prev.pt") if (folder / n).is_file()]
    if index_problem is not None:
        files = f"{', '.join(present)} present" if present else "no checkpoint file present"
        raise CheckpointError(f"{folder}: cannot resume: {index_problem} ({files})")
    known = {e["sha256"]: e["step"] for e in index.values()}
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
