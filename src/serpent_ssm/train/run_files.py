"""The files of a run directory that describe the run, and the run directory itself.

- ``config.json`` = the run config (``RunConfig.to_dict()``, its ``model`` section with the
  ``format_version`` of saved models) plus ``code_commit``, the git commit of the code that ran
  (null when the package is not imported from a git checkout); ``write_run_config`` and
  ``read_run_config`` are its one writer and reader (a model section of an earlier format goes
  through ``models.config.migrate``, as a saved model does).
- ``metrics.jsonl``: one JSON object per line, appended; ``read_metrics_file`` is its one reader.
  A torn last line (a kill or a full disk during an append) is dropped with a warning; a bad line
  elsewhere is an error naming the file and the line.
- ``.lock``: ``RunLock`` holds an exclusive OS lock on it for the whole run (released by the OS
  when the process dies, so a kill never leaves it stuck): a second ``serpent train`` on the same
  directory fails at once, naming the holder's pid. ``prepare_run_dir`` checks that ``--out`` is
  a usable directory and removes the temporary files a killed run left behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

from serpent_ssm.models.config import FORMAT_VERSION, migrate, unversioned_format
from serpent_ssm.train.config import RunConfig
from serpent_ssm.train.tasks import task_spec
from serpent_ssm.utils.io import atomic_write_text

__all__ = [
    "CODE_COMMIT",
    "LOCK",
    "METRICS",
    "RUN_CONFIG",
    "RunLock",
    "code_commit",
    "prepare_run_dir",
    "read_metrics_file",
    "read_run_config",
    "write_run_config",
]

RUN_CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"
# folders of a run where atomic writes leave ".<name>.<random>" temporary files when killed
WRITE_FOLDERS = (".", "checkpoints", "best", "final")
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
    """Write ``run_dir/config.json``: ``cfg.to_dict()`` (the model section with ``format_version``)
    and ``code_commit``."""
    path = Path(run_dir) / RUN_CONFIG
    record = cfg.to_dict()
    record["model"] = {"format_version": FORMAT_VERSION, **record["model"]}
    atomic_write_text(path, json.dumps({**record, CODE_COMMIT: code_commit()}, indent=1) + "\n")
    return path


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The ``RunConfig`` of a run directory; ``config.json``'s ``code_commit`` is not part of it
    (every other key is checked as ``RunConfig.from_dict`` does). The model section is read as a
    saved model's config is (``migrate``; files written before 0.4.0 carry no ``format_version``
    there, ``unversioned_format`` tells it from the keys), so an old run's model is the one that ran."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ValueError(f"{path}: missing: expected the run's config.json (is this a run directory?)")
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{Path(run_dir) / RUN_CONFIG}: expected a mapping, got {type(raw).__name__}")
    raw.pop(CODE_COMMIT, None)
    if isinstance(raw.get("model"), dict):
        raw["model"] = _current_model_section(raw["model"], raw.get("data"), path)
    return RunConfig.from_dict(raw)


def _current_model_section(model: dict[str, Any], data: Any, path: Path) -> dict[str, Any]:
    """A run config's model section in today's format (without ``format_version``)."""
    model = dict(model)
    version = model.pop("format_version", None) or unversioned_format(model)
    if version == FORMAT_VERSION:
        return model
    causal = model.get("causal")
    if causal is None:  # a run leaves the mode to its task; earlier formats' defaults depend on it
        task = data.get("task") if isinstance(data, dict) else None
        try:
            causal = task_spec(task).head == "lm" if task is not None else None
        except ValueError:  # an unknown task: RunConfig.from_dict names it
            causal = None
    try:
        migrated = migrate({"format_version": version, **model, "causal": causal})
    except ValueError as exc:
        raise ValueError(f"{path}: model.{exc}") from None
    migrated.pop("format_version")
    migrated["causal"] = model.get("causal")  # the run's own setting (the task decides when unset)
    return migrated


def read_metrics_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn last line is dropped with a warning."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    complete = lines[-1] == ""  # every record ends with a newline; a torn append does not
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except ValueError as exc:
            if i == len(lines) and not complete:
                warnings.warn(f"{path}:{i}: dropped a torn last line (an interrupted append)", stacklevel=2)
                break
            raise ValueError(f"{path}:{i}: not a metrics record: {exc}") from None
        records.append(record)
    return records


def prepare_run_dir(run_dir: str | Path) -> Path:
    """Create ``run_dir`` (checking that ``--out`` can be a directory we write in)."""
    out = Path(run_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: expected a directory, got a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--out {out}: expected a directory, but a part of its path is a file") from None
    except PermissionError:
        raise ValueError(f"--out {out}: cannot create it (permission denied)") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: expected a writable directory, got one without write permission")
    return out


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the ``.<name>.<random>`` files that atomic writes of a killed run left (call it
    while holding the run's lock); returns what was removed."""
    removed = []
    for folder in WRITE_FOLDERS:
        for path in (run_dir / folder).glob(".*.*"):
            if path.is_file() and path.name != LOCK:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class RunLock:
    """An exclusive lock on ``run_dir/.lock`` for the lifetime of a ``with`` block (no-op when
    ``enabled`` is False, e.g. on the other ranks of a distributed run)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.path, self.enabled, self._file = Path(run_dir) / LOCK, enabled, None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        try:
            import fcntl
        except ImportError:  # not POSIX: no OS lock available
            return self
        f = open(self.path, "a+")  # noqa: SIM115 (held open for the whole run)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ValueError(
                f"{self.path.parent}: another serpent train (pid {holder}) is using this run directory; "
                "wait for it to finish or choose another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
