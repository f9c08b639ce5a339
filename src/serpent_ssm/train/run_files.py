"""The files of a run directory that describe the run: ``config.json`` = the run config
(``RunConfig.to_dict()``) plus ``code_commit``, the git commit of the code that ran (null when the
package is not imported from a git checkout). ``write_run_config`` and ``read_run_config`` are
their one writer and reader.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from serpent_ssm.train.config import RunConfig
from serpent_ssm.utils.io import atomic_write_text

__all__ = ["CODE_COMMIT", "RUN_CONFIG", "code_commit", "read_run_config", "write_run_config"]

RUN_CONFIG = "config.json"
CODE_COMMIT = "code_commit"  # the key that config.json holds beside the run config's sections
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git(args: list[str], cwd: Path) -> str | None:
    """``git *args`` run in ``cwd`` (5 s at most): its output, or None on any failure."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):  # no git, no such folder, too slow
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_commit(directory: str | Path = PACKAGE_DIR) -> str | None:
    """The commit checked out where ``directory`` (by default the package) lives, when git tracks
    its ``__init__.py`` there (a package imported from a git checkout); None otherwise."""
    where = Path(directory)
    if _git(["ls-files", "--error-unmatch", "--", "__init__.py"], where) is None:
        return None  # not a checkout, or the package is installed inside another repository
    commit = _git(["rev-parse", "HEAD"], where)
    return commit if commit is not None and re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit) else None


def write_run_config(run_dir: str | Path, cfg: RunConfig) -> Path:
    """Write ``run_dir/config.json``: ``cfg.to_dict()`` and ``code_commit``."""
    path = Path(run_dir) / RUN_CONFIG
    atomic_write_text(path, json.dumps({**cfg.to_dict(), CODE_COMMIT: code_commit()}, indent=1) + "\n")
    return path


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The ``RunConfig`` of a run directory; ``config.json``'s ``code_commit`` is not part of it
    (every other key is checked as ``RunConfig.from_dict`` does)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ValueError(f"{path}: missing: expected the run's config.json (is this a run directory?)")
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{Path(run_dir) / RUN_CONFIG}: expected a mapping, got {type(raw).__name__}")
    raw.pop(CODE_COMMIT, None)
    return RunConfig.from_dict(raw)
