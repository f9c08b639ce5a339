"""Benchmark the selective-scan backends against mambapy and transformers, in one run.

    python benchmarks/scan.py                       # B=4, D=256, N=16, L in 1K, 4K, 16K
    python benchmarks/scan.py --lengths 4096 --impls cpu torch mambapy
    python benchmarks/scan.py --write-readme        # and replace the tables of benchmarks/README.md

Every (implementation, length) pair runs in a fresh subprocess, so that peak memory is that of
one scan and nothing else. Peak memory is the peak resident set size above the level reached
once the inputs exist, sampled every millisecond, in a subprocess of its own that runs with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed blocks to the system and the
resident size follows what is really allocated (that setting slows allocation, so times are
taken in another subprocess without it). Times are the best of ``--repeats`` runs after one
warm-up. All implementations get the same inputs (Δ already positive, a D skip, no gate)
and compute the same function.

Implementations:
  cpu            our fused C++ kernel (backend="cpu")
  torch          our chunked parallel scan in PyTorch (backend="torch")
  ref            our plain loop over time (backend="ref", the test oracle)
  mambapy        mambapy's ``MambaBlock.selective_scan`` (its Blelloch parallel scan, pscan)
  transformers   transformers' ``mamba_selective_scan`` slow path (a Python loop over time,
                 what transformers runs on a CPU without mamba_ssm)

The hardware line measures, with the same thread count, an fp32 2048x2048 matmul (FLOP/s) and
a 256 MB tensor copy (bytes read + written per second). For the ``cpu`` kernel the table then
gives its arithmetic rate and memory traffic against those two limits, under this model:

  FLOPs   forward 7 per (b, d, t, n): Δ·A, exp, a·h, Δu·B, +, h·C, +  (exp counted as 1);
          backward 20: the recomputation (5) and the adjoint recurrence (15)
  bytes   fp32 tensors the kernel must read or write at least once: forward u, Δ, B, C, y;
          backward u, Δ, B, C, dy, the checkpoints, du, dΔ, dB, dC
"""

from __future__ import annotations

import argparse
import json
import time

from _common import (
    best_time,
    markdown_head,
    markdown_row,
    peak_extra_mb,
    run_time_and_memory,
    run_worker,
    write_readme_section,
)

SLOW = {"ref", "transformers"}  # Python loops over time: measured at the shorter lengths only
FLOPS_FWD, FLOPS_BWD = 7, 20  # per (b, d, t, n); see the module docstring


def hardware(threads: int) -> dict:
    """Measured fp32 matmul rate (GFLOP/s) and copy bandwidth (GB/s, read + write)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x = torch.randn(64 * 2**20)
    y = torch.empty_like(x)
    best_mm = best_copy = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best_mm = min(best_mm, time.perf_counter() - t0)
        t0 = time.perf_counter()
        y.copy_(x)
        best_copy = min(best_copy, time.perf_counter() - t0)
    return {"matmul_gflops": 2 * 2048**3 / best_mm / 1e9, "copy_gbps": 2 * x.numel() * 4 / best_copy / 1e9}


def kernel_work(batch: int, d: int, n: int, length: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one forward+backward of the fused kernel under the documented model."""
    elements = batch * d * length
    flops = (FLOPS_FWD + FLOPS_BWD) * elements * n
    floats_fwd = 3 * elements + 2 * batch * length * n
    floats_bwd = 5 * elements + 4 * batch * length * n + elements * n / 64  # + checkpoints
    return flops, 4 * (floats_fwd + floats_bwd)


