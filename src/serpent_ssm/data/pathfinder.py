"""Pathfinder (Linsley et al. 2018; LRA "Pathfinder" and "Path-X"): a generator and a loader.

Layout (the state-spaces S4 code base's, shared by downloaded and generated data)::

    <data_dir>/pathfinder/pathfinder{size}/<folder>/imgs/<k>/sample_<i>.png
    <data_dir>/pathfinder/pathfinder{size}/<folder>/metadata/<k>.npy

``<folder>`` is ``curv_baseline`` (difficulty "easy", contours of 6 paddles),
``curv_contour_length_9`` ("medium") or ``curv_contour_length_14`` ("hard"). The ``.npy``
metadata files are **plain text** despite the name: one line per sample, space-separated, field 0
the image folder (``imgs/0``), field 1 the file name (``sample_3.png``), field 3 the label (0/1).
Our generator writes 6 fields::

    imgs/<k> sample_<i>.png <i> <label> <contour length> <number of distractor contours>

(field 2 = the sample's index inside its batch folder; the official files have more numeric
fields, which the loader ignores). The generator also writes ``splits.json`` (``"train"``,
``"val"``, ``"test"`` -> lists of ``"imgs/<k>/sample_<i>.png"``) and ``stats.json``.

Pictures (drawn by ``pathfinder_drawing``; grayscale uint8, black background, drawn directly at
the target resolution): two long contours of ``contour length`` paddles (short straight dashes
with small gaps, turning by a smoothly varying angle of at most 30° per paddle), up to
``n_distractors`` shorter distractor contours (``contour length // 2`` paddles; as many as fit,
recorded in field 5), and two circular markers. Label 1: the markers sit on the two ends of one
long contour; label 0: on one end each of the two long contours (so both classes show the same
contours). Checkable from the picture alone, with the numbers of ``pathfinder_geometry(size,
difficulty)``:

- marker cores are exactly ``MARKER_LEVEL`` (255); paddles never exceed ``STROKE_LEVEL`` (200);
  ink (paddles and markers) is > 0, the background 0;
- ink pixels of consecutive paddles of a contour, and of a marker and its contour, lie within
  ``link_px`` of each other (distance between pixel centres); ink of different contours, their
  markers included, lies more than ``link_px`` apart. So linking ink pixels at most ``link_px``
  apart gives one component per contour (``2 + field 5`` in all), and the two markers share a
  component iff the label is 1.

Geometry, with ``s = size / 32``: paddles ``1.25 s`` px long with ``s`` px gaps (a contour covers
the same fraction of the picture at every size: Path-X is Pathfinder drawn at 128×128); strokes
of radius ``0.55 sqrt(s)`` px; markers of radius ``1.5 s**0.75`` px; ``link_px = max(gap - 2
radius, 0) + 2.3`` (2.3 covers the pixel grid's rounding; the worst gaps measured over thousands
of paddles: 2.24 px at 32, 3.61 at 128, 6.40 at 256); centrelines of different contours at
least ``link_px + 2 radius + 0.1`` apart, marker centres ``link_px + radius + marker radius + 0.1``
from other centrelines and ``link_px + 2 marker radius + 0.1`` from each other. Below 1 px (at
32×32) the gaps show as dimmer pixels rather than holes, as in LRA's downsampled pictures.
Distractors: up to ``round(base * sqrt(s))``, ``base`` = 3 (easy, medium) or 2 (hard); thinner
relative strokes and separations leave room for more of them at larger sizes. The 32×32 "hard"
pictures are crowded: about 1.5 of 2 distractors fit on average (``stats.json`` reports it).
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.data.pathfinder_drawing import (
    DIFFICULTIES,
    PathfinderGeometry,
    _check_choice,
    _check_size,
    _draw,
    pathfinder_geometry,
)
from serpent_ssm.utils.io import atomic_write_bytes

__all__ = ["PathfinderDataset", "generate_pathfinder", "pathfinder_root"]

logger = logging.getLogger("serpent_ssm.data")

SPLITS = ("train", "val", "test")
BATCH = 1000  # images per imgs/<k> folder (and per metadata/<k>.npy)
_PNG_HINT = "Pathfinder PNGs need Pillow: pip install 'serpent-ssm[data]'"


def pathfinder_root(data_dir: str | Path, size: int = 32, difficulty: str = "hard") -> Path:
    """``<data_dir>/pathfinder/pathfinder{size}/<folder of difficulty>``."""
    _check_size(size)
    _check_choice("difficulty", difficulty, tuple(DIFFICULTIES))
    return Path(data_dir) / "pathfinder" / f"pathfinder{size}" / DIFFICULTIES[difficulty][0]


# ---------------------------------------------------------------- generator


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Atomic, without fsync: a generated set is regenerated, and an fsync per picture would
    dominate the generation time."""
    atomic_write_bytes(path, lambda f: f.write(data), fsync=False)


