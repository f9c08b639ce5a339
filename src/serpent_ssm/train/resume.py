"""Where a run starts: step 0 in a fresh directory, or the state of its last good checkpoint (which
must come from the same config, ``train.max_steps`` aside)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serpent_ssm.train.checkpoint import load_checkpoint
from serpent_ssm.train.config import RunConfig
from serpent_ssm.train.metrics_log import Window
from serpent_ssm.train.tasks import TaskData


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
