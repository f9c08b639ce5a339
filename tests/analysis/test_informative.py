"""Grid points on informative positions: the counts on a known grid, against a loop on random
grids, and ``serpent analyze informative`` on a tiny trained sparse-digits run."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from serpent_ssm.analysis.informative import branch_counts, informative_shares
from serpent_ssm.models import ModelConfig, build_model

from tests.helpers import right_padding_mask

HAVE_PLOTS = importlib.util.find_spec("matplotlib") is not None


def _fixed_grid_model():
    """Two SeRpEnt layers with ``Δ ≡ κ``: non-causal, grid point ``k`` of a row of ``n`` real
    elements selects the first position whose time ``(l + 1)·κ·ceil(κn)/(κn)`` reaches ``k``."""
    torch.manual_seed(0)
    serpent = {"rates": [0.5, 0.25], "interval_bounds": "fixed"}
    return build_model(
        ModelConfig(name="serpent-mamba", d_model=8, n_layers=2, vocab_size=259, serpent=serpent)
    )


def test_shares_on_a_known_grid():
    # row 0: 8 real positions, informative {1, 2}; row 1: 6 real, informative {0, 5} (7 is padding)
    # κ = 0.5 selects {1, 3, 5, 7} and {1, 3, 5}; κ = 0.25 selects {3, 7} and {2, 5}
    inputs = torch.randint(3, 259, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = right_padding_mask([8, 6], 8)
    informative = torch.zeros(2, 8, dtype=torch.bool)
    informative[0, [1, 2]] = True
    informative[1, [0, 5, 7]] = True
    result = informative_shares(_fixed_grid_model(), inputs, informative, mask)
    assert (result["n_sequences"], result["n_positions"], result["n_informative"]) == (2, 14, 4)
    assert result["sequence_share"] == 4 / 14
    assert list(result["branches"]) == [
        "layer0/rate0.5",
        "layer0/rate0.25",
        "layer1/rate0.5",
        "layer1/rate0.25",
    ]
    for layer in (0, 1):
        half, quarter = (
            result["branches"][f"layer{layer}/rate0.5"],
            result["branches"][f"layer{layer}/rate0.25"],
        )
        assert half == {
            "layer": layer, "rate": 0.5, "grid_points": 7, "on_informative": 2, "covered": 2,
            "grid_share": 2 / 7, "enrichment": pytest.approx(1.0), "informative_covered": 0.5,
        }  # fmt: skip
        assert quarter == {
            "layer": layer, "rate": 0.25, "grid_points": 4, "on_informative": 1, "covered": 1,
            "grid_share": 0.25, "enrichment": pytest.approx(0.25 / (4 / 14)), "informative_covered": 0.25,
        }  # fmt: skip
    one_at_a_time = informative_shares(_fixed_grid_model(), inputs, informative, mask, batch_size=1)
    assert one_at_a_time == result


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"^informative: expected a mask of shape \(2, 8\), got \(2, 7\)$"):
        informative_shares(
            _fixed_grid_model(), torch.ones(2, 8, dtype=torch.long), torch.zeros(2, 7, dtype=bool)
        )


@st.composite
def _grids(draw):
    b, length, slots = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 10))
    index = torch.tensor(draw(st.lists(st.lists(st.integers(0, length - 1), min_size=slots, max_size=slots),
                                       min_size=b, max_size=b)))  # fmt: skip
    counts = draw(st.lists(st.integers(0, slots), min_size=b, max_size=b))
    valid = torch.arange(slots)[None, :] < torch.tensor(counts)[:, None]
    informative = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=length, max_size=length),
                                             min_size=b, max_size=b)))  # fmt: skip
    return index, valid, informative


@given(_grids())
def test_counts_equal_a_loop_repeated_positions_included(grid):
    index, valid, informative = grid
    infos = {3: {"branches": [{"rate": 0.5, "index": index, "valid": valid}]}}
    counts = branch_counts(infos, informative)["layer3/rate0.5"]
    on, selected = 0, set()
    for row in range(index.shape[0]):
        for k in range(index.shape[1]):
            if valid[row, k]:
                on += bool(informative[row, index[row, k]])
                selected.add((row, int(index[row, k])))
    covered = sum(bool(informative[r, p]) for r, p in selected)
    assert counts == {
        "layer": 3, "rate": 0.5, "grid_points": int(valid.sum()), "on_informative": on, "covered": covered
    }  # fmt: skip


def _train_tiny_run(tmp_path, monkeypatch):
    """A 2-step serpent-mamba run on a tiny sparse-digits set; returns the run directory and the
    model's weights as the training loop built them (before its first step)."""
    import serpent_ssm.train.loop as loop
    from serpent_ssm.cli import main

    built = {}
    make_optimizer = loop.make_optimizer

    def spy(model, cfg):
        built.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return make_optimizer(model, cfg)

    monkeypatch.setattr(loop, "make_optimizer", spy)
    run = tmp_path / "run"
    args = [
        "train",
        "--set", "data.task=sparse-digits", "--set", f"data.data_dir={tmp_path / 'data'}",
        "--set", "data.generate={n_train: 16, n_val: 8, n_test: 4, length: 40, n_digits: 3}",
        "--set", "model.name=serpent-mamba", "--set", "model.d_model=8", "--set", "model.n_layers=1",
        "--set", "data.batch_size=8", "--set", "train.seed=5", "--max-steps", "2", "--out", str(run),
    ]  # fmt: skip
    assert main(args) == 0
    return run, built


