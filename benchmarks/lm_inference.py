"""Inference of our causal LMs with the recurrent state: prefill, evaluation and decoding.

    python benchmarks/lm_inference.py                       # the English configs' models
    python benchmarks/lm_inference.py --prompts 1024 --eval-bytes 20000 --gen-tokens 64   # quick
    python benchmarks/lm_inference.py --write-readme   # and replace its table in benchmarks/README.md

Models: ``configs/english/mamba.yaml`` and ``configs/english/serpent-mamba.yaml`` as configured
(4 layers, parameters matched within 10 %; since format 0.4.0 the causal default, the lean shared
mixer, is matched at the backbone's width, d_model 128), plus ``serpent-mamba`` at the backbone's
width where the config's differs (on unless ``--no-same-width``), and with ``--first-default`` the
causal default of formats 0.2.0-0.3.0 (a backbone per branch, a dense merge; d_model 56), random
initialisation, fp32, on the CPU.

Columns (each the best of ``--repeats`` runs, at least 5 for decoding, the models interleaved within
each; our mamba is the baseline of every ratio):
  prefill s (one pass)    ``model(ids, return_state=True)`` on a prompt of N bytes, batch 1: the
                          state after the prompt, which ``generate`` starts from
  prefill s (steps)       the same state through ``step()`` byte by byte (what a model without a
                          chunked forward has to do); only up to ``--max-step-prefill`` bytes
  eval bytes/s            ``train.evaluation.evaluate_lm`` over ``--eval-bytes`` bytes of random text,
                          windows of 512 bytes, 16 rows, the state carried (what ``serpent eval``
                          runs)
  decode tokens/s         greedy ``generate``: ``--gen-tokens`` new tokens after a 16-byte prompt,
                          at batch 1 and batch 8 (tokens of all rows per second; the time of the
                          prompt's pass, ``generate`` with no new token, subtracted), with the fused
                          CPU step kernel (``ops.serpent_step``, backend "cpu") and with its torch reference
                          (``SERPENT_SSM_STEP_KERNEL=0``)
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

import torch

from serpent_ssm.models import build_model
from serpent_ssm.models.build import count_parameters
from serpent_ssm.models.config import FIRST_DEFAULT_MIXER
from serpent_ssm.train.config import load_run_config, model_config_for
from serpent_ssm.train.evaluation import evaluate_lm

from _common import best_time, markdown_head, markdown_row, write_readme_section


def build(config: str, overrides: list[str]) -> torch.nn.Module:
    cfg = load_run_config(config, overrides)
    torch.manual_seed(0)
    return build_model(model_config_for(cfg.model, cfg.data.task)).eval()


@torch.no_grad()
def prefill_by_steps(model, ids: torch.Tensor) -> None:
    state = model.allocate_state(ids.shape[0])
    for t in range(ids.shape[1]):
        _, state = model.step(ids[:, t], state)


def measurements(args) -> list[tuple[str, Callable[[torch.nn.Module], Callable[[], object]], float]]:
    """``(column, make_call(model), work)``: each column's call on a model, and the work it does
    (a rate column reports ``work / seconds``; a time column has ``work = 0``)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in args.prompts:
        ids = torch.randint(3, 259, (1, n), generator=gen)
        out.append((f"prefill {n}", lambda m, ids=ids: lambda: m(ids, return_state=True), 0.0))
        if n <= args.max_step_prefill:
            out.append((f"steps {n}", lambda m, ids=ids: lambda: prefill_by_steps(m, ids), 0.0))
    stream = torch.randint(0, 256, (args.eval_bytes,), generator=gen, dtype=torch.uint8)
    out.append(
        (
            "eval bytes/s",
            lambda m: lambda: evaluate_lm(m, stream, seq_len=512, batch_size=16),
            args.eval_bytes,
        )
    )
    for kernel in ("1", "0"):
        for batch in (1, 8):
            prompt = torch.randint(3, 259, (batch, 16), generator=gen)

            def decode(m, prompt=prompt, kernel=kernel):
                def call():  # the tokens after the prompt: generate(N) minus generate(0)
                    os.environ["SERPENT_SSM_STEP_KERNEL"] = kernel
                    try:
                        prompt_only = best_time(lambda: m.generate(prompt, max_new_tokens=0), 1)
                        full = best_time(
                            lambda: m.generate(prompt, max_new_tokens=args.gen_tokens, temperature=0.0), 1
                        )
                    finally:
                        os.environ.pop("SERPENT_SSM_STEP_KERNEL")
                    return full - prompt_only

                return call

            out.append(
                (f"decode b{batch}" + ("" if kernel == "1" else " torch"), decode, batch * args.gen_tokens)
            )
    return out


