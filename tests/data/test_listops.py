"""ListOps: generator -> official TSV -> loader, labels against an independent evaluator."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.data.listops import ListOpsDataset, generate_listops, listops_value
from serpent_ssm.data.vocab import LISTOPS_VOCAB


def evaluate_recursive(tokens: list[str]) -> int:
    """A second, recursive-descent evaluator (the library's is a stack machine)."""
    pos = 0

    def expr() -> int:
        nonlocal pos
        while tokens[pos] in ("(", ")"):
            pos += 1
        tok = tokens[pos]
        pos += 1
        if tok.isdigit():
            return int(tok)
        args = []
        while True:
            while tokens[pos] == ")":
                pos += 1
            if tokens[pos] == "]":
                pos += 1
                break
            args.append(expr())
        if tok == "[MIN":
            return min(args)
        if tok == "[MAX":
            return max(args)
        if tok == "[SM":
            return sum(args) % 10
        s = sorted(args)
        return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) // 2

    value = expr()
    assert all(t == ")" for t in tokens[pos:])
    return value


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("listops")
    stats = generate_listops(out, n_train=300, n_val=40, n_test=40, min_len=20, max_len=120, seed=3)
    return out, stats


def test_round_trip_and_labels(generated):
    out, stats = generated
    seen = set()
    for split, n in (("train", 300), ("val", 40), ("test", 40)):
        ds = ListOpsDataset(out, split)
        assert len(ds) == n == stats["splits"][split]["n"]
        for ids, label in ds:
            tokens = [LISTOPS_VOCAB.tokens[i] for i in ids.tolist()]
            assert 20 <= len(tokens) <= 120
            assert label == evaluate_recursive(tokens) == listops_value(tokens)
            source = " ".join(tokens)
            assert source not in seen  # de-duplicated across splits
            seen.add(source)
    assert sum(stats["splits"]["train"]["labels"].values()) == 300


def test_generator_is_deterministic(generated, tmp_path):
    out, _ = generated
    generate_listops(tmp_path, n_train=300, n_val=40, n_test=40, min_len=20, max_len=120, seed=3)
    for split in ("train", "val", "test"):
        name = f"listops/basic_{split}.tsv"
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    generate_listops(tmp_path, n_train=300, n_val=40, n_test=40, min_len=20, max_len=120, seed=4)
    assert (tmp_path / "listops/basic_train.tsv").read_bytes() != (
        out / "listops/basic_train.tsv"
    ).read_bytes()


@given(st.lists(st.integers(0, 9), min_size=2, max_size=10), st.sampled_from(["[MIN", "[MAX", "[MED", "[SM"]))
def test_operators(args, op):
    tokens = [op, *map(str, args), "]"]
    want = {
        "[MIN": min(args),
        "[MAX": max(args),
        "[SM": sum(args) % 10,
        "[MED": int(torch.tensor(args, dtype=torch.float64).median().item())
        if len(args) % 2
        else (sorted(args)[len(args) // 2 - 1] + sorted(args)[len(args) // 2]) // 2,
    }[op]
    assert listops_value(tokens) == want == evaluate_recursive(tokens)


def test_official_format_with_parentheses(tmp_path):
    (tmp_path / "listops").mkdir()
    (tmp_path / "listops/basic_test.tsv").write_text(
        "Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n( ( [SM 4 ) 8 ] )\t2\n"
    )
    ds = ListOpsDataset(tmp_path, "test")
    assert [label for _, label in ds] == [9, 2]
    assert ds[0][0].tolist() == LISTOPS_VOCAB.encode_tokens("( ( ( [MAX 2 ) 9 ) ] )".split()).tolist()
    assert ListOpsDataset(tmp_path, "test", max_len=4).n_truncated == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Src\tTarget\n", "line 1: expected the header 'Source\\tTarget', got 'Src\\tTarget'"),
        ("Source\tTarget\n[MAX 2 9 ]\t9\t1\n", "line 2: expected 2 tab-separated fields, got 3"),
        ("Source\tTarget\n[MAX 2 9 ]\t12\n", "line 2: expected a label 0-9, got '12'"),
        ("Source\tTarget\n[MAX 2 9 ]\tnine\n", "line 2: expected a label 0-9, got 'nine'"),
        (
            "Source\tTarget\n[MAX 2 9 ]\t9\n[MAXX 1 ]\t1\n",
            "line 3: unknown token '[MAXX' (vocabulary 'listops')",
        ),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, message):
    (tmp_path / "listops").mkdir()
    path = tmp_path / "listops/basic_train.tsv"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=f"^{re.escape(f'{path}:{message}')}$"):
        ListOpsDataset(tmp_path, "train")


def test_missing_file(tmp_path):
    path = tmp_path / "listops/basic_val.tsv"
    with pytest.raises(DataFormatError, match=f"^{re.escape(f'{path}: missing: expected the ListOps TSV')}"):
        ListOpsDataset(tmp_path, "val")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"^split: expected one of train, val, test, got 'dev'$"):
        ListOpsDataset(tmp_path, "dev")
    with pytest.raises(ValueError, match=r"^min_len, max_len: expected 1 <= min_len <= max_len, got 50, 10$"):
        generate_listops(tmp_path, min_len=50, max_len=10)
    with pytest.raises(ValueError, match=r"^n_val: expected a non-negative integer, got -1$"):
        generate_listops(tmp_path, n_val=-1)
    with pytest.raises(ValueError, match=r"^min_len, max_len: 50 random trees gave only"):
        generate_listops(tmp_path, n_train=10, n_val=0, n_test=0, min_len=400, max_len=401, max_attempts=50)
