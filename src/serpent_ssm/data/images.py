"""Image classification as sequences of pixels: CIFAR-10 (sCIFAR) and Fashion-MNIST.

Samples are ``(pixels (L,) float32 in [0, 1], label)`` in raster order.

- CIFAR-10, the "python version": ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch``,
  pickled dicts with ``data`` uint8 ``(N, 3072)`` (R, G, B planes) and ``labels``. Converted to
  grayscale 32×32 = 1024 with the ITU-R 601 luma weights (0.299, 0.587, 0.114), as in LRA. Split
  45k/5k/10k: val is the last 5,000 images of the train batches. The pickles are read with an
  unpickler that only builds dicts, lists, strings, bytes and numpy arrays: a file that asks for
  anything else is rejected, not executed.
- Fashion-MNIST, IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``: 28×28 = 784
  (``pad_to=1024`` pads each image to 32×32 with zeros, centred). Split 55k/5k/10k: val is the
  last 5,000 training images.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from serpent_ssm.data.errors import DataFormatError, maybe_gunzip, require_file

__all__ = ["Cifar10Dataset", "FashionMnistDataset", "read_idx"]

_SPLITS = ("train", "val", "test")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split: expected one of {', '.join(_SPLITS)}, got {split!r}")


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds; refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise DataFormatError(path, f"not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(d, dict):
        raise DataFormatError(path, f"expected a pickled dict, got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataFormatError(path, f"expected the keys data and labels, got {sorted(d)}")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(path, f"expected data of uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataFormatError(path, f"expected {data.shape[0]} labels, got shape {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DataFormatError(path, f"expected a label 0-9, got {int(labels[bad[0]])}", f"sample {bad[0]}")
    return data, labels.astype(np.int64)


class Cifar10Dataset(Dataset):
    """sCIFAR: ``<data_dir>/cifar-10-batches-py``, grayscale, ``(1024,)`` float pixels in [0, 1]."""

    n_classes = 10
    length = 1024

    def __init__(self, data_dir: str | Path, split: str = "train", n_val: int = 5000):
        _check_split(split)
        folder = Path(data_dir) / "cifar-10-batches-py"
        names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        parts = [_load_cifar_batch(require_file(folder / n, "a CIFAR-10 python batch")) for n in names]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if split == "train":
            data, labels = data[:-n_val], labels[:-n_val]
        elif split == "val":
            data, labels = data[-n_val:], labels[-n_val:]
        rgb = data.reshape(-1, 3, 1024).astype(np.float32)
        gray = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]) / 255.0
        self.pixels = torch.from_numpy(gray.astype(np.float32))
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.pixels[i], int(self.labels[i])


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic ``0 0 dtype ndim``, big-endian int32 sizes, data."""
    path = Path(path)
    raw = maybe_gunzip(require_file(path, "an IDX file").read_bytes(), path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFormatError(
            path, f"expected the IDX magic 00 00 08 <ndim> (unsigned bytes), got {raw[:4].hex(' ')}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(path, f"truncated header: expected {header} bytes, got {len(raw)}")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataFormatError(path, f"expected {size} data bytes for shape {shape}, got {len(raw) - header}")
    return np.frombuffer(io.BytesIO(raw[header:]).getbuffer(), dtype=np.uint8).reshape(shape).copy()


class FashionMnistDataset(Dataset):
    """Fashion-MNIST from its IDX files in ``root``: ``(784,)`` (or ``(pad_to,)``) float pixels."""

    n_classes = 10

    def __init__(self, root: str | Path, split: str = "train", pad_to: int | None = None, n_val: int = 5000):
        _check_split(split)
        root = Path(root)
        prefix = "t10k" if split == "test" else "train"
        img_path = self._find(root, f"{prefix}-images-idx3-ubyte")
        lab_path = self._find(root, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataFormatError(img_path, f"expected images of shape (N, 28, 28), got {images.shape}")
        if labels.shape != (images.shape[0],):
            raise DataFormatError(
                lab_path, f"expected {images.shape[0]} labels (one per image), got shape {labels.shape}"
            )
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            raise DataFormatError(
                lab_path, f"expected a label 0-9, got {int(labels[bad[0]])}", f"sample {bad[0]}"
            )
        if split == "train":
            images, labels = images[:-n_val], labels[:-n_val]
        elif split == "val":
            images, labels = images[-n_val:], labels[-n_val:]
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        if pad_to is not None:
            side = int(round(pad_to**0.5))
            if side * side != pad_to or side < 28:
                raise ValueError(f"pad_to: expected a square of a side >= 28 (e.g. 1024), got {pad_to}")
            lo = (side - 28) // 2
            x = torch.nn.functional.pad(x, (lo, side - 28 - lo, lo, side - 28 - lo))
        self.pixels = x.reshape(len(x), -1)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    @staticmethod
    def _find(root: Path, stem: str) -> Path:
        for name in (stem + ".gz", stem):
            if (root / name).is_file():
                return root / name
        raise DataFormatError(
            root / (stem + ".gz"), "missing: expected a Fashion-MNIST IDX file (gzipped or not)"
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.pixels[i], int(self.labels[i])
