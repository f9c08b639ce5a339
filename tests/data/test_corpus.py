"""The byte-level English corpus: a split by whole documents, fixed and stable; UTF-8 checks;
missing data; LMWindows; the real corpus when it is in the cache."""

from __future__ import annotations

import json
import re

import pytest
import torch

from serpent_ssm.data import corpus as C
from serpent_ssm.data import fetch as F
from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.data.vocab import BYTE_VOCAB

NOVELS = [n for split in C.SPLITS for n in C.AUSTEN_SPLIT[split]]


def fake_info(names: list[str]) -> str:
    """A GNU info file: one manual, one chapter, a page per name (a document each), plus a
    changelog chapter whose pages all go to train."""
    out = ["Preamble.\n\n", "\x1f\nFile: p.info,  Node: Top,  Up: (dir)\n\nTop\n\n"]
    out.append("\x1f\nFile: p.info,  Node: Manual,  Up: Top\n\nmanual intro\n\n")
    out.append("\x1f\nFile: p.info,  Node: Chapter,  Up: Manual\n\nchapter intro\n\n")
    for i, name in enumerate(names):
        out.append(f"\x1f\nFile: p.info,  Node: {name},  Up: Chapter\n\nDOC<{name}> text {i} é\n\n")
        out.append(f"\x1f\nFile: p.info,  Node: {name} part,  Up: {name}\n\nmore of DOC<{name}>\n\n")
    out.append("\x1f\nFile: p.info,  Node: Changelog,  Up: Manual\n\nchanges\n\n")
    for v in range(20):
        out.append(f"\x1f\nFile: p.info,  Node: Release {v},  Up: Changelog\n\nDOC<Release {v}>\n\n")
    return "".join(out)


