"""The training loop behind ``serpent train``: one function, ``train(config, out_dir)``.

- AdamW with parameter groups: weight decay only on matrices (``dim >= 2``) not flagged
  ``_no_weight_decay``; parameters carrying an ``_optim`` hint (the S4D SSM parameters) get
  their own group with ``optim.ssm_lr`` (or the hint's lr) and no weight decay.
- Linear warmup, then cosine decay to ``min_lr_ratio * lr``; gradient clipping.
- Seeds: the same config and seed give identical results on the CPU; the data order is a
  function of (seed, epoch) only, so it can be restarted at any step.
- Logs: ``metrics.jsonl`` (one JSON object per log or evaluation), a progress bar (tqdm when
  installed), ``summary.json`` at the end. Evaluation on the validation split every
  ``eval_every`` steps; the best model (validation accuracy, or bits per byte for language
  modelling) is saved in ``best/`` and the
  final one in ``final/`` (``config.json`` + ``model.safetensors``).
- Checkpoints every ``checkpoint_every`` steps (``checkpoint.py``: atomic, hashed, previous
  kept); ``resume=True`` continues exactly: model, optimiser, schedule, RNG and data position
  are restored and metrics logged after the checkpoint are dropped, so the loss curve equals an
  uninterrupted run's.
- Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
  DistributedDataParallel (gloo on CPU, NCCL on GPU); ``data.batch_size`` is the global batch,
  split evenly over ranks; rank 0 logs, evaluates and writes.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from serpent_ssm.data.collate import lm_collate, pad_collate
from serpent_ssm.models.config import ModelConfig, build_model, count_parameters, save_pretrained
from serpent_ssm.train.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from serpent_ssm.train.config import RunConfig
from serpent_ssm.train.tasks import TaskData, load_task

__all__ = ["evaluate", "make_optimizer", "model_config_for", "train"]


# ----------------------------------------------------------------------------- pieces
def model_config_for(cfg: RunConfig, task: TaskData) -> ModelConfig:
    """The run's model config with the task's facts (classes, inputs, head) filled in."""
    d = cfg.model.to_dict()
    d.update(n_classes=task.n_classes, vocab_size=task.vocab_size, d_input=task.d_input, head=task.head)
    if task.head == "lm":
        d["causal"] = True  # a language model's mixers are causal whatever the config says
    return ModelConfig.from_dict(d)


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.AdamW:
    o = cfg.optim
    decay, no_decay, special = [], [], {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        hint = getattr(p, "_optim", None)
        if hint:
            lr = o.ssm_lr if o.ssm_lr is not None else hint.get("lr", o.lr)
            special.setdefault(lr, []).append(p)
        elif p.dim() < 2 or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay, "lr": o.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": o.lr},
    ] + [{"params": ps, "weight_decay": 0.0, "lr": lr} for lr, ps in special.items()]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=o.betas)


def lr_factor(step: int, cfg: RunConfig) -> float:
    """Warmup then cosine: the multiplier of every group's base lr at ``step`` (0-based)."""
    warm, total = cfg.optim.warmup_steps, cfg.train.max_steps
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    low = cfg.optim.min_lr_ratio
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


def _order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_indices(n: int, batch: int, seed: int, start_step: int, rank: int = 0, world: int = 1) -> Iterator:
    """Indices of this rank's share of each global batch, from ``start_step`` on; the last
    incomplete batch of an epoch is dropped, so every step has a full global batch."""
    per_epoch = n // batch
    if per_epoch == 0:
        raise ValueError(f"data.batch_size: expected at most the {n} training samples, got {batch}")
    local = batch // world
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        order = _order(n, seed, epoch)
        lo = k * batch + rank * local
        yield order[lo : lo + local].tolist()
        step += 1


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _forward(model: nn.Module, batch: dict) -> torch.Tensor:
    if "inputs2" in batch:
        return model(batch["inputs"], batch["mask"], batch["inputs2"], batch["mask2"])
    return model(batch["inputs"], batch["mask"])


def _tokens(batch: dict) -> int:
    n = int(batch["mask"].sum())
    return n + (int(batch["mask2"].sum()) if "mask2" in batch else 0)


