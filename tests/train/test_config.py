"""Run configs: YAML, presets, --set overrides, and errors that name the key."""

from __future__ import annotations

import re

import pytest

from serpent_ssm.train.config import load_run_config


def test_yaml_preset_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {name: serpent-mamba, d_model: 32, serpent: {rates: [0.5, 0.25]}}\n"
        "optim: {lr: 1e-3}\n"
        "presets:\n  paper: {model: {d_model: 256}, train: {max_steps: 100000}}\n"
    )
    cfg = load_run_config(path, ["optim.betas=[0.9, 0.95]", "data.generate={n_train: 10}"])
    assert cfg.model.d_model == 32 and cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.model.serpent.rates == (0.5, 0.25) and cfg.data.generate == {"n_train": 10}
    paper = load_run_config(path, ["model.n_layers=6"], preset="paper")
    assert paper.model.d_model == 256 and paper.train.max_steps == 100000 and paper.model.n_layers == 6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.d_modle=3"],
            "model.d_modle: unknown key, expected one of backbone, causal, d_input, d_model",
        ),
        (["optim.lr=fast"], "optim.lr: expected a float, got 'fast'"),
        (["train.max_steps=1.5"], "train.max_steps: expected an integer, got 1.5"),
        (["train.bf16=3"], "train.bf16: expected a boolean, got 3"),
        (["model.name=gpt"], "model.name: expected one of mamba, s4d, serpent-mamba, serpent-s4d, got 'gpt'"),
        (
            ["data.task=mnist"],
            "data.task: expected one of listops, pathfinder, fashion-mnist, imdb, aan, cifar",
        ),
        (["data.batch_size=0"], "data.batch_size: expected a positive integer, got 0"),
        (["optim.betas=[0.9]"], "optim.betas: expected a list of 2 numbers, got [0.9]"),
        (["trian.seed=1"], "trian: unknown key, expected one of data, model, optim, train"),
        (["lr"], "--set: expected KEY.PATH=VALUE, got 'lr'"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_run_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(
        ValueError, match=re.escape(f"{tmp_path / 'x.yaml'}: missing: expected a YAML run config")
    ):
        load_run_config(tmp_path / "x.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping at the top level, got list"):
        load_run_config(tmp_path / "list.yaml")
    (tmp_path / "p.yaml").write_text("presets: {paper: {}}\n")
    with pytest.raises(ValueError, match=r"^--preset: expected one of paper, got 'huge'$"):
        load_run_config(tmp_path / "p.yaml", preset="huge")
