"""Every shipped config loads (default and paper preset), and each serpent-* config has within
10 % of its backbone config's parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serpent_ssm.models import ModelConfig, build_model, count_parameters
from serpent_ssm.train.config import load_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TASK_INPUTS = {  # what the task fills in at run time
    "listops": {"vocab_size": 18, "n_classes": 10},
    "pathfinder": {"d_input": 1, "n_classes": 2},
    "fashion-mnist": {"d_input": 1, "n_classes": 10},
    "imdb": {"vocab_size": 259, "n_classes": 2},
    "aan": {"vocab_size": 259, "n_classes": 2, "head": "retrieval"},
    "cifar": {"d_input": 1, "n_classes": 10},
    "sparse-digits": {"vocab_size": 259, "n_classes": 10},
    "english": {"vocab_size": 259, "n_classes": 259, "head": "lm"},
    "wikitext103": {"vocab_size": 259, "n_classes": 259, "head": "lm"},
}
MODELS = ("mamba", "s4d", "serpent-mamba", "serpent-s4d")


def _params(path: Path, preset: str | None) -> int:
    cfg = load_run_config(path, preset=preset)
    assert cfg.data.task == path.parent.name and cfg.model.name == path.stem
    d = {**cfg.model.to_dict(), **TASK_INPUTS[path.parent.name]}
    with torch.device("meta"):  # count without allocating
        return count_parameters(build_model(ModelConfig.from_dict(d)))


def test_one_config_per_task_and_model():
    found = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.glob("*/*.yaml"))
    assert found == sorted(f"{t}/{m}.yaml" for t in TASK_INPUTS for m in MODELS)


@pytest.mark.parametrize("task", sorted(TASK_INPUTS))
@pytest.mark.parametrize("backbone", ["mamba", "s4d"])
@pytest.mark.parametrize("preset", [None, "paper"])
def test_serpent_matches_its_backbone_within_10_percent(task, backbone, preset):
    base = _params(CONFIGS / task / f"{backbone}.yaml", preset)
    ours = _params(CONFIGS / task / f"serpent-{backbone}.yaml", preset)
    assert abs(ours / base - 1) <= 0.10, (ours, base)


@pytest.mark.parametrize("model", MODELS)
def test_sparse_digits_configs_are_cpu_sized_and_generate_their_data(model):
    cfg = load_run_config(CONFIGS / "sparse-digits" / f"{model}.yaml")
    assert (cfg.model.n_layers, cfg.data.batch_size, cfg.optim.lr) == (2, 32, 2e-3)
    assert cfg.model.d_model == 32  # SeRpEnt's lean non-causal default is as wide as its backbone
    assert cfg.data.generate == {
        "n_train": 20000, "n_val": 1000, "n_test": 1000, "length": 1000, "n_digits": 10, "seed": 0
    }  # fmt: skip
