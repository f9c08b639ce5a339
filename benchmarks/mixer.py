"""Benchmark the SeRpEnt mixer against one Mamba mixer of the same width, in one run.

    python benchmarks/mixer.py                      # B=4, d_model=128, L in 1K, 4K, 16K, causal
    python benchmarks/mixer.py --non-causal         # both bidirectional

SeRpEnt uses rates 0.5/0.3/0.2 (three branches that together process about L elements) with a
Mamba backbone, at its defaults (causal: with the full branch, the plain backbone on the whole
sequence as a fourth branch) and with the full branch toggled (causal: without it; non-causal:
with it); the baseline is one Mamba mixer on the full sequence; all use the same scan backend.
Forward+backward time (best of --repeats after a warm-up) and peak extra memory (one subprocess
per row, see benchmarks/_common.py), with the ratio SeRpEnt / Mamba.
"""

from __future__ import annotations

import argparse
import json

from _common import best_time, peak_extra_mb, run_worker

# row name -> (model name, SeRpEnt options); "toggled" flips the full branch from the mode's default
VARIANTS = {
    "mamba": ("mamba", None),
    "serpent-mamba": ("serpent-mamba", {}),
    "serpent-mamba-no-full-branch": ("serpent-mamba", {"include_full_branch": False}),
    "serpent-mamba-full-branch": ("serpent-mamba", {"include_full_branch": True}),
}


def worker(args: argparse.Namespace) -> dict:
    import torch

    from serpent_ssm.models import make_mixer_factory

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    causal = not args.non_causal
    bkw = {"backend": args.backend}
    name, serpent = VARIANTS[args.worker]
    model = make_mixer_factory(
        name, args.d_model, causal=causal, backbone_kwargs=bkw, serpent_kwargs=serpent
    )(0)
    x = torch.randn(args.batch, args.lengths[0], args.d_model, requires_grad=True)

    def step():
        y = model(x)
        y.backward(torch.ones_like(y))
        model.zero_grad(set_to_none=True)
        x.grad = None

    if args.what == "memory":
        return {"peak_mb": peak_extra_mb(step), "params": sum(p.numel() for p in model.parameters())}
    step()
    return {"s": best_time(step, args.repeats)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--backend", default="auto")
    p.add_argument("--non-causal", action="store_true", help="bidirectional backbones (classification)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--what", default="time", help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    from serpent_ssm.ops import resolve_backend

    args.threads = args.threads or torch.get_num_threads()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    mode = "non-causal (bidirectional backbones)" if args.non_causal else "causal"
    print(
        f"# mixer forward+backward, B={args.batch}, d_model={args.d_model}, {mode}, scan backend "
        f"{args.backend} ({resolve_backend(args.backend, 'cpu')}), {args.threads} threads, "
        f"torch {torch.__version__}, best of {args.repeats}\n"
    )
    print("| L | mixer | params | fwd+bwd s | peak extra MB | time vs mamba | memory vs mamba |")
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        rows = {}
        toggled = "serpent-mamba-full-branch" if args.non_causal else "serpent-mamba-no-full-branch"
        for name in ("mamba", "serpent-mamba", toggled):
            common = [
                "--worker",
                name,
                "--lengths",
                str(length),
                "--batch",
                str(args.batch),
                "--d-model",
                str(args.d_model),
                "--backend",
                args.backend,
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
            if args.non_causal:
                common.append("--non-causal")
            t, m = run_worker(__file__, common, "time"), run_worker(__file__, common, "memory")
            rows[name] = None if t is None or m is None else {**t, **m}
        base = rows["mamba"]
        for name, r in rows.items():
            if r is None:
                print(f"| {length} | {name} | failed | | | | |")
                continue
            rt = f"{r['s'] / base['s']:.2f}×" if base else ""
            rm = f"{r['peak_mb'] / base['peak_mb']:.2f}×" if base else ""
            print(
                f"| {length} | {name} | {r['params']:,} | {r['s']:.3f} | {r['peak_mb']:.0f} | {rt} | {rm} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