DOC_NAMES = [f"page {i}" for i in range(120)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A tiny cache in the layout ``fetch`` writes, built by ``fetch`` from manual files."""
    monkeypatch.setattr(F.shutil, "which", lambda *a, **k: None)  # never the network
    manual = tmp_path / "austen" / "manual"
    manual.mkdir(parents=True)
    for n in NOVELS:
        (manual / f"{n}.txt").write_text(f"NOVEL<{n}>\nIt is a truth universally acknowledged ’\n", "utf-8")
    manual = tmp_path / "python-docs" / "manual"
    manual.mkdir(parents=True)
    (manual / "python3.11.info").write_text(fake_info(DOC_NAMES), encoding="utf-8")
    assert F.fetch("austen", tmp_path).name == "from-manual"
    assert F.fetch("python-docs", tmp_path).name == "from-manual"
    return tmp_path


def test_split_is_by_document_and_fixed(cache):
    corpus = C.load_english_corpus(cache)
    assert set(corpus) == {"train", "valid", "test"}
    assert all(t.dtype == torch.uint8 and t.ndim == 1 for t in corpus.values())
    text = {s: bytes(t.tolist()).decode("utf-8") for s, t in corpus.items()}
    where = {}
    for split, s in text.items():
        for marker in set(re.findall(r"(?:DOC|NOVEL)<([^>]+)>", s)):
            assert marker not in where, f"{marker} in {where.get(marker)} and {split}"
            where[marker] = split
    assert {n: where[n] for n in NOVELS} == {n: s for s in C.SPLITS for n in C.AUSTEN_SPLIT[s]}
    assert where["northangerabbey"] == "valid" and where["persuasion"] == "test"
    assert {where[n] for n in DOC_NAMES} == {"train", "valid", "test"}
    assert all(where[n] == C.python_docs_split(n) for n in DOC_NAMES)
    assert all(where[f"Release {v}"] == "train" for v in range(20))  # the changelog stays in train
    counts = {s: sum(where[n] == s for n in DOC_NAMES) for s in C.SPLITS}
    assert counts["train"] > 90 and counts["valid"] + counts["test"] > 5


def test_split_rule_is_stable():
    # the rule is pinned: a change here would silently reshuffle the benchmark
    assert C.python_docs_split("string — Common string operations") == "train"
    assert C.python_docs_split("PEP 409 Suppressing exception context") == "valid"
    assert C.python_docs_split("PEP 3333 Python Web Server Gateway Interface v1 0 1") == "test"
    assert [C.python_docs_split(f"page {i}") for i in range(12)] == [
        C.python_docs_split(f"page {i}", ("Manual", "Chapter")) for i in range(12)
    ]
    got = {s: [n for n in DOC_NAMES if C.python_docs_split(n) == s] for s in ("valid", "test")}
    assert got == {"valid": PINNED_VALID, "test": PINNED_TEST}
    assert C.python_docs_split("Release 1", ["Manual", "Changelog"]) == "train"


PINNED_VALID = ["page 0", "page 12", "page 21", "page 22", "page 103"]
PINNED_TEST = ["page 7", "page 44", "page 68", "page 98", "page 112", "page 118"]


def test_order_of_documents_does_not_change_the_split(cache, tmp_path_factory, monkeypatch):
    other = tmp_path_factory.mktemp("reversed")
    (other / "python-docs" / "manual").mkdir(parents=True)
    (other / "python-docs" / "manual" / "python3.11.info").write_text(fake_info(DOC_NAMES[::-1]), "utf-8")
    F.fetch("python-docs", other)
    a = C.english_documents(cache, ("python-docs",))
    b = C.english_documents(other, ("python-docs",))
    assert {s: sorted(d.name for d in a[s]) for s in C.SPLITS} == {
        s: sorted(d.name for d in b[s]) for s in C.SPLITS
    }


def test_layout_and_separator(cache):
    docs = C.english_documents(cache)
    train = C.load_english_corpus(cache)["train"]
    expected = C.DOC_SEPARATOR.join(d.path.read_bytes() for d in docs["train"])
    assert bytes(train.tolist()) == expected and C.DOC_SEPARATOR == b"\n\n"
    assert [d.source for d in docs["train"]][:4] == ["austen"] * 4  # sources in the order asked for
    only = C.load_english_corpus(cache, sources=("austen",))
    assert bytes(only["test"].tolist()) == (cache / "austen/from-manual/persuasion.txt").read_bytes()
    rev = C.english_documents(cache, ("python-docs", "austen"))
    assert rev["train"][0].source == "python-docs"
    stats = C.corpus_stats(cache)
    assert {s: stats[s]["total"] for s in C.SPLITS} == {
        s: len(t) for s, t in C.load_english_corpus(cache).items()
    }
    assert stats["valid"]["austen"]["documents"] == 1
    with pytest.raises(ValueError, match="sources: expected distinct names among austen, python-docs"):
        C.load_english_corpus(cache, sources=("wikitext",))


def test_bad_utf8_names_file_and_byte(cache):
    path = cache / "austen" / "from-manual" / "persuasion.txt"
    path.write_bytes(b"Persuasion\nabc\xffdef\n")
    with pytest.raises(DataFormatError) as err:
        C.load_english_corpus(cache)
    assert str(err.value) == f"{path}:byte 14: expected UTF-8 text, got the invalid byte 0xff"
    assert err.value.path == path and err.value.where == "byte 14"


def test_missing_data(tmp_path, monkeypatch):
    monkeypatch.delenv("SERPENT_SSM_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(DataFormatError) as err:
        C.load_english_corpus(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}/austen: missing: no fetched copy of 'austen' in {tmp_path}; run "
        f"`SERPENT_SSM_DATA_DIR={tmp_path} serpent data fetch austen` "
        "(or serpent_ssm.data.fetch.fetch('austen', cache_dir)) first"
    )
    with pytest.raises(DataFormatError, match="serpent data fetch python-docs"):
        C.load_english_corpus(tmp_path, sources=("python-docs",))


def test_missing_novel_file(cache):
    (cache / "austen" / "from-manual" / "emma.txt").unlink()
    # the folder is no longer complete (its manifest lists emma.txt): fetch it again
    with pytest.raises(DataFormatError, match="serpent data fetch austen"):
        C.load_english_corpus(cache)


def test_bad_documents_index(cache):
    index = cache / "python-docs" / "from-manual" / "documents.json"
    index.write_text(json.dumps([{"file": "docs/x.txt"}]))
    with pytest.raises(DataFormatError, match="documents.json: expected a JSON list of {file, node, ...}"):
        C.load_english_corpus(cache)


def test_lm_windows():
    data = torch.arange(26, dtype=torch.uint8)
    ds = C.LMWindows(data, seq_len=4)
    assert len(ds) == 6 and ds.n_dropped == 1  # byte 25 is never a target
    x, y = ds[0]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4,)
    assert x.tolist() == [3, 4, 5, 6] and y.tolist() == [4, 5, 6, 7]  # id = byte + 3, shifted by one
    x, y = ds[5]
    assert x.tolist() == [23, 24, 25, 26] and y.tolist() == [24, 25, 26, 27]
    assert torch.equal(ds[-1][0], x)
    assert BYTE_VOCAB.decode_bytes(x) == bytes(range(20, 24))
    windows = torch.stack([ds[i][0] for i in range(len(ds))]).flatten()
    assert torch.equal(windows, data[:24].to(torch.int64) + 3)  # non-overlapping, in order
    assert len(list(ds)) == 6
    with pytest.raises(IndexError):
        ds[6]
    assert len(C.LMWindows(torch.arange(5, dtype=torch.uint8), 4)) == 1
    with pytest.raises(ValueError, match=r"data: expected at least seq_len \+ 1 = 5 bytes, got 4"):
        C.LMWindows(torch.arange(4, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="expected a 1-D torch.uint8 tensor of bytes, got torch.int64"):
        C.LMWindows(torch.arange(10), 4)
    with pytest.raises(ValueError, match="seq_len: expected an int >= 1, got 0"):
        C.LMWindows(data, 0)


def test_lm_windows_in_a_dataloader(cache):
    train = C.load_english_corpus(cache)["train"]
    loader = torch.utils.data.DataLoader(C.LMWindows(train, 16), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.min()) >= 3 and int(x.max()) < BYTE_VOCAB.size


# ------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    F.fetched_path("austen") is None or F.fetched_path("python-docs") is None,
    reason=f"austen and python-docs not fetched into {F.default_cache_dir()} "
    "(run `serpent data fetch austen` and `serpent data fetch python-docs`)",
)
def test_real_corpus_sizes():
    stats = C.corpus_stats()
    # janeaustenr 1.0.0: the novels are fixed texts
    assert stats["valid"]["austen"] == {"documents": 1, "bytes": 433_411}
    assert stats["test"]["austen"] == {"documents": 1, "bytes": 466_854}
    assert (
        stats["train"]["austen"]["documents"] == 4
        and 3_000_000 < stats["train"]["austen"]["bytes"] < 3_300_000
    )
    py = {s: stats[s]["python-docs"]["bytes"] for s in C.SPLITS}
    total = sum(py.values())
    assert 12_000_000 < total < 17_000_000
    assert (
        py["train"] / total > 0.85 and 0.02 < py["valid"] / total < 0.08 and 0.02 < py["test"] / total < 0.08
    )
    corpus = C.load_english_corpus()
    assert {s: len(t) for s, t in corpus.items()} == {s: stats[s]["total"] for s in C.SPLITS}
    ds = C.LMWindows(corpus["valid"], 1024)
    assert len(ds) == (len(corpus["valid"]) - 1) // 1024
