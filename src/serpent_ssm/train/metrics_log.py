"""What a run logs as it trains: the ``Window`` of training statistics behind each training line of
``metrics.jsonl``, the ``metrics.jsonl`` writer, and the progress bar."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from serpent_ssm.train.run_files import read_metrics_file
from serpent_ssm.utils.io import atomic_write_bytes

__all__ = ["Window"]


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
