"""The training loop behind ``serpent train``: ``train(config, out_dir)``.

- AdamW with parameter groups: weight decay only on matrices (``dim >= 2``) not flagged
  ``_no_weight_decay``; parameters carrying an ``_optim`` hint (the S4D SSM parameters) get
  their own group with ``optim.ssm_lr`` (or the hint's lr) and no weight decay.
- Linear warmup, then cosine decay to ``min_lr_ratio * lr``; gradient clipping (each training
  line of ``metrics.jsonl`` gives the mean gradient norm before clipping, ``grad_norm``, and the
  share of its steps that were clipped, ``clipped``).
- Seeds: the same config and seed give identical results on the CPU; the data order is a
  function of (seed, epoch) only, so it can be restarted at any step.
- Logs: ``metrics.jsonl`` (one JSON object per log or evaluation; a ``Window`` gathers the
  training lines), a progress bar (tqdm when installed), ``summary.json`` at the end.
  ``config.json`` holds the run config and ``code_commit`` (``train.run_files.write_run_config``).
  Evaluation on the validation split every ``eval_every`` steps; the best model (the task's
  metric: validation accuracy, or bits per byte for language modelling) is saved in ``best/``
  and the final one in ``final/`` (``config.json`` + ``model.safetensors``).
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
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from serpent_ssm.data.collate import lm_collate, pad_collate
from serpent_ssm.data.vocab import BYTE_VOCAB
from serpent_ssm.models import ModelConfig, build_model, count_parameters, save_pretrained
from serpent_ssm.train.checkpoint import load_checkpoint, save_checkpoint
from serpent_ssm.train.config import DataConfig, RunConfig, model_config_for
from serpent_ssm.train.run_files import (
    LOCK,
    RunLock,
    prepare_run_dir,
    read_metrics_file,
    remove_stale_temporaries,
    write_run_config,
)
from serpent_ssm.train.tasks import TaskData, load_task
from serpent_ssm.utils.io import atomic_write_bytes
from serpent_ssm.utils.machine import machine_info
from serpent_ssm.utils.memory import peak_memory_mb, reset_peak_memory

__all__ = [
    "Window",
    "evaluate",
    "evaluate_lm",
    "evaluate_split",
    "initial_model",
    "make_optimizer",
    "train",
]


# ----------------------------------------------------------------------------- pieces
def initial_model(cfg: RunConfig) -> nn.Module:
    """The model of ``cfg`` at step 0, on the CPU: the global RNG seeded with ``train.seed``, then
    ``build_model`` of the resolved config (``model_config_for``). ``train`` starts from it; the
    analysis rebuilds a run's starting weights with it (under ``torch.random.fork_rng``)."""
    torch.manual_seed(cfg.train.seed)
    return build_model(model_config_for(cfg.model, cfg.data.task))


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


# ----------------------------------------------------------------------------- evaluation
def _step(model: nn.Module, ids_t: torch.Tensor, state: list) -> torch.Tensor:
    """``model.step`` that updates ``state`` (a list) in place and returns the logits ``(B, V)``."""
    logits, state[:] = model.step(ids_t, state)
    return logits


