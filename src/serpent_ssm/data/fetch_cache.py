"""One data set's folder in the fetch cache (layout in ``fetch.py``): when a ready folder is complete,
and the atomic install of a new one through a ``.partial-*`` folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_MANIFEST = "MANIFEST.json"
_CURRENT = "current"
_MANUAL = "manual"
_FROM_MANUAL = "from-manual"
_PARTIAL = ".partial-"


def _is_complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        return all((folder / f).is_file() for f in manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_dead_partials(base: Path) -> None:
    """Remove ``.partial-<pid>-*`` folders whose process is gone (a fetch killed by a signal)."""
    for p in base.glob(_PARTIAL + "*"):
        m = re.match(re.escape(_PARTIAL) + r"(\d+)-", p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _point_current(base: Path, folder_name: str) -> None:
    tmp = base / f"{_PARTIAL}{os.getpid()}-current"
    tmp.write_text(folder_name + "\n", encoding="utf-8")
    os.replace(tmp, base / _CURRENT)


def _install(
    base: Path, version: str | None, build: Callable[[Path, Path], dict], name: str, source: str
) -> Path:
    """Run ``build(work, out) -> manifest fields`` in a ``.partial-*`` folder, then rename ``out``
    to ``base/<version>`` (``version`` None: ``build`` returns it under ``"version"``)."""
    base.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(base)
    partial = Path(tempfile.mkdtemp(prefix=f"{_PARTIAL}{os.getpid()}-", dir=base))
    try:
        work, out = partial / "work", partial / "ready"
        work.mkdir()
        out.mkdir()
        fields = build(work, out)
        version = str(fields.pop("version", None) or version or "")
        if not version or version.startswith(".") or "/" in version or version in (_MANUAL, _CURRENT):
            raise RuntimeError(f"fetch {name}: unusable version {version!r}")
        files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        manifest = {"name": name, "version": version, "source": source, **fields}
        manifest.update(files=files, fetched=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        (out / _MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", "utf-8")
        final = base / version
        if _is_complete(final):  # fetched before (or by a concurrent fetch): keep that copy
            pass
        else:
            if final.exists():  # an incomplete leftover: never trust it
                shutil.rmtree(final)
            try:
                os.rename(out, final)
            except OSError:
                if not _is_complete(final):
                    raise
        _point_current(base, version)
        return final
    finally:
        shutil.rmtree(partial, ignore_errors=True)
