"""The `serpent` command line."""

from __future__ import annotations

from serpent_ssm.cli import main
from serpent_ssm.ops.scan_cpu import cpu_kernel_available


def test_demo_runs_every_model(capsys):
    assert main(["demo", "--length", "64", "--d-model", "16", "--layers", "1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("mamba", "s4d", "serpent-mamba", "serpent-s4d"):
        assert f"\n{name} " in out
    assert out.count("finite gradients: True") == 8
    diffs = [float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "step() vs forward()" in line]
    assert len(diffs) == 4 and max(diffs) < 1e-4


def test_bad_demo_argument(capsys):
    assert main(["demo", "--length", "0"]) == 2
    assert "--length: expected a positive integer, got 0" in capsys.readouterr().err


def test_backends(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    if cpu_kernel_available():
        assert "cpu: cpu, torch, ref (auto -> cpu)\nfused CPU kernel: available\n" in out
    else:
        assert "cpu: torch, ref (auto -> torch)\nfused CPU kernel: " in out
