"""The training loop: every model learns, resume is exact, checkpoints survive corruption, DDP
equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from serpent_ssm.models import MODEL_NAMES, from_pretrained
from serpent_ssm.models.config import FORMAT_VERSION
from serpent_ssm.train.batches import batch_indices
from serpent_ssm.train.config import load_run_config
from serpent_ssm.train.loop import train
from serpent_ssm.train.metrics_log import Window
from serpent_ssm.train.report import evaluate_run, report_table
from serpent_ssm.train.run_files import code_commit, read_run_config


def _cfg(data_dir, *extra):
    return load_run_config(
        None,
        [
            f"data.data_dir={data_dir}",
            "data.batch_size=16",
            "data.eval_batch_size=16",
            "model.d_model=16",
            "model.n_layers=1",
            "optim.lr=3e-3",
            "optim.warmup_steps=2",
            "train.max_steps=20",
            "train.log_every=5",
            "train.eval_every=10",
            "train.checkpoint_every=5",
            *extra,
        ],
    )


def _train_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_learns_in_20_steps(listops_dir, tmp_path, name):
    cfg = _cfg(listops_dir, f"model.name={name}", "data.limit_train=32", "optim.lr=1e-2")
    losses = []
    summary = train(cfg, tmp_path / name, on_step=lambda step, loss, model: losses.append(loss), quiet=True)
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses
    assert summary["model"] == name and summary["parameters"] > 0
    for part in ("best", "final"):
        assert (tmp_path / name / part / "model.safetensors").is_file()


def test_same_seed_same_run(listops_dir, tmp_path):
    cfg = _cfg(listops_dir, "train.max_steps=10")
    train(cfg, tmp_path / "a", quiet=True)
    train(cfg, tmp_path / "b", quiet=True)
    assert _train_losses(tmp_path / "a") == _train_losses(tmp_path / "b")


class _Crash(Exception):
    pass


def _crash_at(n):
    def hook(step, loss, model):
        if step == n:
            raise _Crash

    return hook


def test_resume_continues_exactly(listops_dir, tmp_path):
    cfg = _cfg(listops_dir, "model.name=serpent-mamba", "model.dropout=0.1", "train.max_steps=30")
    train(cfg, tmp_path / "full", quiet=True)
    with pytest.raises(_Crash):  # killed at step 17; the last checkpoint is step 15
        train(cfg, tmp_path / "cut", on_step=_crash_at(17), quiet=True)
    train(cfg, tmp_path / "cut", resume=True, quiet=True)
    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "full")
    full = from_pretrained(tmp_path / "full/final").state_dict()
    cut = from_pretrained(tmp_path / "cut/final").state_dict()
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_resume_with_a_half_full_logging_window(listops_dir, tmp_path):
    """Checkpoints at 5 and 10, log lines every 4 steps: the window saved at 10 holds steps 9-10."""
    cfg = _cfg(listops_dir, "train.log_every=4", "train.max_steps=14")
    train(cfg, tmp_path / "full", quiet=True)
    with pytest.raises(_Crash):
        train(cfg, tmp_path / "cut", on_step=_crash_at(11), quiet=True)
    train(cfg, tmp_path / "cut", resume=True, quiet=True)
    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "full")


def test_window_add_record_reset_and_the_checkpoint_format():
    window = Window()
    window.add(2.0, correct=3, samples=4, tokens=40, grad_norm=3.0, clipped=True)
    window.add(1.0, correct=1, samples=4, tokens=40, grad_norm=0.5, clipped=False)
    record = window.record(step=7, lr=0.5)
    assert {k: record[k] for k in ("step", "split", "loss", "accuracy", "lr", "grad_norm", "clipped")} == {
        "step": 7, "split": "train", "loss": 1.5, "accuracy": 0.5, "lr": 0.5, "grad_norm": 1.75,
        "clipped": 0.5,
    }  # fmt: skip
    saved = window.to_tensor()
    assert saved.dtype == torch.float64 and saved.tolist() == [12.0, 4.0, 8.0, 80.0, 2.0, 3.5, 1.0]
    assert Window.from_tensor(saved).record(7, 0.5).keys() == record.keys()
    old = torch.tensor([12.0, 4.0, 8.0, 80.0], dtype=torch.float64)  # as earlier versions saved it
    resumed = Window.from_tensor(old)
    assert resumed.record(7, 0.5)["loss"] == 1.5 and "grad_norm" not in resumed.record(7, 0.5)
    resumed.add(1.0, correct=0, samples=8, tokens=80, grad_norm=2.0, clipped=True)
    assert {k: resumed.record(9, 0.5)[k] for k in ("loss", "grad_norm", "clipped")} == {
        "loss": 1.25, "grad_norm": 2.0, "clipped": 1.0
    }  # fmt: skip
    window.reset()
    assert window.to_tensor().tolist() == [0.0] * 7
    with pytest.raises(
        ValueError,
        match=r"^window: expected a \(7,\) tensor \[loss_sum, correct, samples, tokens, steps, "
        r"grad_norm_sum, clipped\] or an older checkpoint's \(4,\) one, got \(3,\)$",
    ):
        Window.from_tensor(torch.zeros(3, dtype=torch.float64))


def test_training_lines_log_the_gradient_norm_before_clipping(listops_dir, tmp_path):
    """A clip far below the norms clips every step and logs the unclipped norm; with no clip the
    same first step logs the same norm and nothing clipped."""
    lines = {}
    for name, clip in (("tight", "optim.grad_clip=1e-6"), ("none", "optim.grad_clip=null")):
        train(_cfg(listops_dir, clip, "train.log_every=1", "train.max_steps=2"), tmp_path / name, quiet=True)
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        lines[name] = [r for r in map(json.loads, rows) if r["split"] == "train"]
    assert [r["clipped"] for r in lines["tight"]] == [1.0, 1.0]
    assert [r["clipped"] for r in lines["none"]] == [0.0, 0.0]
    assert all(r["grad_norm"] > 1e-3 for r in lines["tight"] + lines["none"])
    assert lines["tight"][0]["grad_norm"] == pytest.approx(lines["none"][0]["grad_norm"], rel=1e-5)


def test_config_json_records_the_code_commit_and_reads_back(listops_dir, tmp_path):
    cfg = _cfg(listops_dir, "train.max_steps=2")
    train(cfg, tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["code_commit"] == code_commit()
    assert saved["model"]["format_version"] == FORMAT_VERSION
    assert code_commit() is None or len(code_commit()) in (40, 64)
    assert code_commit(tmp_path) is None  # not a git checkout
    assert read_run_config(tmp_path / "run") == cfg
    train(_cfg(listops_dir, "train.max_steps=3"), tmp_path / "run", resume=True, quiet=True)  # same key


@pytest.mark.parametrize(
    ("task", "era", "want"),
    [  # (share_backbone, mix, cell_proj, init) of the model that ran
        ("english", "0.3.0", (False, "dense", True, "identity")),  # causal: separate backbones then
        ("listops", "0.3.0", (True, "gates", False, "identity")),  # non-causal: the lean mixer then
        ("english", "0.2.0", (False, "dense", True, "identity")),
        ("listops", "0.2.0", (False, "dense", True, "identity")),
    ],
)
def test_run_configs_of_earlier_formats_read_as_the_model_that_ran(tmp_path, task, era, want):
    """A run's config.json written before 0.4.0 has no model format_version: read_run_config tells
    the format from the keys and migrates, so analysis and evaluation rebuild the model that ran."""
    record = load_run_config(None, [f"data.task={task}", "model.name=serpent-mamba"]).to_dict()
    serpent = record["model"]["serpent"]
    serpent["init"] = "identity"  # written explicitly before 0.4.0
    for key in ("share_backbone", "mix", "cell_proj"):
        if era == "0.3.0":
            serpent[key] = None  # mode-dependent in 0.3.0
        else:
            del serpent[key]  # not written yet in 0.2.0
    (tmp_path / "config.json").write_text(json.dumps({**record, "code_commit": None}))
    model = read_run_config(tmp_path).model
    got = (model.serpent.share_backbone, model.serpent.mix, model.serpent.cell_proj, model.serpent.init)
    assert got == want


def test_corrupt_checkpoint_falls_back_to_the_previous(listops_dir, tmp_path):
    cfg = _cfg(listops_dir)
    with pytest.raises(_Crash):
        train(cfg, tmp_path / "run", on_step=_crash_at(12), quiet=True)  # checkpoints at 5 and 10
    last = tmp_path / "run/checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match=r"skipped a bad checkpoint, resuming from .*prev\.pt \(step 5\)"):
        train(cfg, tmp_path / "run", resume=True, quiet=True)
    train(cfg, tmp_path / "ref", quiet=True)
    assert _train_losses(tmp_path / "run") == _train_losses(tmp_path / "ref")


def test_resume_refuses_another_config_and_fresh_run_refuses_old_dir(listops_dir, tmp_path):
    train(_cfg(listops_dir, "train.max_steps=5"), tmp_path / "run", quiet=True)
    with pytest.raises(ValueError, match="holds a run already; pass --resume"):
        train(_cfg(listops_dir, "train.max_steps=5"), tmp_path / "run", quiet=True)
    with pytest.raises(ValueError, match=r"another config \(optim\.lr: expected 0\.003 as there, got 0\.01;"):
        train(_cfg(listops_dir, "optim.lr=1e-2"), tmp_path / "run", resume=True, quiet=True)


def test_eval_and_report(listops_dir, tmp_path):
    for name in ("mamba", "serpent-mamba"):
        train(_cfg(listops_dir, f"model.name={name}", "train.max_steps=5"), tmp_path / name, quiet=True)
    result = evaluate_run(tmp_path / "mamba", "test")
    assert result["n"] == 16 and 0 <= result["accuracy"] <= 1
    table = report_table([tmp_path / "mamba", tmp_path / "serpent-mamba"]).splitlines()
    assert table[0].startswith("| task | model | parameters | steps | metric |") and len(table) == 4
    assert "| listops | mamba | " in table[2] and "| accuracy | " in table[2]
    assert f"| {result['accuracy']:.3f} |" in table[2]
    assert "| listops | serpent-mamba |" in table[3] and "| – |" in table[3]  # not evaluated on test


def test_missing_data_fails_before_training(tmp_path):
    cfg = load_run_config(None, [f"data.data_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"listops: missing: expected basic_\{train,val,test\}\.tsv"):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_batches_split_evenly_over_ranks():
    single = batch_indices(40, 8, seed=1, start_step=0)
    ranks = [batch_indices(40, 8, seed=1, start_step=0, rank=r, world=2) for r in range(2)]
    for _ in range(12):  # across epoch boundaries
        assert next(single) == next(ranks[0]) + next(ranks[1])


# ----------------------------------------------------------------------------- DDP (gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    cfg = _cfg(data_dir, "train.max_steps=6", "train.eval_every=6", "model.name=serpent-mamba")

    def save(step, loss, model):
        if step == 6:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.pt")

    try:
        train(cfg, f"{out}/run", on_step=save, quiet=True)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_equal_one_process(listops_dir, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(listops_dir), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    single = {}

    def keep(step, loss, model):
        single.update({k: v.clone() for k, v in model.state_dict().items()})

    train(
        _cfg(listops_dir, "train.max_steps=6", "train.eval_every=6", "model.name=serpent-mamba"),
        tmp_path / "single",
        on_step=keep,
        quiet=True,
    )
    for k in r0:
        torch.testing.assert_close(r0[k], single[k], rtol=1e-4, atol=1e-5, msg=k)
