"""LRA-style sequence classifiers: encoder -> pre-norm blocks -> masked mean pool -> head.

See docs/design.md, "Models".

The mixer of each block comes from ``make_mixer(layer_idx)`` (``models.mixers``; from a model
name: ``make_mixer_factory``), as for ``CausalLM``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from serpent_ssm.models.mixers import layer_factory
from serpent_ssm.modules.block import Block, make_norm
from serpent_ssm.utils.validation import check_positive_int

__all__ = ["RetrievalClassifier", "SequenceClassifier", "SequenceEncoder"]


class SequenceEncoder(nn.Module):
    """Right-padded sequences -> one vector each.

    ``tokens (B, L)`` int (with ``vocab_size``) or ``features (B, L, d_input)`` float (with
    ``d_input``) -> ``(B, d_model)``: encoder (embedding or linear) -> ``n_layers`` pre-norm
    residual blocks, block ``i`` around ``make_mixer(i)`` -> final norm -> masked mean pooling.
    """

    def __init__(
        self,
        make_mixer: Callable[[int], nn.Module],
        d_model: int,
        n_layers: int,
        vocab_size: int | None = None,
        d_input: int | None = None,
        norm: str = "rms",
        mlp_ratio: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_layers", n_layers)
        make_mixer = layer_factory(make_mixer)
        if (vocab_size is None) == (d_input is None):
            raise ValueError(
                "vocab_size, d_input: expected exactly one of them, "
                f"got vocab_size={vocab_size}, d_input={d_input}"
            )
        if vocab_size is not None:
            self.encoder: nn.Module = nn.Embedding(check_positive_int("vocab_size", vocab_size), d_model)
        else:
            self.encoder = nn.Linear(check_positive_int("d_input", d_input), d_model)
        self.d_input = d_input
        self.blocks = nn.ModuleList(
            Block(d_model, make_mixer(i), norm=norm, mlp_ratio=mlp_ratio, dropout=dropout)
            for i in range(n_layers)
        )
        self.norm = make_norm(norm, d_model)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``inputs (B, L)`` or ``(B, L, d_input)``, ``mask (B, L)`` -> ``(B, d_model)``."""
        if self.d_input is not None and inputs.dim() == 2:
            inputs = inputs.unsqueeze(-1)  # (B, L) pixels -> (B, L, 1)
        if self.d_input is not None and mask is not None:  # whatever the padding holds, zeros go in
            inputs = torch.where(mask.unsqueeze(-1), inputs, torch.zeros((), dtype=inputs.dtype))
        h = self.encoder(inputs)
        for block in self.blocks:
            h = block(h, mask=mask)
        h = self.norm(h)
        if mask is None:
            return h.mean(1)
        m = mask.unsqueeze(-1)
        pooled = torch.where(m, h, torch.zeros((), dtype=h.dtype)).sum(1)
        return pooled / m.sum(1).clamp_min(1).to(h.dtype)


class SequenceClassifier(nn.Module):
    """``SequenceEncoder`` -> linear head: ``inputs (B, L[, d_input])``, ``mask (B, L)`` ->
    logits ``(B, n_classes)``. Arguments as ``SequenceEncoder``, plus ``n_classes``."""

    def __init__(
        self, make_mixer: Callable[[int], nn.Module], d_model: int, n_layers: int, n_classes: int, **kwargs
    ):
        super().__init__()
        check_positive_int("n_classes", n_classes)
        self.encoder = SequenceEncoder(make_mixer, d_model, n_layers, **kwargs)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(inputs, mask))


class RetrievalClassifier(nn.Module):
    """Two-tower matching (LRA Retrieval): one shared ``SequenceEncoder`` gives
    ``u``, ``v`` for the two documents; an MLP on ``[u, v, u*v, u-v]`` gives logits
    ``(B, n_classes)``."""

    def __init__(
        self, make_mixer: Callable[[int], nn.Module], d_model: int, n_layers: int, n_classes: int, **kwargs
    ):
        super().__init__()
        check_positive_int("n_classes", n_classes)
        self.encoder = SequenceEncoder(make_mixer, d_model, n_layers, **kwargs)
        self.head = nn.Sequential(nn.Linear(4 * d_model, d_model), nn.GELU(), nn.Linear(d_model, n_classes))

    def forward(
        self,
        inputs: torch.Tensor,
        mask: torch.Tensor | None = None,
        inputs2: torch.Tensor | None = None,
        mask2: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Documents ``inputs (B, L1)``, ``inputs2 (B, L2)`` with masks -> logits ``(B, n_classes)``."""
        if inputs2 is None:
            raise ValueError("inputs2: expected the second document of each pair, got None")
        u, v = self.encoder(inputs, mask), self.encoder(inputs2, mask2)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))