def measure(models: list[tuple[str, torch.nn.Module]], args) -> list[dict]:
    """Every column for every model, the models interleaved within each repeat (this machine's
    speed drifts by tens of percent over minutes: interleaving keeps the ratios fair), the best
    of ``--repeats`` (steps and evaluation: of one)."""
    rows = [{"model": name, "params": count_parameters(m)} for name, m in models]
    with torch.no_grad():
        for column, make_call, work in measurements(args):
            repeats = 1 if column.startswith(("steps", "eval")) else args.repeats
            if column.startswith("decode"):  # short measurements: more of them
                repeats = max(repeats, 5)
            calls = [make_call(m) for _, m in models]
            if column.startswith("decode"):
                for call in calls:  # warm-up
                    call()
            best = [math.inf] * len(models)
            for _ in range(repeats):
                for i, call in enumerate(calls):
                    seconds = call() if column.startswith("decode") else best_time(call, 1)
                    best[i] = min(best[i], seconds)
            for row, seconds in zip(rows, best, strict=True):
                row[column] = work / seconds if work else seconds
            print(f"measured {column}", flush=True)
    return rows


def table(rows: list[dict], args) -> str:
    base = rows[0]
    cols = [f"prefill {n}" for n in args.prompts] + [
        f"steps {n}" for n in args.prompts if n <= args.max_step_prefill
    ]
    head = [
        "model",
        "params",
        *[f"{c} s" for c in cols],
        "eval bytes/s",
        "decode b1 tok/s",
        "decode b8 tok/s",
        "decode b1 tok/s (torch step)",
        "decode b8 tok/s (torch step)",
    ]
    lines = [markdown_head(head)]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}"]
        cells += [f"{r[c]:.3f} ({r[c] / base[c]:.2f}×)" if c in r and c in base else "" for c in cols]
        for c in ("eval bytes/s", "decode b1", "decode b8", "decode b1 torch", "decode b8 torch"):
            cells.append(f"{r[c]:,.0f} ({r[c] / base[c]:.2f}×)")
        lines.append(markdown_row(cells))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--max-step-prefill", type=int, default=8192)
    p.add_argument("--eval-bytes", type=int, default=200_000)
    p.add_argument("--gen-tokens", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-same-width", dest="same_width", action="store_false")
    p.add_argument(
        "--first-default",
        action="store_true",
        help="add the causal default of formats 0.2.0-0.3.0 (separate backbones, dense merge, d_model 56)",
    )
    p.add_argument(
        "--write-readme",
        action="store_true",
        help="write the table into benchmarks/README.md (bench:lm_inference)",
    )
    args = p.parse_args()
    mamba = build("configs/english/mamba.yaml", [])
    serpent = build("configs/english/serpent-mamba.yaml", [])
    width = mamba.embedding.embedding_dim
    same = serpent.embedding.embedding_dim == width
    models = [
        ("mamba", mamba),
        (f"serpent-mamba (matched parameters{', same width' if same else ''})", serpent),
    ]
    if args.same_width and not same:
        models.append(
            (
                "serpent-mamba (same width)",
                build("configs/english/serpent-mamba.yaml", [f"model.d_model={width}"]),
            )
        )
    if args.first_default:
        first = [f"model.serpent.{k}={str(v).lower()}" for k, v in FIRST_DEFAULT_MIXER.items()]
        overrides = ["model.d_model=56", *first]
        models.append(
            ("serpent-mamba (first causal default)", build("configs/english/serpent-mamba.yaml", overrides))
        )
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"seconds are the best of {args.repeats}"
    )
    markdown = table(measure(models, args), args)
    print(markdown)
    if args.write_readme:
        write_readme_section("lm_inference", markdown)


if __name__ == "__main__":
    main()