def generate_pathfinder(
    out: str | Path,
    size: int = 32,
    difficulty: str = "hard",
    n_train: int = 20_000,
    n_val: int = 1_000,
    n_test: int = 1_000,
    seed: int = 0,
) -> dict:
    """Write a Pathfinder set in the official layout under ``<out>/pathfinder/pathfinder{size}/``.

    Args:
        out: the data directory (``PathfinderDataset(out, size, difficulty, split)`` reads it).
        size: 32 (LRA Pathfinder), 64, 128 (Path-X) or 256; pictures are ``(size, size)`` uint8.
        difficulty: "easy" (6 paddles), "medium" (9) or "hard" (14, the LRA setting).
        n_train, n_val, n_test: samples per split, written in that order, ``BATCH`` (1000) per
            ``imgs/<k>`` folder; ``splits.json`` records which belongs where.
        seed: the pictures, labels and files are a function of the arguments (same bytes for the
            same arguments with the same Pillow); ``stats.json`` also records the time taken.

    Labels are balanced within each split: exactly ``n // 2`` positives and ``n - n // 2``
    negatives (50/50 for an even ``n``), in a seeded random order. Each batch's metadata file is
    written (atomically) after its images, so an interrupted run leaves only complete batches
    listed; ``splits.json`` and ``stats.json`` (removed first) are written last. Metadata files of
    an earlier, larger run in the same folder are removed.

    Returns:
        the stats: ``{"size", "difficulty", "folder", "seed", "geometry", "splits": {split: {"n",
        "labels": {"0": .., "1": ..}}}, "distractors_mean": {label: ..}, "placement_attempts_mean",
        "seconds"}``.
    """
    _check_size(size)
    _check_choice("difficulty", difficulty, tuple(DIFFICULTIES))
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_count(name, v)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise ModuleNotFoundError(_PNG_HINT) from None
    start = time.perf_counter()
    geom = pathfinder_geometry(size, difficulty)
    root = pathfinder_root(out, size, difficulty)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for name in ("splits.json", "stats.json"):
        (root / name).unlink(missing_ok=True)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    labels = _balanced_labels(counts, seed)
    paths, attempts, drawn = _write_batches(root, geom, labels, seed, Image)
    splits, stats_splits, lo = {}, {}, 0
    for split, n in counts.items():
        splits[split] = paths[lo : lo + n]
        part = labels[lo : lo + n]
        stats_splits[split] = {"n": n, "labels": {"0": part.count(0), "1": part.count(1)}}
        lo += n
    _write_atomic(root / "splits.json", (json.dumps(splits, indent=0) + "\n").encode())
    stats = {
        "size": size,
        "difficulty": difficulty,
        "folder": root.name,
        "seed": seed,
        "geometry": asdict(geom),
        "splits": stats_splits,
        "distractors_mean": {str(k): float(np.mean(v)) if v else None for k, v in drawn.items()},
        "placement_attempts_mean": attempts / max(len(labels), 1),
        "seconds": round(time.perf_counter() - start, 3),
    }
    _write_atomic(root / "stats.json", (json.dumps(stats, indent=1) + "\n").encode())
    return stats


