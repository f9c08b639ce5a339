"""Pathfinder: generator -> official layout -> loader; labels checked on the pictures themselves."""

from __future__ import annotations

import json
import logging
import re
import sys

import numpy as np
import pytest
import torch

from serpent_ssm.data import pathfinder as pf
from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.data.pathfinder import PathfinderDataset, generate_pathfinder
from serpent_ssm.data.pathfinder_drawing import MARKER_LEVEL, _draw, pathfinder_geometry

Image = pytest.importorskip("PIL.Image")


def components(mask: np.ndarray, radius: float) -> np.ndarray:
    """Component ids ``(H, W)`` of the True pixels of ``mask`` (0 elsewhere), two pixels joined when
    their centres are at most ``radius`` apart (union-find over all such pairs)."""
    pts = np.argwhere(mask)
    parent = list(range(len(pts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    for i, j in zip(*np.nonzero(np.triu(d2 <= radius**2, 1)), strict=True):
        parent[find(int(i))] = find(int(j))
    ids = np.zeros(mask.shape, np.int64)
    for k, (r, c) in enumerate(pts):
        ids[r, c] = find(k) + 1
    return ids


def read_metadata(root) -> dict[str, list[str]]:
    """``"imgs/<k>/sample_<i>.png"`` -> the fields of its metadata line."""
    out = {}
    for meta in sorted((root / "metadata").glob("*.npy")):
        for line in meta.read_text().splitlines():
            fields = line.split()
            out[f"{fields[0]}/{fields[1]}"] = fields
    return out


def check_picture(picture: np.ndarray, label: int, n_contours: int, link_px: float) -> None:
    """Markers = the two blobs of 255 pixels; ink = pixels > 0, joined across gaps <= link_px."""
    cores = components(picture == MARKER_LEVEL, 1.5)  # 8-connected
    marker_ids = [i for i in np.unique(cores) if i]
    assert len(marker_ids) == 2, f"expected 2 markers, found {len(marker_ids)}"
    ink = components(picture > 0, link_px)
    marker_comps = {int(ink[cores == i][0]) for i in marker_ids}
    assert (len(marker_comps) == 1) == (label == 1)
    assert len(np.unique(ink)) - 1 == n_contours  # every contour in one piece, all apart


# ---------------------------------------------------------------- generator -> loader


def test_round_trip_32(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "BATCH", 5)  # 13 batch folders: metadata sorted 0, 1, ..., 10, 11, 12
    stats = generate_pathfinder(tmp_path, 32, "hard", n_train=40, n_val=10, n_test=12, seed=3)
    root = tmp_path / "pathfinder" / "pathfinder32" / "curv_contour_length_14"
    assert sorted(int(p.stem) for p in (root / "metadata").glob("*.npy")) == list(range(13))
    assert (root / "imgs" / "12" / "sample_1.png").is_file()
    assert stats["splits"] == {
        "train": {"n": 40, "labels": {"0": 20, "1": 20}},
        "val": {"n": 10, "labels": {"0": 5, "1": 5}},
        "test": {"n": 12, "labels": {"0": 6, "1": 6}},
    }
    assert json.loads((root / "stats.json").read_text())["splits"] == stats["splits"]
    splits = json.loads((root / "splits.json").read_text())
    meta = read_metadata(root)
    assert sorted(sum(splits.values(), [])) == sorted(meta)
    for fields in meta.values():
        assert len(fields) == 6 and fields[1] == f"sample_{fields[2]}.png" and fields[4] == "14"
    for split, n in (("train", 40), ("val", 10), ("test", 12)):
        ds = PathfinderDataset(tmp_path, 32, "hard", split)
        assert len(ds) == n and ds.n_classes == 2 and ds.n_skipped_empty == 0
        assert ds.paths == splits[split]
        assert [int(meta[p][3]) for p in ds.paths] == ds.labels.tolist()
        assert int(ds.labels.sum()) == n // 2
        x, y = ds[0]
        assert x.shape == (1024,) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
        png = np.asarray(Image.open(root / ds.paths[0]), dtype=np.float32).reshape(-1) / 255
        assert torch.equal(x, torch.from_numpy(png)) and y in (0, 1)


def test_round_trip_128(tmp_path):
    generate_pathfinder(tmp_path, 128, "hard", n_train=4, n_val=1, n_test=1, seed=0)
    ds = PathfinderDataset(tmp_path, 128, "hard", "train")
    assert len(ds) == 4 and int(ds.labels.sum()) == 2
    assert ds[3][0].shape == (128 * 128,)
    assert len(PathfinderDataset(tmp_path, 128, "hard", "test")) == 1


def test_fallback_split_without_splits_json(tmp_path, monkeypatch):
    """Downloaded data has no splits.json: a seeded 80/10/10 cut of all samples."""
    monkeypatch.setattr(pf, "BATCH", 7)
    generate_pathfinder(tmp_path, 32, "easy", n_train=30, n_val=0, n_test=0, seed=1)
    (tmp_path / "pathfinder" / "pathfinder32" / "curv_baseline" / "splits.json").unlink()
    parts = {s: PathfinderDataset(tmp_path, 32, "easy", s).paths for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [24, 3, 3]
    assert len(set(sum(parts.values(), []))) == 30
    assert parts == {s: PathfinderDataset(tmp_path, 32, "easy", s).paths for s in parts}  # seeded


def test_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "BATCH", 4)

    def files(out, seed):
        generate_pathfinder(out, 32, "medium", n_train=6, n_val=2, n_test=2, seed=seed)
        root = out / "pathfinder" / "pathfinder32" / "curv_contour_length_9"
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    a, b, c = files(tmp_path / "a", 5), files(tmp_path / "b", 5), files(tmp_path / "c", 6)
    stats = a.keys() - {p for p in a if p.name == "stats.json"}
    assert len(stats) == 10 + 3 + 1  # pngs, metadata, splits.json
    assert all(a[p] == b[p] for p in stats)
    assert any(a[p] != c[p] for p in stats if p.suffix == ".png")


def test_rerun_removes_stale_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "BATCH", 2)
    generate_pathfinder(tmp_path, 32, "easy", n_train=6, n_val=0, n_test=0)
    generate_pathfinder(tmp_path, 32, "easy", n_train=2, n_val=0, n_test=0)
    assert len(PathfinderDataset(tmp_path, 32, "easy", "train")) == 2
    root = tmp_path / "pathfinder" / "pathfinder32" / "curv_baseline"
    assert [p.name for p in (root / "metadata").glob("*.npy")] == ["0.npy"]


# ---------------------------------------------------------------- labels from the pictures


@pytest.mark.parametrize(
    ("size", "difficulty", "n"), [(32, "easy", 150), (32, "medium", 150), (32, "hard", 200)]
)
def test_labels_match_pictures_32(tmp_path, size, difficulty, n):
    """Connectivity decided on the rendered pixels alone agrees with every label."""
    generate_pathfinder(tmp_path, size, difficulty, n_train=n, n_val=0, n_test=0, seed=11)
    ds = PathfinderDataset(tmp_path, size, difficulty, "train")
    meta = read_metadata(ds.root)
    link = pathfinder_geometry(size, difficulty).link_px
    for i in range(len(ds)):
        picture = ds.pixels[i].reshape(size, size)
        check_picture(picture, int(ds.labels[i]), 2 + int(meta[ds.paths[i]][5]), link)


def test_labels_match_pictures_128(tmp_path):
    generate_pathfinder(tmp_path, 128, "hard", n_train=10, n_val=0, n_test=0, seed=2)
    ds = PathfinderDataset(tmp_path, 128, "hard", "train")
    meta = read_metadata(ds.root)
    link = pathfinder_geometry(128, "hard").link_px
    for i in range(len(ds)):
        n_contours = 2 + int(meta[ds.paths[i]][5])
        assert n_contours >= 4  # more distractors fit at 128
        check_picture(ds.pixels[i].reshape(128, 128), int(ds.labels[i]), n_contours, link)


def test_check_picture_catches_a_bridge():
    """The checker is not vacuous: joining the two long contours of a negative flips its verdict."""
    geom = pathfinder_geometry(32, "easy")
    picture, n_distractors, _ = _draw(geom, 0, np.random.default_rng(0))
    check_picture(picture, 0, 2 + n_distractors, geom.link_px)
    cores = components(picture == 255, 1.5)
    (r0, c0), (r1, c1) = (np.argwhere(cores == i)[0] for i in np.unique(cores)[1:])
    for t in np.linspace(0, 1, 100):
        picture[round(r0 + t * (r1 - r0)), round(c0 + t * (c1 - c0))] = 100
    with pytest.raises(AssertionError):
        check_picture(picture, 0, 2 + n_distractors, geom.link_px)


# ---------------------------------------------------------------- loader on hand-built files


def write_png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture
def official(tmp_path):
    """An official-format pathfinder32/curv_baseline with 6 images: sample_2 empty (0 bytes),
    sample_3 all black, the others with a bright pixel."""
    root = tmp_path / "pathfinder" / "pathfinder32" / "curv_baseline"
    for i in range(6):
        picture = np.zeros((32, 32))
        picture[i, i] = 0 if i == 3 else 255
        write_png(root / "imgs" / "0" / f"sample_{i}.png", picture)
    (root / "imgs" / "0" / "sample_2.png").write_bytes(b"")
    lines = [f"imgs/0 sample_{i}.png {i} {i % 2} 6 1 0.5 3" for i in range(6)]
    (root / "metadata").mkdir()
    (root / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")
    return tmp_path, root, lines


def test_loader_skips_empty_images(official, caplog):
    data_dir, root, _ = official
    with caplog.at_level(logging.WARNING, logger="serpent_ssm.data"):
        ds = PathfinderDataset(data_dir, 32, "easy", "train")  # 6 samples: 80/10/10 -> all train
    assert ds.n_skipped_empty == 2 and len(ds) == 4
    assert ds.paths == [
        "imgs/0/sample_0.png",
        "imgs/0/sample_1.png",
        "imgs/0/sample_4.png",
        "imgs/0/sample_5.png",
    ]
    assert ds.labels.tolist() == [0, 1, 0, 1]
    x, _ = ds[2]
    assert float(x[4 * 32 + 4]) == 1.0 and float(x.sum()) == 1.0
    assert [r.getMessage() for r in caplog.records] == [f"Pathfinder {root} (train): skipped 2 empty images"]


def test_loader_bad_metadata(official):
    data_dir, root, lines = official
    meta = root / "metadata" / "0.npy"
    cases = [
        (3, "imgs/0 sample_2.png", f"{meta}:line 3: expected at least 4 space-separated fields, got 2"),
        (2, "imgs/0 sample_1.png 1 2", f"{meta}:line 2: expected a label 0 or 1, got '2'"),
        (
            1,
            "imgs/0 sample_9.png 9 1 6",
            f"{root / 'imgs/0/sample_9.png'}: missing: expected the image listed at metadata/0.npy line 1",
        ),
    ]
    for lineno, line, message in cases:
        meta.write_text("\n".join(lines[: lineno - 1] + [line] + lines[lineno:]) + "\n")
        with pytest.raises(DataFormatError, match=re.escape(message) + "$"):
            PathfinderDataset(data_dir, 32, "easy", "train")


def test_loader_bad_images(official):
    data_dir, root, _ = official
    image = root / "imgs" / "0" / "sample_4.png"
    write_png(image, np.ones((28, 28)))
    with pytest.raises(
        DataFormatError, match=re.escape(f"{image}: expected a 32×32 grayscale image, got 28×28") + "$"
    ):
        PathfinderDataset(data_dir, 32, "easy", "train")
    image.write_bytes(b"not a png")
    with pytest.raises(
        DataFormatError, match=re.escape(f"{image}: not a readable image (metadata/0.npy line 5)")
    ):
        PathfinderDataset(data_dir, 32, "easy", "train")


def test_loader_missing_folders(tmp_path, official):
    data_dir, root, _ = official
    missing = tmp_path / "pathfinder" / "pathfinder32" / "curv_contour_length_14"
    message = f"{missing}: missing: expected the Pathfinder folder holding imgs/ and metadata/"
    with pytest.raises(DataFormatError, match=re.escape(message) + "$"):
        PathfinderDataset(data_dir, 32, "hard", "train")
    (root / "metadata" / "0.npy").unlink()
    message = f"{root / 'metadata'}: missing: expected the metadata/<k>.npy files (plain text)"
    with pytest.raises(DataFormatError, match=re.escape(message) + "$"):
        PathfinderDataset(data_dir, 32, "easy", "train")


def test_loader_splits_json_naming_unknown_image(tmp_path):
    generate_pathfinder(tmp_path, 32, "easy", n_train=2, n_val=0, n_test=0)
    path = tmp_path / "pathfinder" / "pathfinder32" / "curv_baseline" / "splits.json"
    path.write_text(
        json.dumps({"train": ["imgs/0/sample_0.png", "imgs/0/sample_7.png"], "val": [], "test": []})
    )
    message = f"{path}:train sample 1: 'imgs/0/sample_7.png' is in no metadata file"
    with pytest.raises(DataFormatError, match=re.escape(message) + "$"):
        PathfinderDataset(tmp_path, 32, "easy", "train")


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 48}, "size: expected one of 32, 64, 128, 256 (the official sizes), got 48"),
        ({"size": True}, "size: expected one of 32, 64, 128, 256 (the official sizes), got True"),
        ({"difficulty": "extreme"}, "difficulty: expected one of 'easy', 'medium', 'hard', got 'extreme'"),
        ({"n_train": -1}, "n_train: expected a non-negative integer, got -1"),
        ({"n_val": 1.5}, "n_val: expected a non-negative integer, got 1.5"),
        ({"n_test": "3"}, "n_test: expected a non-negative integer, got '3'"),
        ({"seed": -2}, "seed: expected a non-negative integer, got -2"),
    ],
)
def test_generator_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        generate_pathfinder(tmp_path, **kwargs)
    assert not (tmp_path / "pathfinder").exists()


def test_loader_rejects_bad_arguments(tmp_path):
    with pytest.raises(
        ValueError, match=re.escape("split: expected one of 'train', 'val', 'test', got 'dev'")
    ):
        PathfinderDataset(tmp_path, 32, "hard", "dev")
    with pytest.raises(ValueError, match=re.escape("size: expected one of 32, 64, 128, 256")):
        PathfinderDataset(tmp_path, 28)


def test_without_pillow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    message = "Pathfinder PNGs need Pillow: pip install 'serpent-ssm[data]'"
    with pytest.raises(ModuleNotFoundError, match=re.escape(message)):
        generate_pathfinder(tmp_path, n_train=2, n_val=0, n_test=0)
    with pytest.raises(ModuleNotFoundError, match=re.escape(message)):
        PathfinderDataset(tmp_path)
