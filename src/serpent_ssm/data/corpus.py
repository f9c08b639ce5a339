"""A byte-level English language-modelling corpus: Jane Austen's novels and the Python 3.11 docs.

Both come from Debian packages through ``serpent data fetch austen`` and ``serpent data fetch
python-docs`` (see :mod:`serpent_ssm.data.fetch`). The train/valid/test split is fixed and made
by whole documents, never by byte ranges, so no document is shared between splits:

- Austen (six novels, one document each): valid = *Northanger Abbey* (``northangerabbey``),
  test = *Persuasion* (``persuasion``) — the two novels published together after her death in
  1817 —, train = *Emma*, *Mansfield Park*, *Pride and Prejudice*, *Sense and Sensibility*.
- Python docs (one document per info subtree of depth 3, e.g. one library module; see
  :mod:`serpent_ssm.data.fetch`): the changelog (every document under the ``Changelog`` node:
  one per release, where some entries repeat across releases) goes to train; every other
  document goes by ``b = int(sha256(node name, UTF-8)[:8 bytes], big-endian) % 100``: train for
  ``b < 90``, valid for ``90 <= b < 95``, test for ``b >= 95``. The rule depends on the name
  only, so it does not change when documents are added or reordered.

With the Debian 12 packages ``r-cran-janeaustenr 1.0.0-1`` and ``python3.11-doc 3.11.2-6+deb12u8``
this gives, in bytes (documents joined with the separator; 4 + 1 + 1 novels and
1,347 + 71 + 60 Python-docs documents):

=============  ==========  ==========  =========
source         train       valid       test
=============  ==========  ==========  =========
austen         3,124,770   433,411     466,854
python-docs    13,133,119  472,672     725,340
both           16,257,891  906,085     1,192,196
=============  ==========  ==========  =========

A split is one byte string: its documents (sources in the order asked for; Austen novels in the
order above; Python docs in manual order) joined with :data:`DOC_SEPARATOR` (``b"\\n\\n"``), with
no separator at the ends. Every file must be UTF-8: a bad byte raises DataFormatError naming the
file and the byte offset. :class:`LMWindows` cuts a split into training windows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from serpent_ssm.data.errors import DataFormatError, require_file
from serpent_ssm.data.fetch import _cache, fetched_path, missing_message
from serpent_ssm.data.vocab import BYTE_VOCAB, RESERVED_TOKENS

__all__ = [
    "AUSTEN_SPLIT",
    "DOC_SEPARATOR",
    "ENGLISH_SOURCES",
    "SPLITS",
    "CorpusDocument",
    "LMWindows",
    "corpus_stats",
    "english_documents",
    "load_english_corpus",
    "python_docs_split",
]

SPLITS = ("train", "valid", "test")
ENGLISH_SOURCES = ("austen", "python-docs")
DOC_SEPARATOR = b"\n\n"
AUSTEN_SPLIT = {
    "train": ("emma", "mansfieldpark", "prideprejudice", "sensesensibility"),
    "valid": ("northangerabbey",),
    "test": ("persuasion",),
}
_CHANGELOG = "Changelog"


@dataclass(frozen=True)
class CorpusDocument:
    """One document of the corpus: where it comes from and which file holds it."""

    source: str
    name: str
    split: str
    path: Path


def python_docs_split(node: str, ancestors: tuple[str, ...] | list[str] = ()) -> str:
    """The split of the Python-docs document rooted at the info node ``node`` (see the module
    docstring): ``"train"``, ``"valid"`` or ``"test"``."""
    if node == _CHANGELOG or _CHANGELOG in ancestors:
        return "train"
    b = int.from_bytes(hashlib.sha256(node.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if b < 90 else "valid" if b < 95 else "test"


def _check_sources(sources) -> tuple[str, ...]:
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    bad = [s for s in sources if s not in ENGLISH_SOURCES]
    if not sources or bad or len(set(sources)) != len(sources):
        raise ValueError(
            f"sources: expected distinct names among {', '.join(ENGLISH_SOURCES)}, got {sources!r}"
        )
    return sources


def _ready(name: str, cache_dir) -> Path:
    folder = fetched_path(name, cache_dir)
    if folder is None:
        raise DataFormatError(_cache(cache_dir) / name, "missing: " + missing_message(name, cache_dir))
    return folder


def english_documents(
    cache_dir: str | Path | None = None, sources=ENGLISH_SOURCES
) -> dict[str, list[CorpusDocument]]:
    """The documents of each split, in corpus order, without reading them."""
    out: dict[str, list[CorpusDocument]] = {s: [] for s in SPLITS}
    for source in _check_sources(sources):
        folder = _ready(source, cache_dir)
        if source == "austen":
            for split in SPLITS:
                for novel in AUSTEN_SPLIT[split]:
                    path = require_file(folder / f"{novel}.txt", f"Jane Austen's novel {novel} (UTF-8 text)")
                    out[split].append(CorpusDocument(source, novel, split, path))
            continue
        index_path = require_file(folder / "documents.json", "the index of the Python docs' documents")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            entries = [(e["file"], e["node"], tuple(e.get("ancestors", ()))) for e in index]
        except (ValueError, TypeError, KeyError) as exc:
            raise DataFormatError(index_path, f"expected a JSON list of {{file, node, ...}}: {exc}") from None
        for file, node, ancestors in entries:
            split = python_docs_split(node, ancestors)
            out[split].append(CorpusDocument(source, node, split, folder / file))
    return out


def _read_utf8(path: Path) -> bytes:
    data = require_file(path, "a UTF-8 text document").read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            path, f"expected UTF-8 text, got the invalid byte 0x{data[exc.start]:02x}", f"byte {exc.start}"
        ) from None
    return data


def load_english_corpus(
    cache_dir: str | Path | None = None, sources=ENGLISH_SOURCES
) -> dict[str, torch.Tensor]:
    """``{"train", "valid", "test"}`` -> 1-D ``torch.uint8`` tensors of raw UTF-8 bytes.

    Reads the fetched data under ``cache_dir`` (default: :func:`~serpent_ssm.data.fetch.
    default_cache_dir`); raises DataFormatError naming ``serpent data fetch <source>`` when a
    source was not fetched, and naming the file and byte offset of any byte that is not UTF-8.
    """
    out = {}
    for split, docs in english_documents(cache_dir, sources).items():
        data = DOC_SEPARATOR.join(_read_utf8(d.path) for d in docs)
        out[split] = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, torch.uint8)
        )
    return out


def corpus_stats(cache_dir: str | Path | None = None, sources=ENGLISH_SOURCES) -> dict[str, dict]:
    """Sizes from the files (nothing is decoded): ``{split: {source: {"documents": n, "bytes": b},
    ..., "total": bytes of load_english_corpus(...)[split]}}``; ``bytes`` of a source leaves out the
    separators, ``total`` counts them."""
    stats: dict[str, dict] = {}
    for split, docs in english_documents(cache_dir, sources).items():
        s: dict = {}
        for d in docs:
            e = s.setdefault(d.source, {"documents": 0, "bytes": 0})
            e["documents"] += 1
            e["bytes"] += d.path.stat().st_size
        s["total"] = sum(e["bytes"] for e in s.values()) + len(DOC_SEPARATOR) * max(0, len(docs) - 1)
        stats[split] = s
    return stats


class LMWindows(Dataset):
    """Non-overlapping next-byte windows over a 1-D ``uint8`` byte tensor.

    Item ``i`` is ``(inputs, targets)``, both ``(seq_len,)`` int64 ids of :data:`BYTE_VOCAB`
    (id = byte + 3): ``inputs`` are bytes ``[i*L, (i+1)*L)`` and ``targets`` bytes
    ``[i*L + 1, (i+1)*L + 1)`` — the inputs shifted by one. There are ``(len(data) - 1) // L``
    windows; the bytes after the last full window are dropped (``n_dropped`` counts the bytes
    never used as a target, fewer than ``L``).
    """

    def __init__(self, data: torch.Tensor, seq_len: int):
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.ndim != 1:
            got = (
                f"{data.dtype} {tuple(data.shape)}" if isinstance(data, torch.Tensor) else type(data).__name__
            )
            raise ValueError(f"data: expected a 1-D torch.uint8 tensor of bytes, got {got}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len: expected an int >= 1, got {seq_len!r}")
        if len(data) < seq_len + 1:
            raise ValueError(f"data: expected at least seq_len + 1 = {seq_len + 1} bytes, got {len(data)}")
        assert BYTE_VOCAB.kind == "bytes"
        self.data = data
        self.seq_len = seq_len
        self.n_windows = (len(data) - 1) // seq_len
        self.n_dropped = len(data) - 1 - self.n_windows * seq_len

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.n_windows <= i < self.n_windows:
            raise IndexError(f"window {i} out of range for {self.n_windows} windows")
        i %= self.n_windows
        window = self.data[i * self.seq_len : (i + 1) * self.seq_len + 1]
        chunk = window.to(torch.int64) + len(RESERVED_TOKENS)
        return chunk[:-1], chunk[1:]
