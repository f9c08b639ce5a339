"""Language modelling through the same loop: byte windows, bits per byte with the state carried."""

from __future__ import annotations

import math

import pytest
import torch

from serpent_ssm.train.config import load_run_config
from serpent_ssm.train.evaluation import evaluate_lm
from serpent_ssm.train.loop import train
from serpent_ssm.train.report import evaluate_run

from tests.helpers import causal_lm, wake_branches

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n").encode()


@pytest.fixture(scope="module")
def wikitext_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wt")
    folder = root / "wikitext-103-raw"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"wiki.{split}.raw").write_bytes(TEXT * (4 if split == "train" else 1))
    return root


@pytest.mark.parametrize("name", ["mamba", "serpent-mamba"])
def test_lm_learns_and_reports_bits_per_byte(wikitext_dir, tmp_path, name):
    cfg = load_run_config(
        None,
        [
            "data.task=wikitext103",
            f"data.data_dir={wikitext_dir}",
            "data.seq_len=64",
            "data.batch_size=8",
            "data.eval_batch_size=4",
            "data.limit_eval=600",
            f"model.name={name}",
            "model.d_model=32",
            "model.n_layers=1",
            "optim.lr=1e-2",
            "optim.warmup_steps=2",
            "train.max_steps=30",
            "train.eval_every=30",
            "train.log_every=10",
            "train.checkpoint_every=30",
        ],
    )
    losses = []
    summary = train(cfg, tmp_path / name, on_step=lambda s, loss, m: losses.append(loss), quiet=True)
    assert summary["metric"] == "bits_per_byte"
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    result = evaluate_run(tmp_path / name, "test")
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2))
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["bits_per_byte"] < 8 * 0.7  # far below uniform over bytes
    assert result["n"] >= 600 - 4


@pytest.mark.parametrize("name", ["mamba", "serpent-mamba"])
def test_evaluation_does_not_depend_on_the_window(name):
    """Carrying the state makes window boundaries invisible: same loss for any window size."""
    torch.manual_seed(0)
    lm = wake_branches(causal_lm(name, 259, 16, 1))  # the compressed branches show
    stream = torch.frombuffer(bytearray(TEXT[:301]), dtype=torch.uint8)
    whole = evaluate_lm(lm, stream, seq_len=1000, batch_size=2)
    pieces = evaluate_lm(lm, stream, seq_len=37, batch_size=2)
    assert whole["n"] == pieces["n"] == 300
    assert pieces["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_generate_command(wikitext_dir, tmp_path, capsys):
    from serpent_ssm.cli import main

    args = ["train", "--set", "data.task=wikitext103", "--data-dir", str(wikitext_dir), "--max-steps", "3"]
    args += ["--set", "data.seq_len=32", "--set", "data.batch_size=4", "--set", "data.limit_eval=100"]
    assert (
        main([*args, "--set", "model.d_model=8", "--set", "model.causal=true", "--out", str(tmp_path / "r")])
        == 0
    )
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "r"), "--prompt", "the quick", "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the quick") and len(out.encode()) >= len("the quick") + 1
    assert main(["generate", str(tmp_path / "r"), "--prompt", ""]) == 2
    assert "--prompt: expected at least one character, got an empty prompt" in capsys.readouterr().err


def test_serpent_evaluation_carries_the_state_through_forward(monkeypatch):
    """A SeRpEnt LM is scored window by window with the state carried through ``forward``: no
    step() at all, the same loss for any window size, and the training loop's validation
    (exact=False) scores exactly what ``serpent eval`` does."""
    torch.manual_seed(0)
    lm = wake_branches(causal_lm("serpent-mamba", 259, 16, 1))
    stream = torch.frombuffer(bytearray(TEXT[:301]), dtype=torch.uint8)
    steps = []
    original = lm.step
    monkeypatch.setattr(lm, "step", lambda *a: steps.append(1) or original(*a))
    whole = evaluate_lm(lm, stream, seq_len=1000, batch_size=2)
    for seq_len, exact in ((37, True), (37, False), (1000, False)):
        other = evaluate_lm(lm, stream, seq_len=seq_len, batch_size=2, exact=exact)
        assert other["n"] == whole["n"] == 300
        assert other["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert not steps
