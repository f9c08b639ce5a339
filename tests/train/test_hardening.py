"""Faults and bad input around training: each test reproduces one defect found by trying the library
as a careful and as a hostile user would (docs/failures.md)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from serpent_ssm.cli import main
from serpent_ssm.train import checkpoint
from serpent_ssm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from serpent_ssm.train.config import load_run_config
from serpent_ssm.train.loop import train
from serpent_ssm.train.run_files import RunLock, read_metrics_file

from tests.train.test_loop import _cfg


def _raises(message: str):
    return pytest.raises(ValueError, match=f"^{re.escape(message)}")


# ----------------------------------------------------------------------------- one run per directory
def test_a_second_process_on_the_same_run_directory_fails_at_once(listops_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):  # another serpent train holds the directory
        with _raises(f"{out}: another serpent train (pid {os.getpid()}) is using this run directory"):
            train(_cfg(listops_dir, "train.max_steps=2"), out, quiet=True)
    assert not (out / "metrics.jsonl").exists()
    train(_cfg(listops_dir, "train.max_steps=2"), out, quiet=True)  # released: the run goes ahead


def test_the_lock_dies_with_its_process(tmp_path):
    code = (
        "import sys, time; from serpent_ssm.train.run_files import RunLock\n"
        "with RunLock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with _raises(f"{tmp_path}: another serpent train (pid {child.pid})"):
            RunLock(tmp_path).__enter__()
    finally:
        child.kill()  # SIGKILL: no clean-up code runs
        child.wait()
    with RunLock(tmp_path):
        pass


# ----------------------------------------------------------------------------- torn files
def test_a_torn_last_metrics_line_is_dropped_and_a_bad_middle_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl:2: dropped a torn last line"):
        assert read_metrics_file(path) == [{"step": 1, "split": "train"}]
    path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with _raises(f"{path}:2: not a metrics record"):
        read_metrics_file(path)


def test_resume_after_a_torn_append_and_left_temporaries(listops_dir, tmp_path):
    cfg = _cfg(listops_dir, "train.max_steps=10")
    out = tmp_path / "run"
    train(_cfg(listops_dir, "train.max_steps=5"), out, quiet=True)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "split": "tr')  # killed during an append
    stale = [out / ".metrics.jsonl.x1y2", out / "checkpoints" / ".last.pt.k3j4"]
    for p in stale:
        p.write_bytes(b"partial")
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        train(cfg, out, resume=True, quiet=True)
    assert not any(p.exists() for p in stale)
    steps = [r["step"] for r in read_metrics_file(out / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [5, 10]


def test_a_missing_or_garbage_index_says_so(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, 1)
    (tmp_path / "index.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"index\.json is missing, so no checkpoint file can be verified"
    ):
        load_checkpoint(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"index\.json is not valid JSON"):
        load_checkpoint(tmp_path)
    (tmp_path / "index.json").write_text('{"last": 3}')
    with pytest.raises(
        CheckpointError, match=r"entry 'last': expected \{file, sha256, step\}, got 3 \(last\.pt present\)"
    ):
        load_checkpoint(tmp_path)


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, 1)

    def full(path, write, fsync=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    with pytest.raises(
        CheckpointError, match="no space left on device while writing the checkpoint of step 2"
    ):
        save_checkpoint(tmp_path, {"w": torch.zeros(2)}, 2)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path)["w"], torch.ones(2))


# ----------------------------------------------------------------------------- values checked first
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.grad_clip=-1", "optim.grad_clip: expected a number >= 0.0, got -1.0"),
        ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio: expected a number in [0, 1], got 1.5"),
        ("optim.min_lr_ratio=-0.1", "optim.min_lr_ratio: expected a number in [0, 1], got -0.1"),
        ("optim.lr=.nan", "optim.lr: expected a finite float, got nan"),
        ("optim.weight_decay=.inf", "optim.weight_decay: expected a finite float, got inf"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1]: expected a number in [0, 1), got 1.0"),
        ("data.max_len=0", "data.max_len: expected a positive integer, got 0"),
        ("data.max_len=-5", "data.max_len: expected a positive integer, got -5"),
        ("data.limit_eval=-1", "data.limit_eval: expected a positive integer, got -1"),
        ("data.limit_train=0", "data.limit_train: expected a positive integer, got 0"),
        ("data.seq_len=1", "data.seq_len: expected at least 2 (an input and its next byte), got 1"),
        ("data.pad_to=0", "data.pad_to: expected a positive integer, got 0"),
        ("train.seed=-1", "train.seed: expected a number >= 0, got -1"),
        ("train.device=bogus", "train.device: expected a torch device such as 'cpu', 'cuda' or 'cuda:1'"),
        ("model.dropout=1.0", "model.dropout: expected a probability in [0, 1), got 1.0"),
        ("model.norm=batch", "model.norm: expected one of rms, layer, got 'batch'"),
    ],
)
def test_bad_values_fail_before_anything_runs(override, message):
    with _raises(message):
        load_run_config(None, [override])


def test_an_unavailable_device_is_named_before_data(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    missing = tmp_path / "no-data"
    code = main(
        ["train", "--data-dir", str(missing), "--out", str(tmp_path / "r"), "--set", "train.device=cuda"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (
        "train.device: expected a device available here (cpu), got 'cuda'" in err
        and "--set train.device=cpu" in err
    )
    assert not missing.exists()


def test_yaml_aliases_and_non_utf8_name_the_file(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["lol", "lol"]\nb: &b [*a, *a]\nmodel: {backbone: {d_state: 4}, x: [*b, *b]}\n')
    with _raises(f"{bomb}: line 2: YAML aliases (*name) are not supported in run configs"):
        load_run_config(bomb)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model: {name: mamba}  # caf\xe9\n".encode("latin-1"))
    with _raises(f"{latin}: expected UTF-8 text"):
        load_run_config(latin)


# ----------------------------------------------------------------------------- data
def test_an_empty_split_fails_before_training(listops_dir, tmp_path):
    data = tmp_path / "data"
    (data / "listops").mkdir(parents=True)
    for split in ("train", "val", "test"):
        src = (listops_dir / "listops" / f"basic_{split}.tsv").read_text()
        text = src.splitlines()[0] + "\n" if split == "val" else src
        (data / "listops" / f"basic_{split}.tsv").write_text(text)
    with _raises(f"data: the val split of listops (under {data}) holds 0 samples; expected at least 1"):
        train(_cfg(data, "data.generate={}"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "best").exists()


def test_a_data_dir_that_is_a_file_fails_before_generating(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with _raises(f"data.data_dir: expected a directory, got a file: {f}"):
        train(_cfg(f, "data.generate={n_train: 64}"), tmp_path / "run", quiet=True)


def test_a_set_generated_otherwise_says_how_to_use_it(listops_dir, tmp_path):
    with pytest.raises(ValueError, match=r"with --set 'data\.generate=\{\}'"):
        train(_cfg(listops_dir, "data.generate={n_train: 99}"), tmp_path / "run", quiet=True)


@pytest.mark.parametrize("label", ["inf", "1e400", "nan", "10", "3.5"])
def test_listops_labels_that_are_not_classes_name_the_line(tmp_path, label):
    from serpent_ssm.data.listops import ListOpsDataset

    (tmp_path / "listops").mkdir()
    path = tmp_path / "listops" / "basic_train.tsv"
    path.write_text(f"Source\tTarget\n[MAX 1 2 ]\t2\n[MAX 1 2 ]\t{label}\n")
    with _raises(f"{path}:line 3: expected a label 0-9, got {label!r}"):
        ListOpsDataset(tmp_path, "train")


def test_listops_file_that_is_not_utf8_names_the_line(tmp_path):
    from serpent_ssm.data.listops import ListOpsDataset

    (tmp_path / "listops").mkdir()
    path = tmp_path / "listops" / "basic_train.tsv"
    path.write_bytes(b"Source\tTarget\n[MAX 1 2 ]\t2\n[MAX \xff ]\t2\n")
    with _raises(f"{path}:line 3: expected UTF-8 text"):
        ListOpsDataset(tmp_path, "train")


@pytest.mark.parametrize("fault", ["empty", "directory"])
def test_imdb_review_faults_name_the_file(tmp_path, fault):
    from serpent_ssm.data.text import ImdbDataset

    for split in ("train", "test"):
        for label in ("pos", "neg"):
            folder = tmp_path / "aclImdb" / split / label
            folder.mkdir(parents=True)
            (folder / "0_7.txt").write_text("a fine film")
    bad = tmp_path / "aclImdb" / "train" / "pos" / "1_9.txt"
    if fault == "empty":
        bad.write_bytes(b"")
        message = f"{bad}: expected a review, got an empty file"
    else:
        bad.mkdir()
        message = f"{bad}: expected a review file, got a directory"
    with _raises(message):
        ImdbDataset(tmp_path, "train")


def test_pathfinder_binary_metadata_and_bad_splits_name_the_file(tmp_path):
    from serpent_ssm.data.pathfinder import PathfinderDataset, generate_pathfinder, pathfinder_root

    pytest.importorskip("PIL")
    generate_pathfinder(tmp_path, size=32, difficulty="easy", n_train=4, n_val=2, n_test=2, seed=0)
    root = pathfinder_root(tmp_path, 32, "easy")
    splits = json.loads((root / "splits.json").read_text())
    (root / "splits.json").write_text(json.dumps({**splits, "train": [[p] for p in splits["train"]]}))
    with _raises(f"{root / 'splits.json'}: expected 'train' to be a list of image paths (strings)"):
        PathfinderDataset(tmp_path, 32, "easy", "train")
    meta = root / "metadata" / "0.npy"
    meta.write_bytes(b"\x93NUMPY\x01\x00\xff\xfe")
    with _raises(f"{meta}: expected a text metadata file, got non-UTF-8 bytes"):
        PathfinderDataset(tmp_path, 32, "easy", "train")


# ----------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_cannot_be_a_directory(listops_dir, tmp_path, where):
    f = tmp_path / "f"
    f.write_text("x")
    out = f if where == "file" else f / "run"
    message = f"--out {out}: expected a directory, " + ("got a file" if where == "file" else "but a part")
    with _raises(message):
        train(_cfg(listops_dir), out, quiet=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_that_is_not_writable(listops_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with _raises(f"--out {ro}: expected a writable directory"):
        train(_cfg(listops_dir), ro, quiet=True)


def test_resume_with_fewer_steps_than_the_checkpoint(listops_dir, tmp_path):
    train(_cfg(listops_dir, "train.max_steps=10"), tmp_path, quiet=True)
    with _raises("train.max_steps: expected at least 10 (the step of the checkpoint in"):
        train(_cfg(listops_dir, "train.max_steps=5"), tmp_path, resume=True, quiet=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 10


@pytest.mark.parametrize("content", ["", "{trunc", "[1, 2]", '{"task": "listops"}'])
def test_report_on_a_bad_summary_names_the_file(tmp_path, content, capsys):
    (tmp_path / "summary.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"serpent: error: {tmp_path / 'summary.json'}: ") and "Traceback" not in err


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0])
def test_generate_refuses_temperatures_that_are_not_numbers(temperature):
    from serpent_ssm.models import ModelConfig, build_model

    lm = build_model(ModelConfig(name="mamba", head="lm", d_model=8, n_layers=1, vocab_size=20))
    with _raises(f"temperature: expected a finite number >= 0, got {temperature}"):
        lm.generate(torch.tensor([1, 2]), 3, temperature=temperature)


def test_generate_with_a_tiny_temperature_is_greedy():
    from serpent_ssm.models import ModelConfig, build_model

    torch.manual_seed(0)
    lm = build_model(ModelConfig(name="mamba", head="lm", d_model=8, n_layers=1, vocab_size=20))
    prompt = torch.tensor([1, 2, 3])
    assert torch.equal(
        lm.generate(prompt, 8, temperature=1e-45, seed=0), lm.generate(prompt, 8, temperature=0)
    )


def test_generate_bounds_max_new_tokens(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--prompt", "a", "--max-new-tokens", "1000000000000"]) == 2
    assert "--max-new-tokens: expected an integer in [0, 100,000]" in capsys.readouterr().err


def test_eval_of_a_language_model_prints_bits_per_byte(tmp_path, capsys, monkeypatch):
    from serpent_ssm.train import report

    result = {
        "split": "test",
        "model": "best",
        "loss": 1.0,
        "bits_per_byte": 1.4427,
        "perplexity": 2.718,
        "accuracy": 0.5,
        "n": 1000,
    }
    monkeypatch.setattr(report, "evaluate_run", lambda *a: result)
    assert main(["eval", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1.4427 bits per byte, perplexity 2.718" in out and "samples" not in out
