"""Argument checks shared by the resampling ops."""

from __future__ import annotations

import torch

from serpent_ssm.utils.validation import check_device

__all__ = ["check_devices"]


def check_devices(device: torch.device, **tensors: object) -> None:
    """Raise ``ValueError`` naming the first of ``tensors`` that is a tensor on another device than
    ``device`` (None and non-tensors are skipped). Attributes only: no value is read."""
    for name, x in tensors.items():
        if isinstance(x, torch.Tensor):
            check_device(name, x, device)
