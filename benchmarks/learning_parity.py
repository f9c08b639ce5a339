"""Learning parity of SeRpEnt against its backbone on a quick task (docs/design.md, "Learning parity").

The sparse-digit task: sequences of length 200 of a filler token with ten digits at
random positions; the label is the last digit. Every variant trains the same classifier
(embedding -> 2 pre-norm blocks -> masked mean pool -> head) for the same steps, batch and
learning rate, and is evaluated on the same held-out set.

    python benchmarks/learning_parity.py                          # all variants, seed 0
    python benchmarks/learning_parity.py --variants mamba serpent-cell --seeds 0 1

Prints a markdown table (and one JSON line per run to --log).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from serpent_ssm.models import SequenceClassifier, make_mixer_factory

FILLER, N_DIGITS = 10, 10

VARIANTS = {
    # the bare backbone (bidirectional Mamba, as LRA classifiers use)
    "mamba": ("mamba", {}),
    # SeRpEnt's identity configuration: one branch, κ = 1, K = 1, Δ ≡ 1
    "serpent-identity": (
        "serpent-mamba",
        {"rates": (1.0,), "window": 1, "interval_bounds": "fixed", "restore": "hold", "aggregate": "cell"},
    ),
    # the paper's figure as drawn: window K = 3 aggregated by one linear map with RBF time features
    "serpent-linear": ("serpent-mamba", {"aggregate": "linear"}),
    "serpent-linear-default-init": ("serpent-mamba", {"aggregate": "linear", "init": "default"}),
    "serpent-linear-window5": ("serpent-mamba", {"aggregate": "linear", "window": 5}),
    "serpent-linear-full-branch": ("serpent-mamba", {"aggregate": "linear", "include_full_branch": True}),
    "serpent-kernel": ("serpent-mamba", {"aggregate": "kernel"}),
    # the library's default: overlap-weighted pooling of every element into its grid cells
    "serpent-cell": ("serpent-mamba", {"aggregate": "cell"}),
    "serpent-cell-paper-bounds": ("serpent-mamba", {"aggregate": "cell", "interval_bounds": "paper"}),
}


def sparse_digits(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens (n, length)``: filler with ``N_DIGITS`` random digits at random places; label = last digit."""
    tokens = torch.full((n, length), FILLER, dtype=torch.long)
    pos = torch.rand(n, length, generator=generator).argsort(dim=1)[:, :N_DIGITS].sort(dim=1).values
    digits = torch.randint(0, 10, (n, N_DIGITS), generator=generator)
    tokens.scatter_(1, pos, digits)
    return tokens, digits[:, -1]


def run(variant: str, seed: int, args: argparse.Namespace) -> dict:
    name, serpent_kwargs = VARIANTS[variant]
    torch.manual_seed(seed)
    data_gen = torch.Generator().manual_seed(1000 + seed)
    x_val, y_val = sparse_digits(args.n_val, args.length, torch.Generator().manual_seed(999))
    factory = make_mixer_factory(
        name, args.d_model, causal=False, backbone_kwargs={"d_state": 16}, serpent_kwargs=serpent_kwargs
    )
    model = SequenceClassifier(factory, args.d_model, args.layers, 10, vocab_size=FILLER + 1)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    curve = []
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = sparse_digits(args.batch, args.length, data_gen)
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                acc = (model(x_val).argmax(-1) == y_val).float().mean().item()
            curve.append({"step": step, "loss": round(loss.item(), 4), "val_acc": round(acc, 4)})
    return {
        "variant": variant,
        "model": name,
        "serpent_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in serpent_kwargs.items()},
        "seed": seed,
        "params": n_params,
        "steps": args.steps,
        "wall_s": round(time.perf_counter() - t0, 1),
        "final_val_acc": curve[-1]["val_acc"],
        "curve": curve,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--n-val", type=int, default=512)
    p.add_argument("--log", default=None, help="append one JSON line per run to this file")
    args = p.parse_args()
    print(
        f"# sparse digits, L={args.length}, batch {args.batch}, {args.steps} steps, d_model {args.d_model}, "
        f"{args.layers} layers, AdamW lr {args.lr}, {torch.get_num_threads()} threads\n"
    )
    evals = list(range(args.eval_every, args.steps + 1, args.eval_every))
    print("| variant | seed | params | " + " | ".join(f"acc@{s}" for s in evals) + " | wall s |")
    print("|---|---|---|" + "---|" * len(evals) + "---|")
    for variant in args.variants:
        for seed in args.seeds:
            r = run(variant, seed, args)
            accs = {c["step"]: c["val_acc"] for c in r["curve"]}
            cells = " | ".join(f"{100 * accs[s]:.1f}" for s in evals if s in accs)
            print(f"| {variant} | {seed} | {r['params']:,} | {cells} | {r['wall_s']:.0f} |", flush=True)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
