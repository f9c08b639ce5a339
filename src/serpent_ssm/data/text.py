"""Byte-level text tasks in their official layouts: IMDb (LRA Text), AAN (LRA Retrieval),
WikiText-103 (language modelling).

Tokenisation is byte level for every text task (``BYTE_VOCAB``: id = byte + 3, 0 = padding), so
no tokenizer file is needed and no vocabulary is built from the data.

- IMDb: the Stanford ``aclImdb/{train,test}/{pos,neg}/*.txt`` tree (label 1 = pos), or a Hugging
  Face ``datasets`` copy (``load_from_disk`` folder with ``text``/``label`` columns) when that
  package is installed. Truncated to ``max_len`` bytes, default 4096 (as in S4; LRA's own
  configuration used 1000). No validation split is defined by the release; ``"val"`` here is
  the last 10 % of a seeded shuffle of train (and ``"train"`` the rest), stated in the docs.
- AAN: ``aan/new_aan_pairs.{train,eval,test}.tsv``, no header, ``label id1 id2 text1 text2``
  (the label may read ``1.0``); each document truncated to ``max_len`` bytes, default 4000.
- WikiText-103: ``wikitext-103-raw/wiki.{train,valid,test}.raw``, read as bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from serpent_ssm.data.errors import DataFormatError, require_file
from serpent_ssm.data.vocab import BYTE_VOCAB

__all__ = ["AanDataset", "ImdbDataset", "read_wikitext103"]


class ImdbDataset(Dataset):
    """IMDb reviews as ``(ids (L,) int64, label)``, label 1 = positive. Splits: train, val, test.

    Args:
        root: a directory holding ``aclImdb/`` (or ``aclImdb`` itself), or a ``datasets``
            ``save_to_disk`` folder of the IMDb dataset.
        split: ``"train"`` (90 % of the official train), ``"val"`` (the other 10 %, seeded
            shuffle, seed 0) or ``"test"``.
        max_len: bytes kept per review (the first ``max_len``).
    """

    vocab = BYTE_VOCAB
    n_classes = 2

    def __init__(
        self, root: str | Path, split: str = "train", max_len: int = 4096, val_fraction: float = 0.1
    ):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected one of train, val, test, got {split!r}")
        root = Path(root)
        texts = self._read_tree(root, split) if self._tree_root(root) else self._read_hf(root, split)
        if split != "test":
            order = list(range(len(texts)))
            random.Random(0).shuffle(order)
            n_val = int(round(val_fraction * len(order)))
            keep = order[:n_val] if split == "val" else order[n_val:]
            texts = [texts[i] for i in sorted(keep)]
        self.samples = [(self.vocab.encode_bytes(t[:max_len]), label) for t, label in texts]

    @staticmethod
    def _tree_root(root: Path) -> Path | None:
        for cand in (root / "aclImdb", root):
            if (cand / "train" / "pos").is_dir():
                return cand
        return None

    def _read_tree(self, root: Path, split: str) -> list[tuple[bytes, int]]:
        base = self._tree_root(root) / ("test" if split == "test" else "train")
        out = []
        for label, name in ((0, "neg"), (1, "pos")):
            folder = base / name
            if not folder.is_dir():
                raise DataFormatError(folder, "missing: expected a folder of *.txt reviews")
            files = sorted(folder.glob("*.txt"))
            if not files:
                raise DataFormatError(folder, "expected *.txt reviews, found none")
            for f in files:
                if not f.is_file():
                    raise DataFormatError(f, "expected a review file, got a directory")
                text = f.read_bytes()
                if not text.strip():
                    raise DataFormatError(f, "expected a review, got an empty file")
                out.append((text, label))
        return out

    def _read_hf(self, root: Path, split: str) -> list[tuple[bytes, int]]:
        try:
            import datasets
        except ImportError:
            raise DataFormatError(
                root,
                "missing: expected aclImdb/{train,test}/{pos,neg}/*.txt (or a Hugging Face datasets "
                "copy, which needs `pip install datasets`)",
            ) from None
        try:
            ds = datasets.load_from_disk(str(root))
        except Exception as exc:
            raise DataFormatError(root, f"neither aclImdb/ nor a datasets folder: {exc}") from None
        part = ds["test" if split == "test" else "train"]
        for i, label in enumerate(part["label"]):
            if label not in (0, 1):
                raise DataFormatError(root, f"expected a label 0 or 1, got {label!r}", f"sample {i}")
        return [(t.encode("utf-8"), int(lab)) for t, lab in zip(part["text"], part["label"], strict=True)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i]


class AanDataset(Dataset):
    """AAN citation pairs as ``((ids1, ids2), label)``; ``split`` in train, val (the release's
    ``eval`` file), test. Each document is truncated to ``max_len`` bytes."""

    vocab = BYTE_VOCAB
    n_classes = 2
    FILES = {"train": "train", "val": "eval", "test": "test"}

    def __init__(self, data_dir: str | Path, split: str = "train", max_len: int = 4000):
        if split not in self.FILES:
            raise ValueError(f"split: expected one of train, val, test, got {split!r}")
        path = require_file(
            Path(data_dir) / "aan" / f"new_aan_pairs.{self.FILES[split]}.tsv",
            "the AAN pairs TSV (label id1 id2 text1 text2)",
        )
        self.samples = []
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                fields = line.split(b"\t")
                if len(fields) != 5:
                    raise DataFormatError(
                        path, f"expected 5 tab-separated fields, got {len(fields)}", f"line {lineno}"
                    )
                try:
                    value = float(fields[0])
                except ValueError:
                    value = -1.0
                if value not in (0.0, 1.0):
                    raise DataFormatError(
                        path,
                        f"expected a label 0 or 1, got {fields[0].decode(errors='replace')!r}",
                        f"line {lineno}",
                    )
                a, b = (self.vocab.encode_bytes(t[:max_len]) for t in fields[3:5])
                self.samples.append(((a, b), int(value)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i]


def read_wikitext103(data_dir: str | Path, split: str = "train") -> torch.Tensor:
    """``<data_dir>/wikitext-103-raw/wiki.<split>.raw`` as one ``(T,)`` uint8 tensor of raw bytes
    (540 MB for train: kept as bytes; ``data.lm.LMWindows`` maps windows to ids).

    ``split``: train, valid (or val), test.
    """
    name = {"val": "valid"}.get(split, split)
    if name not in ("train", "valid", "test"):
        raise ValueError(f"split: expected one of train, valid, test, got {split!r}")
    path = require_file(Path(data_dir) / "wikitext-103-raw" / f"wiki.{name}.raw", "WikiText-103 raw text")
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