def test_cli_on_a_tiny_run(tmp_path, monkeypatch, capsys):
    from serpent_ssm.analysis.informative import _fresh_model
    from serpent_ssm.cli import main
    from serpent_ssm.train.run_files import read_run_config

    run, built = _train_tiny_run(tmp_path, monkeypatch)
    fresh = _fresh_model(read_run_config(run)).state_dict()  # the start: the loop's step-0 weights
    assert fresh.keys() == built.keys() and all(torch.equal(fresh[k], built[k]) for k in built)
    capsys.readouterr()
    assert main(["analyze", "informative", str(run), "--n", "6", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "informative.json").read_text())
    assert {k: result[k] for k in ("task", "split", "which", "n")} == {
        "task": "sparse-digits", "split": "val", "which": "best", "n": 6
    }  # fmt: skip
    for when in ("start", "end"):
        r = result[when]
        assert (r["n_positions"], r["n_informative"], r["sequence_share"]) == (240, 18, 18 / 240)
        assert list(r["branches"]) == ["layer0/rate0.5", "layer0/rate0.3", "layer0/rate0.2"]
        for b, count in zip(r["branches"].values(), (20, 12, 8), strict=True):  # ceil(κ·40) per sequence
            assert b["grid_points"] == 6 * count and 0 <= b["on_informative"] <= b["grid_points"]
            assert b["grid_share"] == b["on_informative"] / b["grid_points"]
    assert "6 val sequences of sparse-digits: 0.0750 of the positions are informative" in out
    assert "layer0/rate0.3   grid points on informative positions: start " in out
    if HAVE_PLOTS:
        assert (tmp_path / "out" / "informative.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["analyze", "informative", str(run), "--n", "0"]) == 2
    assert capsys.readouterr().err == "serpent: error: --n: expected a positive integer, got 0\n"


def test_cli_refuses_a_task_without_known_informative_positions(tmp_path, capsys):
    from serpent_ssm.cli import main
    from serpent_ssm.train.config import RunConfig
    from serpent_ssm.train.run_files import write_run_config

    write_run_config(tmp_path, RunConfig.from_dict({"data": {"task": "listops"}}))
    assert main(["analyze", "informative", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "serpent: error: run_dir: expected a run of a task with known informative positions "
        "(sparse-digits), got a run of 'listops'\n"
    )