@torch.no_grad()
def evaluate_lm(
    model: nn.Module, stream: torch.Tensor, seq_len: int, batch_size: int, device="cpu", exact: bool = True
) -> dict:
    """Next-byte loss, bits per byte, perplexity and accuracy over a byte stream ``(T,)`` uint8.

    The stream is cut into ``batch_size`` contiguous rows ``(rows, T // rows)`` scored in
    parallel, window by window (``seq_len`` bytes). What ``model.state_support`` declares decides
    how the recurrent state crosses windows: ``forward_state`` (every model of this library:
    Mamba, S4D and causal SeRpEnt): ``forward`` carries it from each window to the next, so every
    byte is predicted from all the bytes before it in its row, and ``exact`` changes nothing.
    A model of mixers without it (a user's backbone) is scored, with ``exact=True``, through
    ``step()`` (one position at a time: slow; needs ``step``), and with ``exact=False`` each
    window in parallel after the previous window as left context, so every byte sees at least
    ``seq_len`` bytes before it. At most ``batch_size - 1`` bytes at the end are not scored.
    """
    if stream.dtype != torch.uint8 or stream.dim() != 1 or len(stream) < 2:
        raise ValueError(
            f"stream: expected a (T,) uint8 tensor of at least 2 bytes to score, "
            f"got {stream.dtype} of shape {tuple(stream.shape)}"
        )
    support = model.state_support
    carry = support.forward_state
    if exact and not carry and not support.step:
        raise ValueError(f"model.state_support: expected step or forward_state for exact=True, got {support}")
    model.eval()
    ids = BYTE_VOCAB.encode_bytes(stream.cpu().numpy().tobytes())
    rows = max(1, min(batch_size, len(ids) - 1))
    per = (len(ids) - 1) // rows
    x = ids[: rows * per].view(rows, per).to(device)
    y = ids[1 : rows * per + 1].view(rows, per).to(device)
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
    """Mean cross-entropy and accuracy over the whole ``dataset`` (``pad_collate`` batches)."""
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


def evaluate_split(
    model: nn.Module, task: TaskData, split: str, data: DataConfig, device="cpu", exact: bool = True
) -> dict[str, float]:
    """``evaluate_lm`` (language models; ``exact`` as there) or ``evaluate`` on ``task``'s
    ``split`` ("train", "val" or "test"), batched as ``data`` says."""
    dataset = getattr(task, split)
    if task.spec.is_lm:
        return evaluate_lm(model, dataset, data.seq_len, data.eval_batch_size, device, exact=exact)
    return evaluate(model, dataset, data.eval_batch_size, device)


# ----------------------------------------------------------------------------- the logging window
@dataclass
class Window:
    """Training statistics since the last ``metrics.jsonl`` line: summed loss, correct
    predictions and scored samples (predicted bytes for a language model) of this process,
    tokens seen by all processes, optimisation steps, their summed gradient norms (before
    clipping) and how many of them were clipped; ``started`` is the ``time.perf_counter()`` its
    throughput counts from. A checkpoint stores it as ``to_tensor()``: float64 ``[loss_sum,
    correct, samples, tokens, steps, grad_norm_sum, clipped]``.
    """

    loss_sum: float = 0.0
    correct: int = 0
    samples: int = 0
    tokens: int = 0
    steps: int = 0
    grad_norm_sum: float = 0.0
    clipped: int = 0
    started: float = field(default_factory=time.perf_counter)

    FIELDS: ClassVar[tuple[str, ...]] = (
        "loss_sum", "correct", "samples", "tokens", "steps", "grad_norm_sum", "clipped"
    )  # fmt: skip

    def add(
        self,
        mean_loss: float,
        correct: int,
        samples: int,
        tokens: int,
        grad_norm: float | None = None,
        clipped: bool = False,
    ) -> None:
        """One batch: its mean loss over ``samples`` scored ones, ``correct`` of them, ``tokens``,
        and, for an optimisation step, the gradient norm before clipping and whether it was clipped."""
        self.loss_sum += mean_loss * samples
        self.correct += correct
        self.samples += samples
        self.tokens += tokens
        if grad_norm is not None:
            self.steps += 1
            self.grad_norm_sum += grad_norm
            self.clipped += int(clipped)

    def record(self, step: int, lr: float) -> dict[str, Any]:
        """The ``metrics.jsonl`` line of the window ending at ``step``: with the mean gradient norm
        before clipping (``grad_norm``) and the share of steps clipped (``clipped``) over the
        window's steps that recorded one (none after resuming from an older checkpoint's window)."""
        seconds = time.perf_counter() - self.started
        record = {
            "step": step,
            "split": "train",
            "loss": self.loss_sum / self.samples,
            "accuracy": self.correct / self.samples,
            "lr": lr,
            "tokens_per_s": self.tokens / max(seconds, 1e-9),
        }
        if self.steps:
            record["grad_norm"] = self.grad_norm_sum / self.steps
            record["clipped"] = self.clipped / self.steps
        return record

    def reset(self) -> None:
        """Start the next window (zero sums, the clock from now)."""
        for name in self.FIELDS:
            setattr(self, name, type(getattr(self, name))(0))
        self.restart_clock()

    def restart_clock(self) -> None:
        """Count throughput from now (after an evaluation, which is not training time)."""
        self.started = time.perf_counter()

    def to_tensor(self) -> torch.Tensor:
        """``(7,)`` float64 ``[loss_sum, correct, samples, tokens, steps, grad_norm_sum, clipped]``
        (a checkpoint's ``window``)."""
        return torch.tensor([float(getattr(self, name)) for name in self.FIELDS], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Window:
        """Inverse of ``to_tensor``; reads the ``window`` of any checkpoint this loop wrote,
        including the ``(4,)`` ``[loss_sum, correct, samples, tokens]`` of versions before the
        gradient norms were logged (their window then has no gradient norms)."""
        if not isinstance(t, torch.Tensor) or tuple(t.shape) not in {(4,), (7,)}:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                "window: expected a (7,) tensor [loss_sum, correct, samples, tokens, steps, "
                f"grad_norm_sum, clipped] or an older checkpoint's (4,) one, got {got}"
            )
        values = t.tolist()
        return cls(**{
            name: type(getattr(cls, name))(v) for name, v in zip(cls.FIELDS, values, strict=False)
        })  # fmt: skip


