"""The merge of SeRpEnt's branches with ``mix="gates"``: a weight per branch and channel."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BranchGates"]


class BranchGates(nn.Module):
    """``mix="gates"``: ``(..., n·D)`` (the branch outputs, concatenated) -> ``(..., D)``,
    ``y = Σ_b weight[b] ⊙ ŷ_b + bias``; ``weight (n, D)`` starts at ``1/n`` (the mean of the
    branches) or, with ``full_only``, at 1 for the last branch (the full one) and 0 for the rest."""

    def __init__(self, n: int, d: int, full_only: bool = False) -> None:
        super().__init__()
        self.n, self.d = n, d
        weight = torch.full((n, d), 1.0 / n)
        if full_only:
            weight.zero_()
            weight[-1] = 1.0
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, branches: torch.Tensor) -> torch.Tensor:
        y = branches.unflatten(-1, (self.n, self.d))
        return (y * self.weight).sum(-2) + self.bias
