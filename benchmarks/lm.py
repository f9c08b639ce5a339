"""Benchmark our causal LMs against transformers' and mambapy's Mamba LMs: training and generation.

    python benchmarks/lm.py        # d_model=256, 4 layers, N=16, E=2, 259 byte ids, batch 4, L in 1K, 4K
    python benchmarks/lm.py --contexts 256 --steps 2 --gen-tokens 200      # a quick check
    python benchmarks/lm.py --serpent-d-model match   # serpent-mamba narrowed to mamba's parameter count

Models (all fp32, random initialisation, the same width, depth, state size N, expansion E, conv
width and byte vocabulary, tied input/output embeddings):
  mamba            our ``mamba`` ``CausalLM`` (the fused CPU selective-scan kernel when built)
  serpent-mamba    our ``serpent-mamba`` ``CausalLM``: a SeRpEnt mixer per block at its defaults
                   (since format 0.4.0 one Mamba backbone shared by the branches at rates 0.5,
                   0.3, 0.2 and the full one, about ``mamba``'s parameters at the same d_model;
                   the tables in results/lm_benchmark.md were measured with the default of then,
                   one backbone per branch, about 3.8x and 4.9x with the full branch; both counts
                   are printed)
  mambapy          ``mambapy.lm.LM(mambapy.mamba.MambaConfig(...))``, its parallel scan (pscan).
                   mambapy unties its head by default; we tie it to the embedding (same compute) so
                   that its parameter count equals ours. ``mambapy.lm`` imports ``mambapy.mamba2``,
                   which needs einops and mamba_ssm; without them an empty placeholder stands in
                   for that module (Mamba-1 does not use it) and the output says so
  transformers     ``transformers.MambaForCausalLM(MambaConfig(...))`` without mamba_ssm, i.e. its
                   CPU slow path: a Python loop over time, whose backward materialises a full
                   (B, ED, L, N) gradient per time step, so a training step grows like L^2
  transformers-pscan  the same with ``use_mambapy=True`` (transformers' own switch to mambapy's
                   pscan; not in the default list)

Training: one step is forward, next-token cross-entropy over the whole context, backward, AdamW
step, ``zero_grad``. Every (model, context) pair runs in fresh subprocesses (``_common.run_worker``):
one for times, one for memory (``MALLOC_MMAP_THRESHOLD_=65536`` there, so that the resident size
follows what is really allocated). Each first makes one warm-up step at a 128-token context (loads
kernels, allocates the optimiser state) and times a probe step (128 tokens; 256 for
``transformers``, whose L^2 regime starts later); from it the cost of the measurement is
estimated (linear in L; quadratic for ``transformers``, which makes 1 timed step instead of
``--steps``) and, when it exceeds ``--max-minutes`` (default 5), the pair is skipped and the estimate printed.
A process still running after ``--max-minutes`` (an estimate too low) is stopped the same way.
Generation estimates from its warm-up and is bounded the same way.

Training columns:
  params             parameters of the model (tied embeddings counted once)
  context            tokens per sequence L; every step sees batch x L tokens
  tokens/s (train)   batch x L / the best of ``--steps`` timed steps (1 for ``transformers``)
  step s             that best step time
  peak extra MB      peak resident set size during one step (sampled every ms) above the level
                     reached once the model, its optimiser state (after a warm-up step) and the
                     batch exist: activations, gradients, temporaries
  mamba is faster by / uses less memory by   that model's step time / our mamba's, and peak extra
                     MB / our mamba's, at the same context (above 1: ours is better)

Generation: greedy decoding, batch 1, the 20-byte prompt "The quick brown fox ", ``--gen-tokens``
new tokens, timed after a warm-up generation of 16 tokens. Our models: ``CausalLM.generate(...,
temperature=0)`` (one ``step()`` per token); transformers: ``MambaForCausalLM.generate(
max_new_tokens=..., do_sample=False)`` (its recurrent cache path; EOS disabled so that it runs to
the end); mambapy: ``LM.generate(sample=False, top_k=None)`` (its ``step()`` loop) through a
minimal byte tokenizer.
  tokens/s (generate)   new tokens / the time of one generation, prompt included
  mamba is faster by    that model's time / our mamba's
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
import types

from _common import peak_extra_mb, run_time_and_memory, run_worker

MODELS = ("mamba", "serpent-mamba", "mambapy", "transformers", "transformers-pscan")
DEFAULT_MODELS = ["mamba", "serpent-mamba", "mambapy", "transformers"]
QUADRATIC = {"transformers"}  # backward cost grows like L^2 (see the docstring)
VOCAB = 259  # serpent_ssm.data.BYTE_VOCAB: <pad>, <bos>, <eos> + 256 bytes
PROMPT = b"The quick brown fox "
PROBE_LENGTH = 128  # the short context of the warm-up and of the cost estimate
PROBE_QUADRATIC = 256  # ... of the estimate for QUADRATIC models (shorter is not yet in the L^2 regime)
GEN_WARMUP = 16
_MAMBAPY_NOTE = ""  # set by import_mambapy_lm when it needs its placeholder


def import_mambapy_lm():
    """``(mambapy.lm.LM, note)``. ``mambapy.lm`` imports ``mambapy.mamba2``, which needs einops and
    mamba_ssm (Triton) at import time; when they are missing, an empty module stands in for
    ``mambapy.mamba2`` (only Mamba-1 is used here) and the note says so."""
    global _MAMBAPY_NOTE
    try:
        from mambapy.lm import LM

        return LM, _MAMBAPY_NOTE
    except ImportError as exc:
        stub = types.ModuleType("mambapy.mamba2")
        stub.Mamba2 = type("Mamba2Unavailable", (), {})
        stub.Mamba2Config = type("Mamba2ConfigUnavailable", (), {})
        sys.modules["mambapy.mamba2"] = stub
        sys.modules.pop("mambapy.lm", None)
        from mambapy.lm import LM

        _MAMBAPY_NOTE = (
            f"mambapy.lm imports mambapy.mamba2, which fails here ({exc}); an empty placeholder "
            "stands in for mambapy.mamba2 (only Mamba-1 is used), mambapy.lm.LM itself is unchanged"
        )
        return LM, _MAMBAPY_NOTE


def build(model: str, args) -> object:
    """The model, in train mode."""
    if model in ("mamba", "serpent-mamba"):
        from serpent_ssm.models import CausalLM, make_mixer_factory

        d = args.d_model if model == "mamba" else args.serpent_d_model
        backbone = {"d_state": args.n, "expand": args.expand, "d_conv": args.d_conv}
        serpent = {} if model == "mamba" else {"include_full_branch": args.serpent_full_branch == "on"}
        make_mixer = make_mixer_factory(
            model, d, causal=True, backbone_kwargs=backbone, serpent_kwargs=serpent
        )
        return CausalLM(make_mixer, VOCAB, d, args.n_layers)
    if model == "mambapy":
        from mambapy.mamba import MambaConfig

        LM, _ = import_mambapy_lm()
        cfg = MambaConfig(
            d_model=args.d_model,
            n_layers=args.n_layers,
            d_state=args.n,
            expand_factor=args.expand,
            d_conv=args.d_conv,
        )
        m = LM(cfg, VOCAB)
        m.lm_head.weight = m.embedding.weight  # tie, as ours and transformers' are
        return m
    if model in ("transformers", "transformers-pscan"):
        from transformers import MambaConfig, MambaForCausalLM
        from transformers.utils import logging

        logging.set_verbosity_error()  # the "falling back to the reference implementation" notices
        cfg = MambaConfig(
            vocab_size=VOCAB,
            hidden_size=args.d_model,
            num_hidden_layers=args.n_layers,
            state_size=args.n,
            expand=args.expand,
            conv_kernel=args.d_conv,
            use_mambapy=model == "transformers-pscan",
            tie_word_embeddings=True,
            eos_token_id=None,  # random weights: never stop generation early
            bos_token_id=None,
            pad_token_id=0,
        )
        return MambaForCausalLM(cfg)
    raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {model!r}")


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())  # shared (tied) tensors are listed once


def logits_of(model: str, m, ids):
    if model.startswith("transformers"):
        return m(input_ids=ids, use_cache=False).logits
    return m(ids)


def start_watchdog(args, result: dict, what: str, progress: list[str]) -> None:
    """After ``--max-minutes``, print ``result`` marked skipped and end the process (a thread:
    PyTorch releases the GIL inside its operators, so it fires even in the middle of a backward)."""

    def fire() -> None:
        result["skipped"] = f"{what} stopped after --max-minutes {args.max_minutes:g}, during {progress[-1]}"
        print(json.dumps(result), flush=True)
        os._exit(0)

    timer = threading.Timer(60 * args.max_minutes, fire)
    timer.daemon = True
    timer.start()


def timed_steps(model: str, args) -> int:
    return 1 if model in QUADRATIC else args.steps


def train_worker(model: str, args, length: int) -> dict:
    import torch

    torch.manual_seed(0)
    m = build(model, args)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    result = {"params": n_params(m)}
    progress = ["the warm-up"]
    start_watchdog(args, result, f"the {args.what} run", progress)
    g = torch.Generator().manual_seed(0)
    probe_len = min(PROBE_QUADRATIC if model in QUADRATIC else PROBE_LENGTH, length)
    warm = torch.randint(3, VOCAB, (args.batch, min(PROBE_LENGTH, length)), generator=g)
    probe = torch.randint(3, VOCAB, (args.batch, probe_len), generator=g)
    ids = torch.randint(3, VOCAB, (args.batch, length), generator=g)

    def step(x):
        logits = logits_of(model, m, x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(warm)  # warm-up: kernels loaded, optimiser state allocated
    progress.append(f"the {probe_len}-token probe step")
    t0 = time.perf_counter()
    step(probe)
    probe_s = time.perf_counter() - t0
    growth = (length / probe_len) ** (2 if model in QUADRATIC else 1)
    n_steps = timed_steps(model, args)
    estimate = probe_s * growth * (n_steps + 1)  # the timed steps + the memory step
    result["estimate_s"] = estimate
    if args.what == "time" and estimate > 60 * args.max_minutes:  # the memory run follows suit
        result["skipped"] = (
            f"estimated {estimate / 60:.0f} min ({n_steps + 1} steps) from a {probe_len}-token step "
            f"of {probe_s:.2f} s (x {growth:.0f}), over --max-minutes {args.max_minutes:g}"
        )
        return result
    if args.what == "memory":
        gc.collect()
        progress.append(f"the {length}-token step")
        result["peak_mb"] = peak_extra_mb(lambda: step(ids))
    else:
        times = []
        for i in range(n_steps):
            progress.append(f"{length}-token step {i + 1} of {n_steps}")
            t0 = time.perf_counter()
            step(ids)
            times.append(time.perf_counter() - t0)
        result["step_s"] = min(times)
    return result


class _ByteTokenizer:
    """Just what ``mambapy.lm.LM.generate`` calls: ``tok(text, return_tensors="pt").input_ids``
    and ``tok.decode(ids)``; ids are bytes + 3, as ``serpent_ssm.data.BYTE_VOCAB``."""

    def __call__(self, text: str, return_tensors: str = "pt"):
        from serpent_ssm.data.vocab import BYTE_VOCAB

        return types.SimpleNamespace(input_ids=BYTE_VOCAB.encode_bytes(text.encode())[None])

    last_length = 0

    def decode(self, ids: list[int]) -> str:
        self.last_length = len(ids)  # prompt + generated ids, for the check of the count
        return bytes(i - 3 for i in ids if i >= 3).decode(errors="replace")


def generate_worker(model: str, args) -> dict:
    import torch

    from serpent_ssm.data.vocab import BYTE_VOCAB

    torch.manual_seed(0)
    m = build(model, args)
    m.eval()
    prompt = BYTE_VOCAB.encode_bytes(PROMPT)

    if model in ("mamba", "serpent-mamba"):

        def gen(n: int) -> int:
            out = m.generate(prompt, n, temperature=0.0)
            return out.shape[0] - prompt.shape[0]

    elif model == "mambapy":
        tok = _ByteTokenizer()

        def gen(n: int) -> int:
            m.generate(tok, PROMPT.decode(), num_tokens=n, sample=False, top_k=None)
            return tok.last_length - len(PROMPT)

    else:

        def gen(n: int) -> int:
            with torch.no_grad():
                out = m.generate(
                    prompt[None],
                    attention_mask=torch.ones_like(prompt[None]),
                    max_new_tokens=n,
                    do_sample=False,
                )
            return out.shape[1] - prompt.shape[0]

    result = {"params": n_params(m)}
    progress = [f"the {GEN_WARMUP}-token warm-up"]
    start_watchdog(args, result, "the run", progress)
    t0 = time.perf_counter()
    gen(GEN_WARMUP)
    warm_s = time.perf_counter() - t0
    estimate = warm_s * args.gen_tokens / GEN_WARMUP
    result["estimate_s"] = estimate
    if estimate > 60 * args.max_minutes:
        result["skipped"] = (
            f"estimated {estimate / 60:.0f} min from {GEN_WARMUP} tokens in {warm_s:.2f} s, "
            f"over --max-minutes {args.max_minutes:g}"
        )
        return result
    progress.append(f"the {args.gen_tokens}-token generation")
    t0 = time.perf_counter()
    produced = gen(args.gen_tokens)
    result["gen_s"] = time.perf_counter() - t0
    result["produced"] = produced
    return result


def common_args(args) -> list[str]:
    return [
        "--d-model",
        str(args.d_model),
        "--serpent-d-model",
        str(args.serpent_d_model),
        "--serpent-full-branch",
        args.serpent_full_branch,
        "--n-layers",
        str(args.n_layers),
        "--n",
        str(args.n),
        "--expand",
        str(args.expand),
        "--d-conv",
        str(args.d_conv),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--gen-tokens",
        str(args.gen_tokens),
        "--max-minutes",
        str(args.max_minutes),
    ]


def run_train(model: str, args, length: int) -> dict | None:
    """Times in one subprocess, memory in another (skipped when the first says it is too slow)."""
    worker_args = ["--worker", f"train:{model}", "--contexts", str(length), *common_args(args)]
    return run_time_and_memory(__file__, worker_args)


def match_width(args) -> int:
    """The d_model (a multiple of 8) at which serpent-mamba's parameter count is closest to mamba's."""
    saved = args.serpent_d_model
    target = n_params(build("mamba", args))
    best = None
    for d in range(8, args.d_model + 1, 8):
        args.serpent_d_model = d
        gap = abs(n_params(build("serpent-mamba", args)) - target)
        if best is None or gap < best[0]:
            best = (gap, d)
    args.serpent_d_model = saved
    return best[1]


def ratio(x: float, base: float | None) -> str:
    return f"{x / base:.2f}×" if base else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=MODELS)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument(
        "--serpent-d-model",
        default=None,
        help="d_model of serpent-mamba: an integer, or 'match' for mamba's parameter count "
        "(default: --d-model)",
    )
    p.add_argument(
        "--serpent-full-branch",
        choices=("on", "off"),
        default="on",
        help="serpent-mamba with the full (κ = 1) branch, the causal default (results/lm_benchmark.md "
        "was measured with 'off', the causal default before the ablations in docs/design.md)",
    )
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n", type=int, default=16, help="SSM state size N (d_state)")
    p.add_argument("--expand", type=int, default=2, help="inner width E x d_model")
    p.add_argument("--d-conv", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--steps", type=int, default=3, help="timed training steps (best is reported)")
    p.add_argument("--gen-tokens", type=int, default=2000, help="new tokens per generation")
    p.add_argument("--no-generate", action="store_true", help="skip the generation table")
    p.add_argument("--no-train", action="store_true", help="skip the training table")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=5.0,
        help="skip a measurement whose estimated duration (both subprocesses) exceeds this",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--what", default="time", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.serpent_d_model is None:
        args.serpent_d_model = args.d_model
    elif args.serpent_d_model != "match":
        args.serpent_d_model = int(args.serpent_d_model)

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        kind, model = args.worker.split(":", 1)
        if kind == "train":
            result = train_worker(model, args, args.contexts[0])
        else:
            result = generate_worker(model, args)
        print(json.dumps(result))
        return

    import torch

    from serpent_ssm.ops.cpu_build import cpu_kernel_status

    torch.set_num_threads(args.threads)
    matched = args.serpent_d_model == "match"
    if matched:
        args.serpent_d_model = match_width(args)
    t_start = time.perf_counter()
    params = {m: n_params(build(m, args)) for m in args.models}
    _, mambapy_note = import_mambapy_lm() if "mambapy" in args.models else (None, "")
    contexts = sorted(args.contexts)

    print(
        f"# causal LMs: d_model={args.d_model}, {args.n_layers} layers, N={args.n}, E={args.expand}, "
        f"d_conv={args.d_conv}, vocab {VOCAB} (bytes), batch {args.batch}, fp32, {args.threads} threads, "
        f"torch {torch.__version__}"
    )
    print(f"# our fused CPU scan kernel: {cpu_kernel_status()}")
    print("# parameters: " + ", ".join(f"{m} {params[m]:,}" for m in args.models))
    if "serpent-mamba" in args.models:
        same = args.serpent_d_model == args.d_model
        print(
            f"# serpent-mamba: d_model={args.serpent_d_model}"
            + (
                " (same width as mamba, hence more parameters)"
                if same
                else " (--serpent-d-model match: the multiple of 8 closest to mamba's count)"
                if matched
                else " (--serpent-d-model)"
            )
            + f": {params['serpent-mamba']:,} parameters vs {n_params(build('mamba', args)):,} for mamba"
        )
    if mambapy_note:
        print(f"# note: {mambapy_note}")
    print()

    skipped = []
    if not args.no_train:
        slow = ", ".join(m for m in args.models if m in QUADRATIC)
        print(
            f"Training: forward + backward + AdamW, best of {args.steps} steps"
            + (f" (1 for {slow})" if slow else "")
            + "\n"
        )
        print(
            "| model | params | context | tokens/s (train) | step s | peak extra MB "
            "| mamba is faster by | mamba uses less memory by |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for length in contexts:
            rows = {}
            for model in args.models:
                rows[model] = run_train(model, args, length)
                r = rows[model]
                if r is None:
                    print(f"| {model} | {params[model]:,} | {length} | failed | | | | |", flush=True)
                    continue
                if "skipped" in r:
                    skipped.append(f"{model}, training at L={length}: {r['skipped']}")
                if "step_s" not in r:
                    print(f"| {model} | {params[model]:,} | {length} | skipped | | | | |", flush=True)
                    continue
                base = rows.get("mamba") or {}
                ours = model != "mamba"
                speed = ratio(r["step_s"], base["step_s"]) if ours and "step_s" in base else ""
                mem = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "skipped"
                mem_ratio = (
                    ratio(r["peak_mb"], max(base["peak_mb"], 1e-9))
                    if ours and "peak_mb" in r and "peak_mb" in base
                    else ""
                )
                print(
                    f"| {model} | {params[model]:,} | {length} | {args.batch * length / r['step_s']:,.0f} "
                    f"| {r['step_s']:.3f} | {mem} | {speed} | {mem_ratio} |",
                    flush=True,
                )
        print()

    if not args.no_generate:
        print(f"Generation: greedy, batch 1, a {len(PROMPT)}-byte prompt, {args.gen_tokens} new tokens\n")
        print("| model | params | new tokens | tokens/s (generate) | s | mamba is faster by |")
        print("|---|---|---|---|---|---|")
        base = None
        for model in args.models:
            r = run_worker(__file__, ["--worker", f"generate:{model}", *common_args(args)], "time")
            if r is None:
                print(f"| {model} | {params[model]:,} | {args.gen_tokens} | failed | | |", flush=True)
                continue
            if "skipped" in r:
                skipped.append(f"{model}, generation: {r['skipped']}")
                print(f"| {model} | {params[model]:,} | {args.gen_tokens} | skipped | | |", flush=True)
                continue
            if model == "mamba":
                base = r["gen_s"]
            print(
                f"| {model} | {params[model]:,} | {r['produced']} | {args.gen_tokens / r['gen_s']:,.1f} "
                f"| {r['gen_s']:.2f} | {ratio(r['gen_s'], base) if model != 'mamba' else ''} |",
                flush=True,
            )
        print()

    if skipped:
        print("Not measured:\n")
        print("\n".join(f"- {s}" for s in skipped))
        print()
    print(f"# total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