# ----------------------------------------------------------------------------- set-up
@dataclass
class _Process:
    """This process: ``rank`` of ``world`` (one unless under torchrun), computing on ``device``."""

    world: int
    rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: logs, evaluates and writes."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _setup_process(cfg: RunConfig) -> _Process:
    """Join the process group under torchrun (``WORLD_SIZE > 1``) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(cfg.train.device)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, AttributeError):  # e.g. a CPU build of torch asked for cuda
        raise ValueError(
            f"train.device: expected a device available here (cpu), got {cfg.train.device!r}, which this "
            "torch build or machine does not provide; override it with --set train.device=cpu"
        ) from None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if cfg.data.batch_size % world:
        raise ValueError(
            f"data.batch_size: expected a multiple of the {world} processes (it is the global batch), "
            f"got {cfg.data.batch_size}"
        )
    return _Process(world, rank, device)


def _wrap(model: nn.Module, cfg: RunConfig, proc: _Process) -> nn.Module:
    """The module trained: ``model`` in DistributedDataParallel when distributed, compiled if asked."""
    net = model
    if proc.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[proc.device] if proc.device.type == "cuda" else None
        )
    return torch.compile(net) if cfg.train.compile else net


class _Log:
    """``metrics.jsonl`` writer (rank 0 only); on resume, drops records after the checkpoint."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            kept = [r for r in read_metrics_file(path) if r["step"] <= resume_step]
            text = "".join(json.dumps(r) + "\n" for r in kept).encode()
            atomic_write_bytes(path, lambda f: f.write(text))
        elif enabled and resume_step is None:
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far (none on other ranks)."""
        if not (self.enabled and self.path.exists()):
            return []
        return read_metrics_file(self.path)


def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def _comparison(
    cfg: RunConfig, task: TaskData, other: ModelConfig | None, source: str | None
) -> dict[str, Any] | None:
    """Name, ``source`` and parameter count of the model ``other`` describes, with this run's
    task facts filled in (built on the meta device: nothing is allocated). None without ``other``."""
    if other is None:
        return None
    filled = model_config_for(other, cfg.data.task)
    with torch.device("meta"):
        n = count_parameters(build_model(filled))
    return {"model": filled.name, "source": source, "parameters": n}


def _start_line(
    cfg: RunConfig, mcfg: ModelConfig, n_params: int, task: TaskData, compare: dict | None
) -> str:
    """What ``train`` prints first: the model's size (and the compared one's) and the data's."""
    other = ""
    if compare is not None:
        where = f" from {compare['source']}" if compare["source"] else ""
        other = f" ({compare['model']}{where}: {compare['parameters']:,}, ratio {compare['ratio']:.2f})"
    return (
        f"{mcfg.name}: {n_params:,} parameters{other}; task {cfg.data.task}: {len(task.train)} train, "
        f"{len(task.val)} val, {len(task.test)} test samples"
    )


