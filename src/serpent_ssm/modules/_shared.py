"""Small pieces shared by the recurrent mixers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def empty_sequence_output(mixer: nn.Module, x: torch.Tensor, state: Any, return_state: bool) -> Any:
    """Output of a mixer for an input with no element, ``x (B, 0, D)`` or ``(0, L, D)``: zeros of
    its shape; the state passes through."""
    out = x.new_zeros(x.shape[0], x.shape[1], mixer.d_model)
    if not return_state:
        return out
    return out, state if state is not None else mixer.allocate_state(x.shape[0])
