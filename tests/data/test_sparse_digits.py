"""Sparse digits: generator -> TSV -> loader, labels, the informative mask, malformed lines."""

from __future__ import annotations

import json
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.data.sparse_digits import (
    FOLDER,
    SparseDigitsDataset,
    generate_sparse_digits,
    informative_mask,
)
from serpent_ssm.data.vocab import BYTE_VOCAB, LISTOPS_VOCAB

ARGS = {"n_train": 50, "n_val": 7, "n_test": 5, "length": 40, "n_digits": 4, "seed": 3}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse")
    return out, generate_sparse_digits(out, **ARGS)


def test_files_format_and_labels(generated):
    out, stats = generated
    assert stats == json.loads((out / FOLDER / "stats.json").read_text())
    assert {k: stats[k] for k in ("length", "n_digits", "seed")} == {"length": 40, "n_digits": 4, "seed": 3}
    for split in ("train", "val", "test"):
        lines = (out / FOLDER / f"{split}.tsv").read_text().splitlines()
        assert len(lines) == ARGS[f"n_{split}"] == stats["splits"][split]["n"]
        labels = []
        for line in lines:
            label, seq = line.split("\t")
            assert len(seq) == 40 and set(seq) <= set(".0123456789")
            digits = [c for c in seq if c != "."]
            assert len(digits) == 4 and label == digits[-1]
            labels.append(label)
        assert stats["splits"][split]["labels"] == {k: labels.count(k) for k in sorted(set(labels))}
        assert stats["splits"][split]["length_min"] == stats["splits"][split]["length_max"] == 40


def test_loader_round_trip(generated):
    out, _ = generated
    ds = SparseDigitsDataset(out, "val")
    assert len(ds) == 7 and ds.vocab is BYTE_VOCAB and ds.n_classes == 10
    for (tokens, label), line in zip(ds, (out / FOLDER / "val.tsv").read_text().splitlines(), strict=True):
        assert tokens.dtype == torch.int64 and tokens.shape == (40,)
        assert BYTE_VOCAB.decode_bytes(tokens).decode() == line.split("\t")[1]
        assert label == int(line[0])
        mask = informative_mask(tokens)
        assert int(mask.sum()) == 4 and int(tokens[mask.nonzero()[-1]] - 3 - ord("0")) == label


def test_generator_is_deterministic_and_splits_are_independent(generated, tmp_path):
    out, _ = generated
    generate_sparse_digits(tmp_path / "a", **ARGS)
    generate_sparse_digits(tmp_path / "b", **{**ARGS, "n_train": 3})
    generate_sparse_digits(tmp_path / "c", **{**ARGS, "seed": 4})
    for split in ("train", "val", "test"):
        name = f"{FOLDER}/{split}.tsv"
        assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes()
    assert (tmp_path / "b" / FOLDER / "val.tsv").read_bytes() == (out / FOLDER / "val.tsv").read_bytes()
    first = (out / FOLDER / "train.tsv").read_text().splitlines()[:3]
    assert (tmp_path / "b" / FOLDER / "train.tsv").read_text().splitlines() == first
    assert (tmp_path / "c" / FOLDER / "train.tsv").read_bytes() != (out / FOLDER / "train.tsv").read_bytes()
    assert not [
        p.name for p in (tmp_path / "a" / FOLDER).iterdir() if p.name.startswith(".")
    ]  # no temporaries


def test_every_position_can_hold_a_digit(tmp_path):
    generate_sparse_digits(tmp_path, n_train=3, n_val=0, n_test=0, length=5, n_digits=5)
    ds = SparseDigitsDataset(tmp_path, "train")
    assert all(bool(informative_mask(tokens).all()) for tokens, _ in ds)
    assert len(SparseDigitsDataset(tmp_path, "val")) == 0