# ----------------------------------------------------------------------------- resume, checkpoints
def _config_key(cfg: RunConfig) -> str:
    """What a checkpoint must match to be resumed: the config without ``train.max_steps``."""
    d = cfg.to_dict()
    d["train"].pop("max_steps")
    return json.dumps(d, sort_keys=True)


def _first_difference(saved: Any, current: Any, path: str = "") -> tuple[str, Any, Any]:
    """The first key path (``optim.lr``) where two configs differ, with both values."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            if saved.get(key) != current.get(key):
                return _first_difference(saved.get(key), current.get(key), f"{path}{key}.")
    return path.rstrip(".") or "config", saved, current


@dataclass
class _Position:
    """Where this process starts (``step`` done, seconds trained before it) and what the run
    carries on updating: the best validation value, the logging window."""

    step: int
    best_val: float
    elapsed_before: float = 0.0
    window: Window = field(default_factory=Window)


def _fresh_start(out: Path, ckpt_dir: Path, task: TaskData, main: bool) -> _Position:
    """Step 0; refuses a directory that holds a run's checkpoints already."""
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if (ckpt_dir / "index.json").exists():
            raise ValueError(
                f"{out}: holds a run already; pass --resume to continue it or choose another --out"
            )
    return _Position(step=0, best_val=task.spec.worst)


def _resume(ckpt_dir: Path, cfg: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer) -> _Position:
    """Restore model, optimiser and RNG from the last good checkpoint; where the run stood."""
    state = load_checkpoint(ckpt_dir)
    if state["config"] != _config_key(cfg):
        key, saved, current = _first_difference(json.loads(state["config"]), json.loads(_config_key(cfg)))
        raise ValueError(
            f"{ckpt_dir}: the checkpoint was written by another config ({key}: expected {saved!r} as "
            f"there, got {current!r}; only train.max_steps may change); resume with the same one"
        )
    if int(state["step"]) > cfg.train.max_steps:
        raise ValueError(
            f"train.max_steps: expected at least {int(state['step'])} (the step of the checkpoint in "
            f"{ckpt_dir}) to resume, got {cfg.train.max_steps}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return _Position(
        step=int(state["step"]),
        best_val=float(state["best_val"]),
        elapsed_before=float(state["elapsed"]),
        window=Window.from_tensor(state["window"]),
    )


