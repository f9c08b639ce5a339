"""Training-step time and memory against sequence length: the Pathfinder classifiers of
configs/pathfinder/ (mamba and serpent-mamba at matched parameters, bidirectional) on pixel
sequences of 1K, 4K and 16K (Pathfinder-32, -64 and Path-X / -128 sizes).

    python benchmarks/scale.py                  # batch 2, lengths 1024 4096 16384, 3 timed steps

One step = forward, cross-entropy, backward, AdamW update (what `serpent train` does). Time: best of
``--repeats`` steps after one warm-up step; memory: peak extra resident memory of one step over the
model and optimizer state (one subprocess per row, see benchmarks/_common.py). The table gives
each length's cost per 1K pixels relative to 1K: 1.00 means linear in length.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import best_time, peak_extra_mb, run_worker

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "pathfinder"


def worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from serpent_ssm.models import ModelConfig, build_model, count_parameters
    from serpent_ssm.train.config import load_run_config
    from serpent_ssm.train.tasks import task_spec

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_run_config(CONFIGS / f"{args.worker}.yaml")
    model = build_model(
        ModelConfig.from_dict({**cfg.model.to_dict(), **task_spec("pathfinder").model_facts()})
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(args.batch, args.length, 1)
    y = torch.randint(0, 2, (args.batch,))

    def step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # allocates the optimizer state
    if args.what == "memory":
        return {"peak_mb": peak_extra_mb(step), "params": count_parameters(model)}
    return {"s": best_time(step, args.repeats)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--models", nargs="+", default=["mamba", "serpent-mamba"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--what", default="time", help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    args.threads = args.threads or torch.get_num_threads()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(
        f"# one training step (fwd + loss + bwd + AdamW) of configs/pathfinder/<model>.yaml, batch "
        f"{args.batch}, {args.threads} threads, torch {torch.__version__}, best of {args.repeats}\n"
    )
    print("| model | params | L | step s | ms per 1K pixels (vs 1K) | peak extra MB | MB per 1K (vs 1K) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        first = None
        for length in args.lengths:
            common = ["--worker", name, "--length", str(length), "--batch", str(args.batch)]
            common += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
            t, m = run_worker(__file__, common, "time"), run_worker(__file__, common, "memory")
            if t is None or m is None:
                print(f"| {name} | | {length} | failed | | | |", flush=True)
                continue
            per_k = (1000 * t["s"] / (length / 1024), m["peak_mb"] / (length / 1024))
            first = first or per_k
            ratios = (per_k[0] / first[0], per_k[1] / first[1])
            print(
                f"| {name} | {m['params']:,} | {length} | {t['s']:.3f} | {per_k[0]:.1f} ({ratios[0]:.2f}) "
                f"| {m['peak_mb']:.0f} | {per_k[1]:.1f} ({ratios[1]:.2f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
