"""Adversarial inputs: costs and leaks that typical inputs hide (docs/design.md, "Numerics at the edges").

    python benchmarks/adversarial.py                     # L = 4096 and 8192
    python benchmarks/adversarial.py --lengths 1024 4096 --batch 2 --d 32

``cell``: non-causal cell pooling (``ops.resample.cell_pool``) with *peaked* intervals, one
dominant interval per row (scores -20 everywhere but +20 at one position: after the non-causal
rescaling that element spans almost all ``ceil(κ n)`` cells), against random intervals
(scores ~ N(0, 1)). A pooling whose loop runs once per cell an element spans costs about
``κ L`` times more on the peaked input; a linear one costs the same. Times are the best of
``--repeats`` calls after one warm-up; the ratio peaked/random is the number to watch.

``s4d``: how far a large value at position 10 moves S4D's outputs at positions 0-9 (it must
not: the convolution is causal), for magnitudes 1e3 .. 1e30 and ±Inf, NaN.
"""

from __future__ import annotations

import argparse
import math

import torch

from serpent_ssm.modules import S4D
from serpent_ssm.ops import resample as rs

from _common import best_time


def cell_pool_seconds(scores: torch.Tensor, rate: float, d: int, repeats: int) -> float:
    """Best time of non-causal cell pooling of ``(B, L, d)`` inputs with intervals from ``scores (B, L)``."""
    delta = 2 * rate * torch.sigmoid(scores)
    t, counts = rs.intervals_to_times(delta, None, rate, causal=False)
    x = torch.randn(*scores.shape, d)
    buffer = rs.compressed_length(rate, scores.shape[1], False, 2 * rate)
    rs.cell_pool(x, t, counts, buffer, None)  # warm-up
    return best_time(lambda: rs.cell_pool(x, t, counts, buffer, None), repeats)


def cell_table(lengths: list[int], batch: int, d: int, rate: float, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    print(f"# cell pooling, non-causal, B={batch}, D={d}, rate={rate}, {torch.get_num_threads()} threads")
    print(f"{'L':>6} {'random s':>10} {'peaked s':>10} {'peaked/random':>14}")
    for length in lengths:
        random = torch.randn(batch, length, generator=g)
        peaked = torch.full((batch, length), -20.0)
        peaked[:, length // 3] = 20.0
        t_random = cell_pool_seconds(random, rate, d, repeats)
        t_peaked = cell_pool_seconds(peaked, rate, d, repeats)
        print(f"{length:>6} {t_random:>10.4f} {t_peaked:>10.4f} {t_peaked / t_random:>14.1f}")


def s4d_table(length: int = 64, d: int = 16) -> None:
    torch.manual_seed(0)
    model = S4D(d).eval()
    x = torch.randn(1, length, d)
    with torch.no_grad():
        y0 = model(x)
        print(
            f"# S4D causality: a value v at position 10, the largest change of outputs 0-9 (|y| ~ "
            f"{y0[0, :10].abs().max().item():.2f})"
        )
        for v in (1e3, 1e6, 1e8, 1e12, 1e30, math.inf, -math.inf, math.nan):
            x2 = x.clone()
            x2[0, 10] = v
            shift = (model(x2)[0, :10] - y0[0, :10]).abs().max().item()
            print(f"{v:>8g} {shift:>12.3g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=["cell", "s4d"], default=None, help="run one of the two tables")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.only in (None, "cell"):
        cell_table(args.lengths, args.batch, args.d, args.rate, args.repeats)
    if args.only in (None, "s4d"):
        s4d_table()


if __name__ == "__main__":
    main()
