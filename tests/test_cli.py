"""The `serpent` command line."""

from __future__ import annotations

from serpent_ssm.cli import main
from serpent_ssm.ops.cpu_build import cpu_kernel_available


def test_check_runs_every_model(capsys):
    assert main(["check", "--length", "64", "--d-model", "16", "--layers", "1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("mamba", "s4d", "serpent-mamba", "serpent-s4d"):
        assert f"\n{name} " in out
    assert out.count("finite gradients: True") == 8
    diffs = [float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "step() vs forward()" in line]
    assert len(diffs) == 4 and max(diffs) < 1e-4


def test_bad_check_argument(capsys):
    assert main(["check", "--length", "0"]) == 2
    assert "--length: expected a positive integer, got 0" in capsys.readouterr().err


def test_backends(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    if cpu_kernel_available():
        assert "cpu: cpu, torch, ref (auto -> cpu)\nfused CPU kernel: available\n" in out
    else:
        assert "cpu: torch, ref (auto -> torch)\nfused CPU kernel: " in out


def test_demo_main_job_trains_both_models_and_prints_the_table(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"), "--max-steps", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("| task | model |") :].splitlines()
    assert len(table) == 4 and "| listops | mamba |" in table[2] and "| listops | serpent-mamba |" in table[3]
    assert main(args) == 0  # the generated data is cached: no "generating" the second time
    assert "generating ListOps" not in capsys.readouterr().out


def test_demo_models_match_their_backbones_parameters():
    """The main job compares models at matched parameter counts (within 10 %, as the configs)."""
    import torch

    from serpent_ssm.cli.commands import DEMO_MODELS
    from serpent_ssm.models import ModelConfig, build_model, count_parameters

    def params(name):
        with torch.device("meta"):
            config = ModelConfig(name=name, vocab_size=18, n_classes=10, **DEMO_MODELS[name])
            return count_parameters(build_model(config))

    for name in ("serpent-mamba", "serpent-s4d"):
        ratio = params(name) / params(name.removeprefix("serpent-"))
        assert 0.9 <= ratio <= 1.1, (name, ratio)


def test_train_eval_report_commands(tmp_path, capsys):
    from serpent_ssm.data.listops import generate_listops

    generate_listops(tmp_path / "data", n_train=40, n_val=8, n_test=8, min_len=5, max_len=20)
    common = ["--data-dir", str(tmp_path / "data"), "--max-steps", "2", "--set", "data.batch_size=8"]
    assert main(["train", *common, "--set", "model.d_model=8", "--out", str(tmp_path / "run")]) == 0
    assert main(["eval", str(tmp_path / "run"), "--split", "val"]) == 0
    assert "on val: accuracy" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "| listops | mamba |" in capsys.readouterr().out
    assert main(["train", *common, "--set", "model.d_modle=8"]) == 2
    assert "model.d_modle: unknown key" in capsys.readouterr().err


def test_plot_writes_pngs(tmp_path, capsys):
    import pytest

    pytest.importorskip("matplotlib")
    from serpent_ssm.data.listops import generate_listops

    generate_listops(tmp_path / "data", n_train=40, n_val=8, n_test=8, min_len=5, max_len=20)
    args = ["train", "--data-dir", str(tmp_path / "data"), "--max-steps", "4", "--set", "data.batch_size=8"]
    assert (
        main([*args, "--set", "train.log_every=2", "--set", "model.d_model=8", "--out", str(tmp_path / "r")])
        == 0
    )
    assert main(["plot", str(tmp_path / "r")]) == 0
    for name in ("loss.png", "accuracy.png"):
        assert (tmp_path / "r" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_prints_and_records_the_backbone_parameter_count(tmp_path, capsys):
    """`serpent train .../serpent-mamba.yaml` sizes the sibling mamba.yaml with the same task facts."""
    import json

    import torch

    from serpent_ssm.data.listops import generate_listops
    from serpent_ssm.models import ModelConfig, build_model, count_parameters
    from serpent_ssm.train.config import load_run_config
    from serpent_ssm.train.tasks import task_spec

    generate_listops(tmp_path / "data", n_train=40, n_val=8, n_test=8, min_len=5, max_len=20)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "mamba.yaml").write_text("model: {name: mamba, d_model: 16, n_layers: 2}\n")
    (configs / "serpent-mamba.yaml").write_text("model: {name: serpent-mamba, d_model: 8, n_layers: 1}\n")
    args = ["train", str(configs / "serpent-mamba.yaml"), "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--max-steps", "1", "--set", "data.batch_size=8", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    backbone = {
        **load_run_config(configs / "mamba.yaml").model.to_dict(),
        **task_spec("listops").model_facts(),
    }
    with torch.device("meta"):
        expected = count_parameters(build_model(ModelConfig.from_dict(backbone)))
    assert summary["machine"]["device"] == "cpu" and summary["machine"]["threads"] == torch.get_num_threads()
    ours = summary["parameters"]
    assert summary["compare_parameters"] == {
        "model": "mamba", "source": "mamba.yaml", "parameters": expected, "ratio": ours / expected
    }  # fmt: skip
    ratio = f"{ours / expected:.2f}"
    assert f"serpent-mamba: {ours:,} parameters (mamba from mamba.yaml: {expected:,}, ratio {ratio})" in err