@given(st.lists(st.sampled_from(".0123456789"), min_size=1, max_size=30), st.integers(0, 3))
def test_informative_mask_marks_the_digits_of_a_padded_batch(chars, pad):
    seq = "".join(chars)
    tokens = torch.cat([BYTE_VOCAB.encode_bytes(seq.encode()), torch.zeros(pad, dtype=torch.int64)])
    batch = torch.stack([tokens, tokens.flip(0)])
    mask = informative_mask(batch)
    want = [c.isdigit() for c in seq] + [False] * pad
    assert mask.dtype == torch.bool and mask[0].tolist() == want and mask[1].tolist() == want[::-1]
    ids = LISTOPS_VOCAB.encode_tokens(["[MAX", "3", "7", "]"])
    assert informative_mask(ids, LISTOPS_VOCAB).tolist() == [False, True, True, False]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("3\t..3.\n..1.\n", "line 2: expected 2 tab-separated fields, got 1"),
        ("3\t..3.\t1\n", "line 1: expected 2 tab-separated fields, got 3"),
        ("12\t..1.2\n", "line 1: expected a label 0-9, got '12'"),
        ("x\t..3.\n", "line 1: expected a label 0-9, got 'x'"),
        ("3\t..3.\n3\t.a3.\n", "line 2: expected a sequence of '.' and digits 0-9, got 'a' at position 1"),
        ("3\t.. 3\n", "line 1: expected a sequence of '.' and digits 0-9, got ' ' at position 2"),
        ("3\t....\n", "line 1: expected at least one digit in the sequence, got none in 4 characters"),
        ("3\t\n", "line 1: expected at least one digit in the sequence, got none in 0 characters"),
        ("3\t.3.1.\n", "line 1: expected the label 1 (the last digit), got '3'"),
        (
            "3\t..3.\n\n4\t.\xe94\n",
            "line 3: expected a sequence of '.' and digits 0-9, got 'é' at position 1",
        ),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, message):
    (tmp_path / FOLDER).mkdir()
    path = tmp_path / FOLDER / "train.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=f"^{re.escape(f'{path}:{message}')}$"):
        SparseDigitsDataset(tmp_path, "train")


def test_not_utf8_and_missing_files(tmp_path):
    (tmp_path / FOLDER).mkdir()
    path = tmp_path / FOLDER / "test.tsv"
    path.write_bytes(b"3\t..3.\n3\t.\xff3\n")
    with pytest.raises(DataFormatError, match=f"^{re.escape(f'{path}:line 2: expected UTF-8 text')}"):
        SparseDigitsDataset(tmp_path, "test")
    missing = tmp_path / FOLDER / "val.tsv"
    want = f"{missing}: missing: expected the sparse-digits TSV (label\\tsequence)"
    with pytest.raises(DataFormatError, match=f"^{re.escape(want)}$"):
        SparseDigitsDataset(tmp_path, "val")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_val": -1}, "n_val: expected a non-negative integer, got -1"),
        ({"n_train": 2.0}, "n_train: expected a non-negative integer, got 2.0"),
        ({"length": 0}, "length: expected an integer with length >= 1, got 0"),
        ({"length": 5, "n_digits": 6}, "n_digits: expected an integer with 1 <= n_digits <= 5, got 6"),
        ({"n_digits": 0}, "n_digits: expected an integer with 1 <= n_digits <= 1000, got 0"),
        ({"seed": -1}, "seed: expected an integer with seed >= 0, got -1"),
        ({"seed": True}, "seed: expected an integer with seed >= 0, got True"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        generate_sparse_digits(tmp_path, **kwargs)
    assert not (tmp_path / FOLDER).exists()


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match=r"^split: expected one of train, val, test, got 'dev'$"):
        SparseDigitsDataset(tmp_path, "dev")


def test_cli_generate(tmp_path, capsys):
    from serpent_ssm.cli import main

    args = ["data", "generate", "sparse-digits", "--out", str(tmp_path), "--length", "30", "--n-digits", "3"]
    assert main([*args, "--n-train", "4", "--n-val", "2", "--n-test", "2", "--seed", "1"]) == 0
    assert f"wrote {tmp_path / FOLDER}" in capsys.readouterr().out
    stats = json.loads((tmp_path / FOLDER / "stats.json").read_text())
    assert (stats["length"], stats["n_digits"], stats["seed"], stats["splits"]["val"]["n"]) == (30, 3, 1, 2)
