"""Loaders of the official layouts on tiny fixtures written by the tests; collate and vocabularies."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from serpent_ssm.data.collate import pad_collate
from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.data.images import Cifar10Dataset, FashionMnistDataset, read_idx
from serpent_ssm.data.text import AanDataset, ImdbDataset, read_wikitext103
from serpent_ssm.data.vocab import BYTE_VOCAB, LISTOPS_VOCAB, Vocab


def raises(path, message):
    return pytest.raises(DataFormatError, match=f"^{re.escape(f'{path}{message}')}$")


# ----------------------------------------------------------------------------- vocabularies, collate
def test_byte_vocab_round_trip_and_save(tmp_path):
    text = "café ∑ naïve\n".encode()
    ids = BYTE_VOCAB.encode_bytes(text)
    assert ids.dtype == torch.int64 and ids.min() >= 3 and ids.max() < BYTE_VOCAB.size == 259
    assert BYTE_VOCAB.decode_bytes(torch.cat([torch.tensor([1]), ids, torch.tensor([2, 0])])) == text
    for vocab in (BYTE_VOCAB, LISTOPS_VOCAB):
        vocab.save(tmp_path / "vocab.json")
        assert Vocab.load(tmp_path / "vocab.json") == vocab
    assert LISTOPS_VOCAB.size == 18


def test_pad_collate_pads_right_with_a_mask():
    batch = [(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0)]
    out = pad_collate(batch)
    assert out["inputs"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["mask"].tolist() == [[True, True, True], [True, False, False]]
    assert out["labels"].tolist() == [1, 0]
    pairs = pad_collate([((torch.tensor([1, 2]), torch.tensor([3])), 1)])
    assert pairs["inputs2"].tolist() == [[3]] and pairs["mask"].tolist() == [[True, True]]
    pixels = pad_collate([(torch.rand(4), 2), (torch.rand(2), 3)])
    assert pixels["inputs"].dtype == torch.float32 and pixels["inputs"][1, 2:].eq(0).all()


# ----------------------------------------------------------------------------- IMDb
def _imdb(root, n=10):
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}_7.txt").write_text(f"{split} {label} review {i} " + "x" * (i * 50))
    return root


def test_imdb_tree(tmp_path):
    root = _imdb(tmp_path)
    train, val, test = (ImdbDataset(root, s, max_len=64) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (18, 2, 20)
    ids, label = test[0]
    assert BYTE_VOCAB.decode_bytes(ids).startswith(b"test neg review 0") and label == 0
    assert max(len(x) for x, _ in train) == 64
    texts = {BYTE_VOCAB.decode_bytes(x) for x, _ in train} | {BYTE_VOCAB.decode_bytes(x) for x, _ in val}
    assert len(texts) == 20  # val and train are disjoint and cover train
    labels = [lab for _, lab in test]
    assert labels.count(1) == labels.count(0) == 10


def test_imdb_missing(tmp_path):
    _imdb(tmp_path)
    for f in (tmp_path / "aclImdb/test/pos").iterdir():
        f.unlink()
    with raises(tmp_path / "aclImdb/test/pos", ": expected *.txt reviews, found none"):
        ImdbDataset(tmp_path, "test")


# ----------------------------------------------------------------------------- AAN
def test_aan_pairs(tmp_path):
    (tmp_path / "aan").mkdir()
    path = tmp_path / "aan/new_aan_pairs.eval.tsv"
    path.write_bytes(b"1.0\ta\tb\tfirst doc\tsecond doc\n0\tc\td\tthird\tfourth doc text\n")
    ds = AanDataset(tmp_path, "val", max_len=5)
    (a, b), label = ds[0]
    assert label == 1 and BYTE_VOCAB.decode_bytes(a) == b"first" and BYTE_VOCAB.decode_bytes(b) == b"secon"
    assert ds[1][1] == 0
    path.write_bytes(b"1\ta\tb\tx\ty\n2\ta\tb\tx\ty\n")
    with raises(path, ":line 2: expected a label 0 or 1, got '2'"):
        AanDataset(tmp_path, "val")
    path.write_bytes(b"1\ta\tb\tx\n")
    with raises(path, ":line 1: expected 5 tab-separated fields, got 4"):
        AanDataset(tmp_path, "val")


# ----------------------------------------------------------------------------- CIFAR-10
def _cifar(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_cifar_grayscale_and_split(tmp_path):
    folder = _cifar(tmp_path)
    train, val, test = (Cifar10Dataset(tmp_path, s, n_val=4) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (26, 4, 6)
    x, label = test[2]
    assert x.shape == (1024,) and label == 2
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"][2].reshape(3, 1024).astype(np.float64)
    want = (0.299 * raw[0] + 0.587 * raw[1] + 0.114 * raw[2]) / 255
    np.testing.assert_allclose(x.numpy(), want, atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = _cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with raises(
        folder / "test_batch", ": not a CIFAR-10 python batch: refusing to load the global posix.system"
    ):
        Cifar10Dataset(tmp_path, "test")


def test_cifar_bad_label(tmp_path):
    folder = _cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}, f)
    with raises(folder / "test_batch", ":sample 1: expected a label 0-9, got 10"):
        Cifar10Dataset(tmp_path, "test")


# ----------------------------------------------------------------------------- IDX / Fashion-MNIST
def _idx(path, array, gz=True):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_fashion_mnist_idx(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz=False)
    train = FashionMnistDataset(tmp_path, "train", n_val=2)
    val = FashionMnistDataset(tmp_path, "val", n_val=2)
    assert len(train) == 10 and len(val) == 2 and train[0][0].shape == (784,)
    padded = FashionMnistDataset(tmp_path, "test", pad_to=1024)
    x, label = padded[3]
    assert x.shape == (1024,) and label == 3
    img = x.reshape(32, 32)
    assert img[:2].eq(0).all() and img[:, :2].eq(0).all()
    raw = read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")[3] / 255.0
    np.testing.assert_allclose(img[2:30, 2:30].numpy(), raw, atol=1e-6)


def test_idx_errors(tmp_path):
    path = tmp_path / "bad-ubyte"
    path.write_bytes(bytes([0, 0, 9, 1, 0, 0, 0, 1, 5]))
    with raises(path, ": expected the IDX magic 00 00 08 <ndim> (unsigned bytes), got 00 00 09 01"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 5]))
    with raises(path, ": expected 3 data bytes for shape (3,), got 1"):
        read_idx(path)
    for prefix in ("train", "t10k"):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.zeros((3, 27, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(3))
    with raises(
        tmp_path / "t10k-images-idx3-ubyte.gz", ": expected images of shape (N, 28, 28), got (3, 27, 28)"
    ):
        FashionMnistDataset(tmp_path, "test")


# ----------------------------------------------------------------------------- WikiText-103
def test_wikitext_raw(tmp_path):
    folder = tmp_path / "wikitext-103-raw"
    folder.mkdir()
    (folder / "wiki.valid.raw").write_bytes(" = Title = \n text é\n".encode())
    data = read_wikitext103(tmp_path, "val")
    assert data.dtype == torch.uint8 and bytes(data.tolist()).decode() == " = Title = \n text é\n"
    with raises(folder / "wiki.test.raw", ": missing: expected WikiText-103 raw text"):
        read_wikitext103(tmp_path, "test")
