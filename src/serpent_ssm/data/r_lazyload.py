"""Reading an R lazy-load database with the ``rdata`` package (the optional extra
``serpent-ssm[data]``), and the lines of an R character vector as ``rdata`` converts it.

The index ``<name>.rdx`` is a serialized R list whose ``variables`` give each object's ``(offset,
length)`` in ``<name>.rdb``; each ``.rdb`` blob is a 4-byte big-endian length plus a compressed
(zlib, or bzip2/xz/none after a type byte) RDS object.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from pathlib import Path

from serpent_ssm.data.errors import DataFormatError, maybe_gunzip, require_file

__all__ = ["read_r_lazyload"]


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