@torch.no_grad()
def evaluate_lm(
    model: nn.Module, stream: torch.Tensor, seq_len: int, batch_size: int, device="cpu", exact: bool = True
) -> dict:
    """Next-byte loss, bits per byte, perplexity and accuracy over a byte stream ``(T,)`` uint8.

    The stream is cut into ``batch_size`` contiguous rows scored in parallel, window by window.
    Models whose ``forward`` carries the recurrent state (Mamba, S4D) carry it from each window
    to the next: every byte is predicted from all the bytes before it in its row. Other models
    (SeRpEnt) carry it through ``step()`` with ``exact=True`` (one position at a time: slow,
    for final evaluations); with ``exact=False`` (the training loop's validation) each window
    is run in parallel after the previous window as left context, so every byte sees at least
    ``seq_len`` bytes before it. At most ``batch_size - 1`` bytes at the end are not scored.
    """
    model.eval()
    ids = stream.to(torch.int64) + 3  # BYTE_VOCAB ids
    rows = max(1, min(batch_size, len(ids) - 1))
    per = (len(ids) - 1) // rows
    if per < 1:
        raise ValueError(f"stream: expected at least 2 bytes to score, got {len(ids)}")
    x = ids[: rows * per].view(rows, per).to(device)
    y = ids[1 : rows * per + 1].view(rows, per).to(device)
    carry = getattr(model, "carries_state_in_forward", True)
    state = None if carry or not exact else model.allocate_state(rows)
    nll, correct = 0.0, 0
    for start in range(0, per, seq_len):
        xi, yi = x[:, start : start + seq_len], y[:, start : start + seq_len]
        if carry:
            logits, state = model(xi, state=state, return_state=True)
        elif exact:
            logits = torch.stack([_step(model, xi[:, t], state) for t in range(xi.shape[1])], 1)
        else:
            lo = max(0, start - seq_len)
            logits = model(x[:, lo : start + xi.shape[1]])[:, start - lo :]
        nll += float(F.cross_entropy(logits.flatten(0, 1).float(), yi.flatten(), reduction="sum"))
        correct += int((logits.argmax(-1) == yi).sum())
    model.train()
    n = rows * per
    loss = nll / n
    # ids are bytes here, so a token is a byte: perplexity per token = exp(loss)
    return {
        "loss": loss,
        "bits_per_byte": loss / math.log(2),
        "perplexity": math.exp(loss),
        "accuracy": correct / n,
        "n": n,
    }


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device="cpu") -> dict[str, float]:
    """Mean cross-entropy and accuracy over the whole ``dataset``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pad_collate)
    total = correct = 0
    loss_sum = 0.0
    for batch in loader:
        batch = _to(batch, device)
        logits = _forward(model, batch)
        loss_sum += float(F.cross_entropy(logits.float(), batch["labels"], reduction="sum"))
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    model.train()
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1), "n": total}


def _step(model: nn.Module, ids_t: torch.Tensor, state: list) -> torch.Tensor:
    """``model.step`` that updates ``state`` (a list) in place and returns the logits."""
    logits, state[:] = model.step(ids_t, state)
    return logits


def reset_peak_memory(device) -> None:
    """Start a new peak-memory measurement (CUDA allocator stats; on Linux, the process's VmHWM)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not permitted: the peak is then that of the whole process


def peak_memory_mb(device) -> float:
    """Peak memory since ``reset_peak_memory``: CUDA allocated bytes, or resident set size."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class _Log:
    """``metrics.jsonl`` writer (rank 0 only); on resume, drops records after the checkpoint."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            kept = [
                ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step
            ]
            text = "".join(ln + "\n" for ln in kept).encode()
            atomic_write_bytes(path, lambda f: f.write(text))
        elif enabled and resume_step is None:
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def _config_key(cfg: RunConfig) -> str:
    """What a checkpoint must match to be resumed: the config without ``train.max_steps``."""
    d = cfg.to_dict()
    d["train"].pop("max_steps")
    return json.dumps(d, sort_keys=True)


