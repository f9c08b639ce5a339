"""ListOps (Nangia & Bowman 2018, as in LRA): a generator and a loader for the official TSV.

Layout (the state-spaces S4 code base's): ``<data_dir>/listops/basic_{train,val,test}.tsv``,
header ``Source\\tTarget``, one sample per line: whitespace-separated tokens, a tab, the label.
Tokens: ``[MIN [MAX [MED [SM`` (operators, each closed by ``]``), digits ``0``-``9``, and in the
official release also ``(`` and ``)``, which carry no meaning and are kept as tokens.

Generator (written from the task's description; docs/data.md, "ListOps (generated)"): a random
tree from depth 1; below the maximum depth a node is an operator with probability ``p_op``, else
a digit; an operator takes 2..``max_args`` arguments uniformly; at the maximum depth every node
is a digit. The label is the tree's value (MIN, MAX, MED = integer median (floor of the mean of
the two middle values for an even count), SM = sum mod 10). Trees whose token count (operators,
digits and ``]``) lies in ``[min_len, max_len]`` are kept, de-duplicated, shuffled and split.
Our files have no parentheses.
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
    split_bounds,
    split_counts,
    split_stats,
    tab_fields,
    write_lines,
    write_stats,
)
from serpent_ssm.data.vocab import LISTOPS_VOCAB

__all__ = ["OPERATORS", "SPLITS", "ListOpsDataset", "generate_listops", "listops_value"]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
HEADER = "Source\tTarget"


def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        s = sorted(args)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    return sum(args) % 10


def _random_tree(rng: random.Random, depth: int, max_depth: int, p_op: float, max_args: int):
    """A digit (int) or ``(op, [children])``."""
    if depth < max_depth and rng.random() < p_op:
        n_args = rng.randint(2, max_args)
        return (
            rng.choice(OPERATORS),
            [_random_tree(rng, depth + 1, max_depth, p_op, max_args) for _ in range(n_args)],
        )
    return rng.randint(0, 9)


def _tokens_and_value(tree) -> tuple[list[str], int]:
    if isinstance(tree, int):
        return [str(tree)], tree
    op, children = tree
    tokens, values = [op], []
    for child in children:
        t, v = _tokens_and_value(child)
        tokens += t
        values.append(v)
    tokens.append("]")
    return tokens, _apply(op, values)


def listops_value(tokens: list[str]) -> int:
    """The value of a ListOps expression (parentheses ignored): the label the loader expects."""
    stack: list[list] = []
    result = None
    for tok in tokens:
        if tok in ("(", ")"):
            continue
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            value = _apply(op, args)
            if stack:
                stack[-1].append(value)
            else:
                result = value
        else:
            value = int(tok)
            if stack:
                stack[-1].append(value)
            else:
                result = value
    if stack or result is None:
        raise ValueError(f"tokens: expected a complete expression, got {len(stack)} unclosed operators")
    return result


def generate_listops(
    out: str | Path,
    n_train: int = 20_000,
    n_val: int = 1_000,
    n_test: int = 1_000,
    min_len: int = 100,
    max_len: int = 500,
    seed: int = 0,
    max_depth: int = 10,
    p_op: float = 0.25,
    max_args: int = 10,
    max_attempts: int | None = None,
) -> dict:
    """Write ``<out>/listops/basic_{train,val,test}.tsv`` and ``stats.json``; return the stats.

    Deterministic given ``seed``. Raises ValueError when ``max_attempts`` trees (default 2000 per
    wanted sample) do not give enough distinct samples in the length window.
    """
    counts = split_counts(n_train, n_val, n_test)
    if not (isinstance(min_len, int) and isinstance(max_len, int) and 1 <= min_len <= max_len):
        raise ValueError(f"min_len, max_len: expected 1 <= min_len <= max_len, got {min_len!r}, {max_len!r}")
    wanted = n_train + n_val + n_test
    max_attempts = max_attempts or 2000 * max(wanted, 1)
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    attempts = 0
    while len(seen) < wanted:
        if attempts >= max_attempts:
            raise ValueError(
                f"min_len, max_len: {attempts} random trees gave only {len(seen)} distinct samples "
                f"of {min_len}-{max_len} tokens, {wanted} wanted; widen the window or raise max_attempts"
            )
        attempts += 1
        tree = _random_tree(rng, 1, max_depth, p_op, max_args)
        tokens, value = _tokens_and_value(tree)
        if min_len <= len(tokens) <= max_len:
            seen.setdefault(" ".join(tokens), value)
    samples = list(seen.items())
    rng.shuffle(samples)
    folder = Path(out) / "listops"
    stats = {"seed": seed, "min_len": min_len, "max_len": max_len, "trees_drawn": attempts, "splits": {}}
    for split, (lo, hi) in split_bounds(counts).items():
        part = samples[lo:hi]
        write_lines(folder / f"basic_{split}.tsv", (f"{source}\t{label}" for source, label in part), HEADER)
        lengths = [s.count(" ") + 1 for s, _ in part]
        stats["splits"][split] = split_stats([label for _, label in part], lengths)
    write_stats(folder, stats)
    return stats


class ListOpsDataset(Dataset):
    """``<data_dir>/listops/basic_<split>.tsv`` as ``(ids (L,) int64, label)`` samples.

    Ids follow ``LISTOPS_VOCAB`` (0 = padding). ``max_len``: longer sequences are cut to their
    first ``max_len`` tokens and counted in ``n_truncated`` (the LRA convention); default: no cut.
    Every line is checked: two tab-separated fields, known tokens, a label 0-9.
    """

    vocab = LISTOPS_VOCAB
    n_classes = 10

    def __init__(self, data_dir: str | Path, split: str = "train", max_len: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        path = require_file(
            Path(data_dir) / "listops" / f"basic_{split}.tsv", "the ListOps TSV (Source\\tTarget)"
        )
        self.path = path
        self.samples: list[tuple[torch.Tensor, int]] = []
        self.n_truncated = 0
        lines = read_lines(path)
        _, header = next(lines, (1, ""))
        if header != HEADER:
            raise DataFormatError(path, f"expected the header {HEADER!r}, got {header!r}", "line 1")
        for lineno, line in lines:
            if not line.strip():
                continue
            source, target = tab_fields(line, 2, path, lineno)
            label = class_label(target, path, lineno)
            try:
                ids = self.vocab.encode_tokens(source.split())
            except KeyError as exc:
                raise DataFormatError(path, str(exc.args[0]), f"line {lineno}") from None
            if len(ids) == 0:
                raise DataFormatError(path, "expected at least one token, got none", f"line {lineno}")
            if max_len is not None and len(ids) > max_len:
                ids = ids[:max_len]
                self.n_truncated += 1
            self.samples.append((ids, label))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.samples[i]
