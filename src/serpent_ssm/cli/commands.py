"""What each ``serpent`` command does: the ``cmd_*`` functions that ``parser.py`` binds to the
subcommands (each takes the parsed arguments and returns the exit status), and the demo's
settings."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from serpent_ssm import __version__
from serpent_ssm.models import make_mixer_factory
from serpent_ssm.modules import Block
from serpent_ssm.ops import available_backends, resolve_backend
from serpent_ssm.ops.cpu_build import cpu_kernel_status


def _build_stack(name: str, d_model: int, layers: int, bidirectional: bool) -> nn.ModuleList:
    make_mixer = make_mixer_factory(name, d_model, causal=not bidirectional)
    mlp_ratio = 2.0 if name.endswith("s4d") else 0.0
    return nn.ModuleList(Block(d_model, make_mixer(i), mlp_ratio=mlp_ratio) for i in range(layers))


def _run_stack(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    for block in blocks:
        x = block(x, mask=mask)
    return x


def cmd_check(args: argparse.Namespace) -> int:
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


# The main job: a small generated ListOps set, two matched models, a few minutes each.
DEMO_STEPS = 1200
MAX_NEW_TOKENS = 100_000  # serpent generate holds the continuation in memory and prints it at the end
DEMO_DATA = {"n_train": 4000, "n_val": 500, "n_test": 500, "min_len": 50, "max_len": 200, "seed": 0}
DEMO_MODELS = {  # parameter counts matched within 10 % (printed)
    "mamba": {"d_model": 64, "n_layers": 2},
    "s4d": {"d_model": 64, "n_layers": 2, "mlp_ratio": 2.0},
    "serpent-mamba": {"d_model": 64, "n_layers": 2},  # the lean non-causal default: the backbone's width
    "serpent-s4d": {"d_model": 64, "n_layers": 2, "mlp_ratio": 2.0},
}


def cmd_demo(args: argparse.Namespace) -> int:
    from serpent_ssm.data.listops import generate_listops
    from serpent_ssm.train.config import RunConfig
    from serpent_ssm.train.loop import train
    from serpent_ssm.train.report import evaluate_run, report_table

    folder = Path(args.data_dir) / "listops"
    if not (folder / "basic_test.tsv").is_file():
        print(f"generating ListOps {DEMO_DATA} into {folder} ...", flush=True)
        generate_listops(args.data_dir, **DEMO_DATA)
    runs = []
    for name in args.models:
        cfg = RunConfig.from_dict(
            {
                "model": {"name": name, **DEMO_MODELS[name]},
                "data": {
                    "task": "listops",
                    "data_dir": args.data_dir,
                    "batch_size": 32,
                    "generate": DEMO_DATA,
                },
                "optim": {"lr": 3e-3, "warmup_steps": 40},
                "train": {
                    "max_steps": args.max_steps,
                    "eval_every": 100,
                    "log_every": 20,
                    "checkpoint_every": 100,
                },
            }
        )
        out = Path(args.out) / name
        if out.exists():
            shutil.rmtree(out)
        print(f"\ntraining {name} for {args.max_steps} steps -> {out}", flush=True)
        train(cfg, out)
        evaluate_run(out, "test")
        runs.append(out)
    print("\n" + report_table(runs))
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        names = available_backends(device)
        print(f"{device}: {', '.join(names)} (auto -> {resolve_backend('auto', device)})")
    print(f"fused CPU kernel: {cpu_kernel_status()}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from serpent_ssm.train.config import load_run_config
    from serpent_ssm.train.loop import train

    overrides = list(args.set or [])
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    cfg = load_run_config(args.config, overrides, preset=args.preset)
    out = args.out or str(Path("runs") / f"{cfg.data.task}-{cfg.model.name}-seed{cfg.train.seed}")
    compare, source = None, None
    if args.config and cfg.model.name.startswith("serpent-"):  # the backbone config's size too
        sibling = Path(args.config).with_name(cfg.model.name.removeprefix("serpent-") + ".yaml")
        if sibling.is_file():
            compare, source = load_run_config(sibling, preset=args.preset).model, sibling.name
    summary = train(cfg, out, resume=args.resume, compare_with=compare, compare_source=source)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
        print(f"run directory: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from serpent_ssm.train.report import evaluate_run

    result = evaluate_run(args.run_dir, args.split, args.which)
    where = f"{args.run_dir} ({result['model']}) on {result['split']}"
    if "bits_per_byte" in result:  # a language model: scored per byte
        print(
            f"{where}: {result['bits_per_byte']:.4f} bits per byte, perplexity {result['perplexity']:.3f}, "
            f"next-byte accuracy {result['accuracy']:.4f} over {result['n']:,} bytes"
        )
    else:
        print(
            f"{where}: accuracy {result['accuracy']:.4f}, "
            f"loss {result['loss']:.4f} over {result['n']} samples"
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from serpent_ssm.data.vocab import BYTE_VOCAB
    from serpent_ssm.models import from_pretrained

    if not 0 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(
            f"--max-new-tokens: expected an integer in [0, {MAX_NEW_TOKENS:,}] (generate in several calls "
            f"for more), got {args.max_new_tokens}"
        )
    model = from_pretrained(Path(args.run_dir) / args.which)
    if getattr(model.config, "head", None) != "lm":
        raise ValueError(f"run_dir: expected a language-model run, got a {model.config.head!r} model")
    prompt = args.prompt.encode("utf-8")
    if not prompt:
        raise ValueError("--prompt: expected at least one character, got an empty prompt")
    t0 = time.perf_counter()
    out = model.generate(
        BYTE_VOCAB.encode_bytes(prompt),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    dt = time.perf_counter() - t0
    text = BYTE_VOCAB.decode_bytes(out[len(prompt) :]).decode("utf-8", errors="replace")
    print(args.prompt + text)
    print(
        f"({args.max_new_tokens} bytes in {dt:.1f} s, {args.max_new_tokens / max(dt, 1e-9):.0f} bytes/s)",
        file=sys.stderr,
    )
    return 0


def cmd_analyze_intervals(args: argparse.Namespace) -> int:
    from serpent_ssm.analysis.report import analyze_run

    text = Path(args.input).read_bytes() if args.input else None
    train = Path(args.ngram_train).read_bytes() if args.ngram_train else None
    path = analyze_run(
        args.run_dir,
        text,
        train,
        args.out,
        split=args.split,
        n_samples=args.samples,
        max_bytes=args.max_bytes,
        order=args.order,
        n_resamples=args.resamples,
        reference=args.reference,
    )
    result = json.loads(path.read_text())
    print(f"{result['n_positions']} positions of {result['n_samples']} sample(s)")
    for name, entry in result["intervals"].items():
        for sig in result["signals"]:
            r, sh = entry[sig], entry[sig + "_shuffled_text"]
            print(
                f"{name:<16} vs {sig:<18} pearson {r['pearson']:+.3f} "
                f"[{r['pearson_ci'][0]:+.3f}, {r['pearson_ci'][1]:+.3f}]  spearman {r['spearman']:+.3f}  "
                f"R² {r['r2']:.3f}  (shuffled text: spearman {sh['spearman']:+.3f})"
            )
    print(path)
    return 0


def cmd_analyze_resampling(args: argparse.Namespace) -> int:
    from serpent_ssm.analysis.resampling import analyze_resampling_run

    text = Path(args.input).read_bytes() if args.input else None
    for path in analyze_resampling_run(args.run_dir, text, args.split, args.index, args.layer, args.out):
        print(path)
    return 0


def cmd_analyze_informative(args: argparse.Namespace) -> int:
    from serpent_ssm.analysis.informative import analyze_informative_run

    paths = analyze_informative_run(args.run_dir, args.n, args.split, args.which, args.out)
    result = json.loads(paths[0].read_text())
    start, end = result["start"], result["end"]
    print(
        f"{result['n']} {result['split']} sequences of {result['task']}: "
        f"{end['sequence_share']:.4f} of the positions are informative"
    )
    for key, b in end["branches"].items():
        a = start["branches"][key]
        enrichment = " -> ".join(
            "n/a" if e is None else f"{e:.2f}" for e in (a["enrichment"], b["enrichment"])
        )
        print(
            f"{key:<16} grid points on informative positions: start {a['grid_share']:.4f}, "
            f"end {b['grid_share']:.4f} (enrichment {enrichment}; "
            f"informative positions covered {a['informative_covered']:.3f} -> {b['informative_covered']:.3f})"
        )
    for path in paths:
        print(path)
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from serpent_ssm.hf import export_run

    print(export_run(args.run_dir, args.out, args.which))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from serpent_ssm.train.report import report_table

    print(report_table(args.run_dirs))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from serpent_ssm.train.report import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    common = {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test, "seed": args.seed}
    t0 = time.perf_counter()
    if args.task == "listops":
        from serpent_ssm.data.listops import generate_listops

        stats = generate_listops(args.out, min_len=args.min_len, max_len=args.max_len, **common)
        where = Path(args.out) / "listops"
    elif args.task == "sparse-digits":
        from serpent_ssm.data.sparse_digits import FOLDER, generate_sparse_digits

        stats = generate_sparse_digits(args.out, length=args.length, n_digits=args.n_digits, **common)
        where = Path(args.out) / FOLDER
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
