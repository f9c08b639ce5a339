"""The training loop behind ``serpent train``: ``train(config, out_dir)``.

- AdamW with parameter groups: weight decay only on matrices (``dim >= 2``) not flagged
  ``_no_weight_decay``; parameters carrying an ``_optim`` hint (the S4D SSM parameters) get
  their own group with ``optim.ssm_lr`` (or the hint's lr) and no weight decay.
- Linear warmup, then cosine decay to ``min_lr_ratio * lr``; gradient clipping (each training
  line of ``metrics.jsonl`` gives the mean gradient norm before clipping, ``grad_norm``, and the
  share of its steps that were clipped, ``clipped``).
- Seeds: the same config and seed give identical results on the CPU; the data order is a
  function of (seed, epoch) only, so it can be restarted at any step (``batches.py``).
- Logs: ``metrics.jsonl`` (one JSON object per log or evaluation; a ``Window`` gathers the
  training lines: ``metrics_log.py``), a progress bar (tqdm when installed), ``summary.json`` at
  the end. ``config.json`` holds the run config and ``code_commit``
  (``train.run_files.write_run_config``). Evaluation (``evaluation.py``) on the validation split
  every ``eval_every`` steps; the best model (the task's metric: validation accuracy, or bits per
  byte for language modelling) is saved in ``best/`` and the final one in ``final/``
  (``config.json`` + ``model.safetensors``).
- Checkpoints every ``checkpoint_every`` steps (``checkpoint.py``: atomic, hashed, previous
  kept); ``resume=True`` continues exactly (``resume.py``): model, optimiser, schedule, RNG and
  data position are restored and metrics logged after the checkpoint are dropped, so the loss
  curve equals an uninterrupted run's.
- Distributed (``distributed.py``): under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped
  in DistributedDataParallel (gloo on CPU, NCCL on GPU); ``data.batch_size`` is the global batch,
  split evenly over ranks; rank 0 logs, evaluates and writes.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from serpent_ssm.data.collate import lm_collate, pad_collate
from serpent_ssm.models import ModelConfig, build_model, count_parameters, save_pretrained
from serpent_ssm.train.batches import _forward, _to, _tokens, batch_indices
from serpent_ssm.train.checkpoint import save_checkpoint
from serpent_ssm.train.config import RunConfig, model_config_for
from serpent_ssm.train.distributed import _Process, _setup_process, _wrap
from serpent_ssm.train.evaluation import evaluate_split
from serpent_ssm.train.metrics_log import _Log, _progress
from serpent_ssm.train.resume import _config_key, _fresh_start, _Position, _resume
from serpent_ssm.train.run_files import (
    LOCK,
    RunLock,
    prepare_run_dir,
    remove_stale_temporaries,
    write_run_config,
)
from serpent_ssm.train.tasks import TaskData, load_task
from serpent_ssm.utils.machine import machine_info
from serpent_ssm.utils.memory import peak_memory_mb, reset_peak_memory

__all__ = ["initial_model", "make_optimizer", "train"]


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