def _balanced_labels(counts: dict[str, int], seed: int) -> list[int]:
    """Per split ``n // 2`` positives and the rest negatives, in a seeded order; splits in order."""
    labels = []
    for i, n in enumerate(counts.values()):
        split_labels = np.array([1] * (n // 2) + [0] * (n - n // 2))
        labels.extend(np.random.default_rng([seed, 1, i]).permutation(split_labels).tolist())
    return labels


def _write_batches(
    root: Path, geom: PathfinderGeometry, labels: list[int], seed: int, image_module
) -> tuple[list[str], int, dict[int, list[int]]]:
    """Draw and write every picture (PNG through ``image_module``, Pillow's ``Image``), ``BATCH``
    per ``imgs/<k>`` folder, each batch's metadata file after its images. Returns the picture
    paths, the placement attempts and the distractor counts per label."""
    n_batches = math.ceil(len(labels) / BATCH)
    for old in (root / "metadata").glob("*.npy"):  # batches of an earlier, larger run
        if old.stem.isdigit() and int(old.stem) >= n_batches:
            old.unlink()
    paths, attempts, drawn = [], 0, {0: [], 1: []}
    for k in range(n_batches):
        (root / "imgs" / str(k)).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(k * BATCH, min((k + 1) * BATCH, len(labels))):
            j, label = i - k * BATCH, labels[i]
            picture, n_distractors, used = _draw(geom, label, np.random.default_rng([seed, 0, i]))
            attempts += used
            drawn[label].append(n_distractors)
            buf = io.BytesIO()
            image_module.fromarray(picture).save(buf, format="PNG")
            _write_atomic(root / "imgs" / str(k) / f"sample_{j}.png", buf.getvalue())
            lines.append(f"imgs/{k} sample_{j}.png {j} {label} {geom.contour_length} {n_distractors}\n")
            paths.append(f"imgs/{k}/sample_{j}.png")
        _write_atomic(root / "metadata" / f"{k}.npy", "".join(lines).encode())
    return paths, attempts, drawn


# ---------------------------------------------------------------- loader


def _batch_key(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


class PathfinderDataset(Dataset):
    """``<data_dir>/pathfinder/pathfinder{size}/<folder>/`` as ``(pixels (size*size,) float32 in
    [0, 1], raster order, label int 0/1)`` samples.

    Reads every ``metadata/*.npy`` text file (numerically sorted). The split comes from
    ``splits.json`` when present (generated data); otherwise (downloaded data) all listed samples
    are shuffled with ``numpy.random.default_rng(0).permutation`` and cut 80/10/10 (val gets the
    first ``N // 10``, test the next ``N // 10``, train the rest: the S4 convention), each split
    kept in file order.

    Images are decoded eagerly, only the split's, into uint8 ``(N, size*size)`` (one byte a pixel:
    200 MB for 200k 32×32 images, 16 KB an image at 128×128): construction checks every file and
    knows ``n_skipped_empty`` exactly, and epochs cost no PNG decoding (about 50 µs an image).
    Empty images (zero-byte files or all-black pictures) are skipped, counted in
    ``n_skipped_empty`` and logged once on ``logging.getLogger("serpent_ssm.data")``; anything else
    malformed raises DataFormatError naming the file and the line.
    """

    n_classes = 2

    def __init__(self, data_dir: str | Path, size: int = 32, difficulty: str = "hard", split: str = "train"):
        _check_size(size)
        _check_choice("difficulty", difficulty, tuple(DIFFICULTIES))
        _check_choice("split", split, SPLITS)
        try:
            from PIL import Image
        except ModuleNotFoundError:
            raise ModuleNotFoundError(_PNG_HINT) from None
        self.size, self.split = size, split
        self.root = root = pathfinder_root(data_dir, size, difficulty)
        if not root.is_dir():
            raise DataFormatError(root, "missing: expected the Pathfinder folder holding imgs/ and metadata/")
        meta_dir = root / "metadata"
        files = sorted(meta_dir.glob("*.npy"), key=_batch_key) if meta_dir.is_dir() else []
        if not files:
            raise DataFormatError(meta_dir, "missing: expected the metadata/<k>.npy files (plain text)")
        entries = []  # (image path relative to root, label, metadata file, line number)
        for meta in files:
            try:
                text = meta.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                problem = f"expected a text metadata file, got non-UTF-8 bytes ({exc.reason} at {exc.start})"
                raise DataFormatError(meta, problem) from None
            for lineno, line in enumerate(text.splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                where = f"line {lineno}"
                if len(fields) < 4:
                    raise DataFormatError(
                        meta, f"expected at least 4 space-separated fields, got {len(fields)}", where
                    )
                if fields[3] not in ("0", "1"):
                    raise DataFormatError(meta, f"expected a label 0 or 1, got {fields[3]!r}", where)
                entries.append((f"{fields[0]}/{fields[1]}", int(fields[3]), meta, lineno))
        self.n_skipped_empty = 0
        pixels, labels, self.paths = [], [], []
        for rel, label, meta, lineno in self._split_entries(entries, split):
            image = self._read(Image, root / rel, f"metadata/{meta.name} line {lineno}")
            if image is None:
                self.n_skipped_empty += 1
                continue
            pixels.append(image)
            labels.append(label)
            self.paths.append(rel)
        if self.n_skipped_empty:
            logger.warning("Pathfinder %s (%s): skipped %d empty images", root, split, self.n_skipped_empty)
        self.pixels = np.stack(pixels) if pixels else np.zeros((0, size * size), np.uint8)
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def _split_entries(self, entries: list, split: str) -> list:
        splits_file = self.root / "splits.json"
        if not splits_file.is_file():
            n = len(entries)
            order, n_eval = np.random.default_rng(0).permutation(n), n // 10
            lo, hi = {"val": (0, n_eval), "test": (n_eval, 2 * n_eval), "train": (2 * n_eval, n)}[split]
            return [entries[i] for i in np.sort(order[lo:hi])]
        try:
            listed = json.loads(splits_file.read_text(encoding="utf-8"))[split]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataFormatError(
                splits_file, f"expected a JSON object with a list {split!r}: {exc!r}"
            ) from None
        if not isinstance(listed, list) or not all(isinstance(rel, str) for rel in listed):
            raise DataFormatError(
                splits_file, f"expected {split!r} to be a list of image paths (strings), got {listed!r:.80}"
            )
        by_path = {e[0]: e for e in entries}
        for i, rel in enumerate(listed):
            if rel not in by_path:
                raise DataFormatError(splits_file, f"{rel!r} is in no metadata file", f"{split} sample {i}")
        return [by_path[rel] for rel in listed]

    def _read(self, Image, path: Path, listed_at: str) -> np.ndarray | None:
        """The picture at ``path`` as uint8 ``(size*size,)``, or None when it is empty."""
        if not path.is_file():
            raise DataFormatError(path, f"missing: expected the image listed at {listed_at}")
        if path.stat().st_size == 0:
            return None
        n = self.size
        try:
            with Image.open(path) as im:
                if im.size != (n, n):
                    raise DataFormatError(
                        path, f"expected a {n}×{n} grayscale image, got {im.width}×{im.height}"
                    )
                pixels = np.asarray(im if im.mode == "L" else im.convert("L"), dtype=np.uint8).reshape(-1)
        except OSError as exc:  # PIL.UnidentifiedImageError included
            raise DataFormatError(path, f"not a readable image ({listed_at}): {exc}") from None
        return pixels if pixels.any() else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.pixels[i].astype(np.float32) / 255.0), int(self.labels[i])
