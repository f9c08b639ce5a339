"""Small pieces shared by the recurrent mixers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def empty_sequence_output(mixer: nn.Module, x: torch.Tensor, state: Any, return_state: bool) -> Any:
    """Output of a mixer for a length-0 input ``x (B, 0, D)``: nothing to mix, the state passes through."""
    out = x.new_zeros(x.shape[0], 0, mixer.d_model)
    if not return_state:
        return out
    return out, state if state is not None else mixer.allocate_state(x.shape[0])