def worker(impl: str, batch: int, d: int, n: int, length: int, repeats: int, threads: int, what: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, d, length, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(batch, d, length, generator=g) - 3.0)
    A = -torch.rand(d, n, generator=g) * 4 - 0.1
    B = torch.randn(batch, n, length, generator=g)
    C = torch.randn(batch, n, length, generator=g)
    D = torch.randn(d, generator=g)
    leaves = [u, delta, A, B, C, D]

    if impl in ("cpu", "torch", "ref"):
        from serpent_ssm.ops import selective_scan

        def fn(u, delta, A, B, C, D):
            return selective_scan(u, delta, A, B, C, D, backend=impl)

    elif impl == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig

        block = MambaBlock(MambaConfig(d_model=d // 2, n_layers=1, d_state=n))
        # mambapy's layout is (B, L, ED): transpose the inputs once, outside the timed region
        leaves = [
            u.transpose(1, 2).contiguous(),
            delta.transpose(1, 2).contiguous(),
            A,
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            D,
        ]

        def fn(u, delta, A, B, C, D):
            return block.selective_scan(u, delta, A, B, C, D)

    elif impl == "transformers":
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan

        def fn(u, delta, A, B, C, D):
            return mamba_selective_scan(u, delta, A, B, C, D)

    else:
        raise ValueError(f"impl: expected cpu, torch, ref, mambapy or transformers, got {impl!r}")

    leaves = [x.requires_grad_(True) for x in leaves]

    def forward():
        with torch.no_grad():
            fn(*leaves)

    def forward_backward():
        y = fn(*leaves)
        y.backward(torch.ones_like(y))
        for x in leaves:
            x.grad = None

    result = {}
    for name, step in (("fwd", forward), ("fwd_bwd", forward_backward)):
        if what == "memory":
            result[f"{name}_peak_mb"] = peak_extra_mb(step)
        else:
            step()  # warm-up
            result[f"{name}_s"] = best_time(step, repeats)
    return result


def run_one(impl, args, length) -> dict | None:
    """Times in one subprocess, memory in another."""
    worker_args = [
        "--worker",
        impl,
        "--lengths",
        str(length),
        "--batch",
        str(args.batch),
        "--d",
        str(args.d),
        "--n",
        str(args.n),
        "--repeats",
        str(1 if impl in SLOW else args.repeats),
        "--threads",
        str(args.threads),
    ]
    return run_time_and_memory(__file__, worker_args)


def measure_and_print(args) -> str:
    """Measure every row, printing the tables as they fill; return what was printed (markdown)."""
    import torch

    hw = run_worker(__file__, ["--worker", "hardware", "--threads", str(args.threads)], "time")
    out: list[str] = []  # what is printed, in order: the markdown that --write-readme writes

    def emit(text: str = "") -> None:
        print(text, flush=True)
        out.append(text)

    emit(
        f"Selective scan, B={args.batch}, D={args.d}, N={args.n}, fp32, {args.threads} threads, "
        f"torch {torch.__version__}, best of {args.repeats} (1 for loops); hardware: fp32 matmul "
        f"{hw['matmul_gflops']:.0f} GFLOP/s, copy {hw['copy_gbps']:.1f} GB/s (read + write).\n"
    )
    base = "cpu" if "cpu" in args.impls else args.impls[0]
    emit(
        markdown_head(
            ["L", "implementation", "forward s", "fwd+bwd s", "peak extra MB (fwd+bwd)"]
            + [f"{base} is faster by", f"{base} uses less memory by"]
        )
    )
    summary = []
    for length in args.lengths:
        rows = {}
        for impl in args.impls:
            if impl in SLOW and length > args.slow_max_length:
                continue
            rows[impl] = run_one(impl, args, length)
        ours = rows.get(base)
        for impl, r in rows.items():
            if r is None:
                emit(markdown_row([length, impl, "failed", "", "", "", ""]))
                continue
            ratio_t = ratio_m = ""
            if ours and impl != base:
                ratio_t = f"{r['fwd_bwd_s'] / ours['fwd_bwd_s']:.1f}×"
                ratio_m = f"{r['fwd_bwd_peak_mb'] / max(ours['fwd_bwd_peak_mb'], 1e-9):.1f}×"
            emit(
                markdown_row(
                    [length, impl, f"{r['fwd_s']:.3f}", f"{r['fwd_bwd_s']:.3f}"]
                    + [f"{r['fwd_bwd_peak_mb']:.0f}", ratio_t, ratio_m]
                )
            )
        if rows.get("cpu"):
            flops, nbytes = kernel_work(args.batch, args.d, args.n, length)
            t = rows["cpu"]["fwd_bwd_s"]
            gflops, gbps = flops / t / 1e9, nbytes / t / 1e9
            of_mm, of_copy = 100 * gflops / hw["matmul_gflops"], 100 * gbps / hw["copy_gbps"]
            cells = [f"{flops / 1e9:.2f}", f"{gflops:.1f}", f"{of_mm:.0f} %", f"{nbytes / 1e6:.0f}"]
            summary.append(markdown_row([length, *cells, f"{gbps:.2f}", f"{of_copy:.0f} %"]))
    skipped = [i for i in args.impls if i in SLOW]
    if skipped and any(length > args.slow_max_length for length in args.lengths):
        emit(f"\n{', '.join(skipped)}: Python loops over time, measured up to L={args.slow_max_length} only.")
    if summary:
        emit("\nThe fused `cpu` kernel (forward+backward) against the hardware (model: docstring):\n")
        emit(markdown_head(["L", "GFLOP", "GFLOP/s", "of matmul", "MB moved", "GB/s", "of copy"]))
        emit("\n".join(summary))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--d", type=int, default=256, help="inner width D (channels)")
    p.add_argument("--n", type=int, default=16, help="state size N")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--impls", nargs="+", default=["cpu", "torch", "mambapy", "transformers", "ref"])
    p.add_argument(
        "--slow-max-length",
        type=int,
        default=1024,
        help="longest L for the Python-loop implementations (ref, transformers)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument(
        "--write-readme", action="store_true", help="write the tables into benchmarks/README.md (bench:scan)"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--what", default="time", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        import torch

        threads = args.threads or torch.get_num_threads()
        if args.worker == "hardware":
            print(json.dumps(hardware(threads)))
            return
        print(
            json.dumps(
                worker(
                    args.worker, args.batch, args.d, args.n, args.lengths[0], args.repeats, threads, args.what
                )
            )
        )
        return

    import torch

    args.threads = args.threads or torch.get_num_threads()
    markdown = measure_and_print(args)
    if args.write_readme:
        write_readme_section("scan", markdown)


if __name__ == "__main__":
    main()
