"""The intervals-vs-information report on a tiny model: fields, shapes and the shuffled control."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from serpent_ssm.analysis.report import analyze_intervals, analyze_run
from serpent_ssm.models.config import ModelConfig, build_model, save_pretrained

TEXT = b"the cat sat on the mat; the dog sat on the log. " * 6


@pytest.mark.parametrize("name", ["mamba", "serpent-mamba"])
def test_report_fields(name):
    torch.manual_seed(0)
    lm = build_model(ModelConfig(name=name, head="lm", d_model=16, n_layers=1, vocab_size=259, causal=True))
    result = analyze_intervals(lm, TEXT, TEXT * 2, n_resamples=50)
    assert result["n_bytes"] == len(TEXT)
    keys = list(result["intervals"])
    assert keys == (["layer0"] if name == "mamba" else ["layer0/rate0.5", "layer0/rate0.3", "layer0/rate0.2"])
    entry = result["intervals"][keys[0]]
    for sig in ("model_surprisal", "ngram3_surprisal"):
        r = entry[sig]
        assert r["n"] == len(TEXT) - 1 and -1 <= r["pearson"] <= 1
        assert r["pearson_ci"][0] <= r["pearson_ci"][1]
        assert abs(entry[f"{sig}_shuffled"]["spearman"]) < 0.3  # the control shows no relation


def test_run_directory_and_errors(tmp_path):
    lm = build_model(ModelConfig(name="mamba", head="lm", d_model=8, n_layers=1, vocab_size=259, causal=True))
    save_pretrained(lm, tmp_path / "run" / "best")
    path = analyze_run(tmp_path / "run", TEXT, TEXT, n_resamples=20)
    assert "layer0" in json.loads(path.read_text())["intervals"]
    if importlib.util.find_spec("matplotlib"):
        for name in ("intervals_scatter.png", "intervals_along_text.png"):
            assert (tmp_path / "run" / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"^text: expected at least 4 bytes, got 2$"):
        analyze_intervals(lm, b"ab", TEXT)
    clf = build_model(ModelConfig(name="mamba", d_model=8, n_layers=1, vocab_size=10))
    save_pretrained(clf, tmp_path / "clf" / "best")
    with pytest.raises(ValueError, match=r"^run_dir: expected a language-model run, got a 'classify' model$"):
        analyze_run(tmp_path / "clf", TEXT, TEXT)


def test_analyze_command(tmp_path, capsys):
    from serpent_ssm.cli import main

    lm = build_model(ModelConfig(name="mamba", head="lm", d_model=8, n_layers=1, vocab_size=259, causal=True))
    save_pretrained(lm, tmp_path / "run" / "best")
    (tmp_path / "in.txt").write_bytes(TEXT)
    assert (
        main(
            [
                "analyze",
                "intervals",
                str(tmp_path / "run"),
                "--input",
                str(tmp_path / "in.txt"),
                "--resamples",
                "20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "layer0           vs model_surprisal" in out
        and (tmp_path / "run" / "intervals_analysis.json").is_file()
    )