# ----------------------------------------------------------------------------- the loop
def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    on_step: Callable[[int, float, nn.Module], None] | None = None,
    quiet: bool = False,
    compare_with: ModelConfig | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; return the summary (also in ``out_dir/summary.json``).

    ``on_step(step, loss, model)`` is called after every optimiser step (step counts from 1).
    ``compare_with``: another model config (a SeRpEnt run's backbone config) whose parameter
    count is printed beside this model's at the start.
    """
    out = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    device = torch.device(cfg.train.device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    main = rank == 0
    if cfg.data.batch_size % world:
        raise ValueError(
            f"data.batch_size: expected a multiple of the {world} processes (it is the global batch), "
            f"got {cfg.data.batch_size}"
        )

    reset_peak_memory(device)
    task = load_task(cfg.data)
    mcfg = model_config_for(cfg, task)
    torch.manual_seed(cfg.train.seed)
    model = build_model(mcfg).to(device)
    n_params = count_parameters(model)
    optimizer = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    is_lm = task.head == "lm"
    metric = "bits_per_byte" if is_lm else "accuracy"  # lower is better for bits per byte
    start_step, best_val, elapsed_before = 0, (math.inf if is_lm else -1.0), 0.0
    window = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, samples, tokens since the last log line
    ckpt_dir = out / "checkpoints"
    if resume:
        state = load_checkpoint(ckpt_dir)
        if state["config"] != _config_key(cfg):
            raise ValueError(
                f"{ckpt_dir}: the checkpoint was written by another config "
                "(only train.max_steps may change); resume with the same one"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, best_val = int(state["step"]), float(state["best_val"])
        elapsed_before = float(state["elapsed"])
        torch.set_rng_state(state["rng"])
        window = [float(x) for x in state["window"].tolist()]
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        if (ckpt_dir / "index.json").exists():
            raise ValueError(
                f"{out}: holds a run already; pass --resume to continue it or choose another --out"
            )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        if task.vocab is not None:
            (out / "vocab.json").write_text(json.dumps(task.vocab, indent=1) + "\n")
        if not quiet and start_step == 0:
            print(
                f"{mcfg.name}: {n_params:,} parameters; task {cfg.data.task}: {len(task.train)} train, "
                f"{len(task.val)} val, {len(task.test)} test samples",
                file=sys.stderr,
            )
    log = _Log(out / "metrics.jsonl", main, start_step if resume else None)

    net = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        net = torch.compile(net)
    use_bf16 = cfg.train.bf16 and device.type == "cuda"

    indices = batch_indices(len(task.train), cfg.data.batch_size, cfg.train.seed, start_step, rank, world)
    bar = _progress(cfg.train.max_steps, start_step, main and not quiet)
    t_start = time.perf_counter()
    window_loss, window_correct, window_n, window_tokens = window
    t_window = time.perf_counter()
    model.train()
    for step in range(start_step, cfg.train.max_steps):
        samples = [task.train[i] for i in next(indices)]
        batch = _to(lm_collate(samples) if is_lm else pad_collate(samples), device)
        for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
            g["lr"] = base * lr_factor(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = net(batch["inputs"]) if is_lm else _forward(net, batch)
        loss = F.cross_entropy(logits.flatten(0, -2).float(), batch["labels"].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        done = step + 1
        loss_value = loss.item()
        n_scored = batch["labels"].numel()  # samples, or predicted bytes for a language model
        window_loss += loss_value * n_scored
        window_correct += int((logits.argmax(-1) == batch["labels"]).sum())
        window_n += n_scored
        window_tokens += (n_scored if is_lm else _tokens(batch)) * world
        if on_step is not None:
            on_step(done, loss_value, model)
        if bar is not None:
            bar.update(1)
        if done % cfg.train.log_every == 0 or done == cfg.train.max_steps:
            dt = time.perf_counter() - t_window
            record = {
                "step": done,
                "split": "train",
                "loss": window_loss / window_n,
                "accuracy": window_correct / window_n,
                "lr": optimizer.param_groups[0]["lr"],
                "tokens_per_s": window_tokens / max(dt, 1e-9),
            }
            log.write(record)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}",
                    acc=f"{record['accuracy']:.3f}",
                    tok_s=f"{record['tokens_per_s']:.0f}",
                )
            window_loss = window_correct = window_n = window_tokens = 0
            t_window = time.perf_counter()
        if done % cfg.train.eval_every == 0 or done == cfg.train.max_steps:
            if main:
                if is_lm:
                    metrics = evaluate_lm(
                        model, task.val, cfg.data.seq_len, cfg.data.eval_batch_size, device, exact=False
                    )
                else:
                    metrics = evaluate(model, task.val, cfg.data.eval_batch_size, device)
                log.write({"step": done, "split": "val", **metrics})
                value = metrics[metric]
                if (value < best_val) if is_lm else (value > best_val):
                    best_val = value
                    save_pretrained(model, out / "best")
            if distributed:
                dist.barrier()
            t_window = time.perf_counter()  # evaluation time is not training throughput
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.max_steps:
            if main:
                save_checkpoint(
                    ckpt_dir,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "step": done,
                        "best_val": best_val,
                        "elapsed": elapsed_before + time.perf_counter() - t_start,
                        "rng": torch.get_rng_state(),
                        "config": _config_key(cfg),
                        "window": torch.tensor(
                            [window_loss, window_correct, window_n, window_tokens], dtype=torch.float64
                        ),
                    },
                    done,
                )
            if distributed:
                dist.barrier()
    if bar is not None:
        bar.close()
    wall = elapsed_before + time.perf_counter() - t_start
    train_records = []
    if main and (out / "metrics.jsonl").exists():
        train_records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    speeds = [r["tokens_per_s"] for r in train_records if r["split"] == "train"]
    summary = {
        "task": cfg.data.task,
        "model": mcfg.name,
        "parameters": n_params,
        "steps": cfg.train.max_steps,
        "metric": metric,
        "best_val": best_val,
        "tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "peak_memory_mb": peak_memory_mb(device),
        "wall_time_s": wall,
        "world_size": world,
        "seed": cfg.train.seed,
    }
    if main:
        save_pretrained(model, out / "final")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
