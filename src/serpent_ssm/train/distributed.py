"""This process of a run: its rank, the world size and its device (the process group joined under
torchrun), and the model wrapped as trained (DistributedDataParallel, ``torch.compile``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from serpent_ssm.train.config import RunConfig


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
