"""Sparse digits: a synthetic classification task whose informative positions are known.

A sequence of ``length`` characters is the filler ``.`` everywhere except at ``n_digits``
distinct random positions, which hold random ASCII digits ``0``-``9``; the label is the last
digit of the sequence (the digit at the largest of those positions). Only the digit positions
carry information, so the task measures where a model looks: ``informative_mask`` gives those
positions, and ``serpent analyze informative`` counts how many of SeRpEnt's grid points land on
them.

Layout: ``<data_dir>/sparse-digits/{train,val,test}.tsv``, no header, one sample per line:
``label<TAB>sequence`` (``7\\t..3....1...7..``), and ``stats.json`` with the generator's
arguments and per split the sample count, label counts and lengths. Tokens are bytes
(``BYTE_VOCAB``: id = byte + 3), as for the text tasks.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from serpent_ssm.data.errors import DataFormatError, require_file
from serpent_ssm.data.tsv import (
    SPLITS,
    class_label,
    read_lines,
    split_counts,
    split_stats,
    tab_fields,
    write_lines,
    write_stats,
)
from serpent_ssm.data.vocab import BYTE_VOCAB, Vocab

__all__ = [
    "DIGITS",
    "FILLER",
    "FOLDER",
    "SparseDigitsDataset",
    "generate_sparse_digits",
    "informative_mask",
]

FOLDER = "sparse-digits"
FILLER = "."
DIGITS = "0123456789"


def _check_int(name: str, value, least: int, most: int | None = None) -> None:
    too_big = most is not None and isinstance(value, int) and value > most
    if isinstance(value, bool) or not isinstance(value, int) or value < least or too_big:
        bound = f"{least} <= {name} <= {most}" if most is not None else f"{name} >= {least}"
        raise ValueError(f"{name}: expected an integer with {bound}, got {value!r}")


def _draw(rng: random.Random, length: int, n_digits: int) -> tuple[str, int]:
    """One sample: ``(sequence, label)``."""
    chars = [FILLER] * length
    positions = sorted(rng.sample(range(length), n_digits))
    for p in positions:
        chars[p] = DIGITS[rng.randrange(10)]
    return "".join(chars), int(chars[positions[-1]])


def generate_sparse_digits(
    out_dir: str | Path,
    n_train: int = 20_000,
    n_val: int = 1_000,
    n_test: int = 1_000,
    length: int = 1000,
    n_digits: int = 10,
    seed: int = 0,
) -> dict:
    """Write ``<out_dir>/sparse-digits/{train,val,test}.tsv`` and ``stats.json``; return the stats.

    Args:
        out_dir: the data directory (``SparseDigitsDataset(out_dir, split)`` reads it).
        n_train, n_val, n_test: samples per split.
        length: characters per sequence. n_digits: digits per sequence, ``1 <= n_digits <= length``.
        seed: the files are a function of the arguments. Each split is drawn from its own
            ``random.Random(f"{seed}:{split}")``, so val and test do not change with ``n_train``.
            Splits are not de-duplicated (with the defaults a repeat is vanishingly unlikely).

    Every file is written atomically (``serpent_ssm.utils.io``). Returns ``{"length",
    "n_digits", "seed", "splits": {split: {"n", "labels", "length_min", "length_mean",
    "length_max"}}}``, also written as ``stats.json``.
    """
    counts = split_counts(n_train, n_val, n_test)
    _check_int("length", length, 1)
    _check_int("n_digits", n_digits, 1, length)
    _check_int("seed", seed, 0)
    folder = Path(out_dir) / FOLDER
    stats: dict = {"length": length, "n_digits": n_digits, "seed": seed, "splits": {}}
    for split, n in counts.items():
        rng = random.Random(f"{seed}:{split}")
        samples = [_draw(rng, length, n_digits) for _ in range(n)]
        write_lines(folder / f"{split}.tsv", (f"{label}\t{seq}" for seq, label in samples))
        stats["splits"][split] = split_stats([label for _, label in samples], [length] * n)
    write_stats(folder, stats)
    return stats


def _parse(line: str, path: Path, lineno: int) -> tuple[str, int]:
    """``(sequence, label)`` of one line, every field checked."""
    target, seq = tab_fields(line, 2, path, lineno)
    label = class_label(target, path, lineno)
    where = f"line {lineno}"
    bad = next((i for i, c in enumerate(seq) if c != FILLER and c not in DIGITS), None)
    if bad is not None:
        problem = f"expected a sequence of '{FILLER}' and digits 0-9, got {seq[bad]!r} at position {bad}"
        raise DataFormatError(path, problem, where)
    last = seq.rstrip(FILLER)[-1:]
    if not last:
        problem = f"expected at least one digit in the sequence, got none in {len(seq)} characters"
        raise DataFormatError(path, problem, where)
    if int(last) != label:
        raise DataFormatError(path, f"expected the label {last} (the last digit), got {target!r}", where)
    return seq, label


class SparseDigitsDataset(Dataset):
    """``<data_dir>/sparse-digits/<split>.tsv`` as ``(tokens (L,) int64, label)`` samples.

    Tokens follow ``BYTE_VOCAB`` (the ASCII bytes + 3; 0 = padding). Every line is checked: two
    tab-separated fields, a label 0-9, a sequence of ``.`` and digits holding at least one
    digit, and the label equal to its last digit; a ``DataFormatError`` names the file and line.
    Blank lines are skipped.
    """

    vocab = BYTE_VOCAB
    n_classes = 10

    def __init__(self, data_dir: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        path = require_file(
            Path(data_dir) / FOLDER / f"{split}.tsv", "the sparse-digits TSV (label\\tsequence)"
        )
        self.path = path
        self.samples: list[tuple[torch.Tensor, int]] = []
        for lineno, line in read_lines(path):
            if line.strip():
                seq, label = _parse(line, path, lineno)
                self.samples.append((self.vocab.encode_bytes(seq.encode("ascii")), label))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.samples[i]


def informative_mask(tokens: torch.Tensor, vocab: Vocab = BYTE_VOCAB) -> torch.Tensor:
    """The informative positions of sparse-digit sequences: ``tokens (..., L)`` int ids ->
    ``(..., L)`` bool, True at a digit (filler and padding: False). ``vocab``: the ids' vocabulary
    (bytes, or a token list holding the digits)."""
    if vocab.kind == "bytes":
        ids = vocab.encode_bytes(DIGITS.encode("ascii"))
    else:
        ids = vocab.encode_tokens(list(DIGITS))
    return torch.isin(tokens, ids.to(tokens.device))
