"""Training batches: their order (a function of seed and epoch only), moving one to a device, the
model's forward on one and its token count."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["batch_indices"]


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