# ----------------------------------------------------------------------------- one run
@dataclass
class _Run:
    """One training run as it goes: what every piece of the loop reads and updates."""

    cfg: RunConfig
    out: Path
    proc: _Process
    task: TaskData
    model: nn.Module
    net: nn.Module  # ``model`` as trained: in DDP and/or compiled
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]  # each parameter group's lr before the schedule's factor
    pos: _Position
    log: _Log
    bar: Any  # tqdm progress bar, or None
    t_start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds trained, this process and the ones before a resume."""
        return self.pos.elapsed_before + time.perf_counter() - self.t_start


def _optimisation_step(run: _Run, step: int, indices: Iterator[list[int]]) -> float:
    """Step ``step`` (0-based): this rank's batch, forward, backward, clip, update; adds the batch
    to the logging window and returns its mean loss."""
    cfg, device, is_lm = run.cfg, run.proc.device, run.task.spec.is_lm
    samples = [run.task.train[i] for i in next(indices)]
    batch = _to(lm_collate(samples) if is_lm else pad_collate(samples), device)
    for g, base in zip(run.optimizer.param_groups, run.base_lrs, strict=True):
        g["lr"] = base * lr_factor(step, cfg)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16 and device.type == "cuda"):
        logits = run.net(batch["inputs"]) if is_lm else _forward(run.net, batch)
    loss = F.cross_entropy(logits.flatten(0, -2).float(), batch["labels"].flatten())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = cfg.optim.grad_clip
    if clip:  # the norm before clipping
        grad_norm = float(nn.utils.clip_grad_norm_(run.model.parameters(), clip))
    else:
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        grad_norm = float(nn.utils.get_total_norm(grads)) if grads else 0.0
    run.optimizer.step()
    loss_value = loss.item()
    n_scored = batch["labels"].numel()  # samples, or predicted bytes for a language model
    correct = int((logits.argmax(-1) == batch["labels"]).sum())
    run.pos.window.add(
        loss_value,
        correct,
        n_scored,
        (n_scored if is_lm else _tokens(batch)) * run.proc.world,
        grad_norm=grad_norm,
        clipped=bool(clip) and grad_norm > clip,
    )
    return loss_value


def _log_window(run: _Run, done: int) -> None:
    """Write the logging window's line after step ``done`` and start the next window."""
    record = {**run.pos.window.record(done, run.optimizer.param_groups[0]["lr"]), "elapsed_s": run.elapsed()}
    run.log.write(record)
    if run.bar is not None:
        run.bar.set_postfix(
            loss=f"{record['loss']:.3f}",
            acc=f"{record['accuracy']:.3f}",
            tok_s=f"{record['tokens_per_s']:.0f}",
        )
    run.pos.window.reset()


def _validate(run: _Run, done: int) -> None:
    """Rank 0 evaluates on the validation split, logs it, and saves ``best/`` when it improves."""
    if run.proc.main:
        spec = run.task.spec
        metrics = evaluate_split(run.model, run.task, "val", run.cfg.data, run.proc.device, exact=False)
        run.log.write({"step": done, "split": "val", **metrics, "elapsed_s": run.elapsed()})
        if spec.improves(metrics[spec.metric], run.pos.best_val):
            run.pos.best_val = metrics[spec.metric]
            save_pretrained(run.model, run.out / "best")
    run.proc.barrier()
    run.pos.window.restart_clock()  # evaluation time is not training throughput


def _checkpoint(run: _Run, done: int) -> None:
    """Rank 0 saves everything ``_resume`` restores, as of step ``done``."""
    if run.proc.main:
        state = {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "step": done,
            "best_val": run.pos.best_val,
            "elapsed": run.elapsed(),
            "rng": torch.get_rng_state(),
            "config": _config_key(run.cfg),
            "window": run.pos.window.to_tensor(),
        }
        save_checkpoint(run.out / "checkpoints", state, done)
    run.proc.barrier()


def _after_step(run: _Run, done: int) -> None:
    """Log, evaluate and checkpoint when their period (or the last step) comes."""
    t = run.cfg.train
    last = done == t.max_steps
    if done % t.log_every == 0 or last:
        _log_window(run, done)
    if done % t.eval_every == 0 or last:
        _validate(run, done)
    if done % t.checkpoint_every == 0 or last:
        _checkpoint(run, done)


def _summary(run: _Run, mcfg: ModelConfig, n_params: int, compare: dict | None) -> dict[str, Any]:
    """The run's summary; rank 0 also saves ``final/`` and ``summary.json``."""
    speeds = [r["tokens_per_s"] for r in run.log.records() if r["split"] == "train"]
    summary = {
        "task": run.cfg.data.task,
        "model": mcfg.name,
        "parameters": n_params,
        "steps": run.cfg.train.max_steps,
        "metric": run.task.spec.metric,
        "best_val": run.pos.best_val,
        "tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "peak_memory_mb": peak_memory_mb(run.proc.device),
        "wall_time_s": run.elapsed(),
        "world_size": run.proc.world,
        "seed": run.cfg.train.seed,
        "compare_parameters": compare,
        "machine": machine_info(run.proc.device),  # tokens/s compare only on one machine
    }
    if run.proc.main:
        save_pretrained(run.model, run.out / "final")
        (run.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _write_run_files(out: Path, cfg: RunConfig, task: TaskData) -> None:
    """``config.json`` (with the code's commit) and, for token tasks, ``vocab.json``."""
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, cfg)
    if task.vocab is not None:
        (out / "vocab.json").write_text(json.dumps(task.vocab, indent=1) + "\n")


