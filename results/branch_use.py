"""How much a trained SeRpEnt model uses its compressed branches: per SeRpEnt layer, the branch
gates' sizes (``mix="gates"``) and, on validation windows, each branch's grid points and mean
interval.

    python results/branch_use.py RUN_DIR [--windows 8] [--which best]

RUN_DIR is a ``serpent train`` run folder (its ``best/`` or ``final/`` model is read). The
windows are ``--windows`` rows of the task's ``seq_len`` from the validation split, 5,000
positions apart (byte-level LM tasks), or the first ``--windows`` validation samples
(classifiers). Prints one markdown table. The mean interval is the resampler's ``Δ``; in
non-causal mode that is before the rescaling that gives each row exactly ``ceil(κ·n)`` grid
points, so only its pattern along the row matters there, not its size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from serpent_ssm.analysis.intervals import record_resampling
from serpent_ssm.models.io import from_pretrained
from serpent_ssm.modules.serpent import BranchGates


def _windows(run: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs (n, L)`` and ``mask (n, L)`` of the run's validation split, encoded as in training."""
    from serpent_ssm.analysis.report import (
        _batch,
        _run_data,
        lm_split_bytes,
        samples_from_dataset,
        samples_from_text,
    )
    from serpent_ssm.train.run_files import read_run_config

    task, vocab = _run_data(run)
    if task.spec.is_lm:
        length = read_run_config(run).data.seq_len
        texts = (lm_split_bytes(task, "val", i * 5000, i * 5000 + length) for i in range(n))
        samples = [s for text in texts for s in samples_from_text(text)]
    else:
        samples = samples_from_dataset(task.val, n, vocab)
    return _batch(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--which", choices=["best", "final"], default="best")
    args = parser.parse_args()
    model = from_pretrained(args.run_dir / args.which).eval()
    gates = [m for m in model.modules() if isinstance(m, BranchGates)]
    x, mask = _windows(args.run_dir, args.windows)
    with torch.no_grad():
        infos = record_resampling(model, x, mask)
    length = x.shape[1]
    print(f"{args.run_dir} ({args.which}), {args.windows} validation rows of {length}")
    print()
    print("| layer | branch | mean abs gate (max) | grid points per row (min–max) | mean interval |")
    print("|---|---|---|---|---|")
    for k, (layer, info) in enumerate(sorted(infos.items())):
        weight = gates[k].weight.detach().abs() if k < len(gates) else None
        for j, b in enumerate(info["branches"]):
            counts = b["counts"].float()
            gate = "—" if weight is None else f"{weight[j].mean():.3f} ({weight[j].max():.3f})"
            print(
                f"| {layer} | κ = {b['rate']} | {gate} | {counts.mean():.1f} "
                f"({int(counts.min())}–{int(counts.max())}) | {b['delta'].float().mean():.3f} |"
            )
        if weight is not None and weight.shape[0] > len(info["branches"]):
            print(f"| {layer} | full | {weight[-1].mean():.3f} ({weight[-1].max():.3f}) | {length} | 1 |")
    summary = args.run_dir / "summary.json"
    if summary.exists():
        print()
        print(f"run: {json.loads(summary.read_text()).get('best_val')} best validation")


if __name__ == "__main__":
    main()
