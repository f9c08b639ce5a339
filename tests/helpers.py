"""Helpers shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

import torch


def right_padding_mask(lengths: list[int], length: int) -> torch.Tensor:
    """``(len(lengths), length)`` bool mask with ``lengths[b]`` real elements first in row ``b``."""
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str = ""
) -> None:
    """``torch.testing.assert_close`` with a label naming the compared quantity."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def run_steps(model, x: torch.Tensor) -> torch.Tensor:
    """Feed ``x (B, L, D)`` through ``model.step`` one element at a time; outputs ``(B, L, D)``."""
    with torch.no_grad():
        state = model.allocate_state(x.shape[0])
        outs = []
        for t in range(x.shape[1]):
            y_t, state = model.step(x[:, t], state)
            outs.append(y_t)
    return torch.stack(outs, 1)