# ----------------------------------------------------------------------------- the loop
def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    on_step: Callable[[int, float, nn.Module], None] | None = None,
    quiet: bool = False,
    compare_with: ModelConfig | None = None,
    compare_source: str | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; return the summary (also in ``out_dir/summary.json``).

    ``on_step(step, loss, model)`` is called after every optimiser step (step counts from 1).
    ``compare_with``: another model config (a SeRpEnt run's backbone config), filled with the
    same task facts; its parameter count is printed beside this model's at the start (with
    ``compare_source``, where it came from, e.g. ``mamba.yaml``) and recorded in the summary as
    ``compare_parameters`` (``model``, ``source``, ``parameters``, ``ratio`` = ours / theirs).
    """
    out = Path(out_dir)
    proc = _setup_process(cfg)
    created = not out.exists()
    if proc.main:
        prepare_run_dir(out)
    try:
        with RunLock(out, enabled=proc.main):
            if proc.main:
                remove_stale_temporaries(out)
            return _train_in(cfg, out, proc, resume, on_step, quiet, compare_with, compare_source)
    except BaseException:
        if proc.main and created and {p.name for p in out.iterdir()} <= {LOCK}:
            shutil.rmtree(out, ignore_errors=True)  # failed before writing anything: leave no trace
        raise


def _train_in(
    cfg: RunConfig,
    out: Path,
    proc: _Process,
    resume: bool,
    on_step: Callable[[int, float, nn.Module], None] | None,
    quiet: bool,
    compare_with: ModelConfig | None,
    compare_source: str | None,
) -> dict[str, Any]:
    """``train`` inside the run directory's lock."""
    reset_peak_memory(proc.device)
    task = load_task(cfg.data)
    mcfg = model_config_for(cfg.model, cfg.data.task)
    compare = _comparison(cfg, task, compare_with, compare_source)  # before the seed: no RNG use
    model = initial_model(cfg).to(proc.device)
    n_params = count_parameters(model)
    if compare is not None:
        compare["ratio"] = n_params / compare["parameters"]
    optimizer = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a resume loads scheduled ones
    if resume:
        pos = _resume(out / "checkpoints", cfg, model, optimizer)
    else:
        pos = _fresh_start(out, out / "checkpoints", task, proc.main)
    if proc.main:
        _write_run_files(out, cfg, task)
        if not quiet and pos.step == 0:
            print(_start_line(cfg, mcfg, n_params, task, compare), file=sys.stderr)
    log = _Log(out / "metrics.jsonl", proc.main, pos.step if resume else None)
    net = _wrap(model, cfg, proc)
    indices = batch_indices(
        len(task.train), cfg.data.batch_size, cfg.train.seed, pos.step, proc.rank, proc.world
    )
    bar = _progress(cfg.train.max_steps, pos.step, proc.main and not quiet)
    run = _Run(cfg, out, proc, task, model, net, optimizer, base_lrs, pos, log, bar)
    pos.window.restart_clock()
    model.train()
    for step in range(pos.step, cfg.train.max_steps):
        loss_value = _optimisation_step(run, step, indices)
        if on_step is not None:
            on_step(step + 1, loss_value, model)
        if run.bar is not None:
            run.bar.update(1)
        _after_step(run, step + 1)
    if run.bar is not None:
        run.bar.close()
    return _summary(run, mcfg, n_params, compare)
