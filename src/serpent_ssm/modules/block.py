"""Pre-norm residual block: ``x + drop(mixer(norm(x)))`` and an optional MLP sub-block."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from serpent_ssm.modules.protocol import StateSupport, select_rows, state_support
from serpent_ssm.utils.sequence import zero_padding
from serpent_ssm.utils.validation import check_positive_int

__all__ = ["Block", "make_norm"]

NORMS = ("rms", "layer")


def make_norm(kind: str, d_model: int, eps: float = 1e-5) -> nn.Module:
    """``"rms"`` -> ``nn.RMSNorm``, ``"layer"`` -> ``nn.LayerNorm``."""
    if kind == "rms":
        return nn.RMSNorm(d_model, eps=eps)
    if kind == "layer":
        return nn.LayerNorm(d_model, eps=eps)
    raise ValueError(f"norm: expected one of {', '.join(map(repr, NORMS))}, got {kind!r}")


class _MLP(nn.Module):
    """GELU MLP ``D -> hidden -> D``."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm residual block around a mixer.

    ``y = x + dropout(mixer(norm(x), mask))``, then, when ``mlp_ratio > 0``,
    ``y = y + dropout(mlp(norm2(y)))``. Shapes: ``(B, L, d_model) -> (B, L, d_model)``.

    Args:
        d_model: width.
        mixer: any module ``(x, mask=None) -> y`` of the same width (Mamba, S4D,
            Bidirectional, SeRpEnt, or your own).
        norm: ``"rms"`` or ``"layer"``.
        mlp_ratio: hidden width of the MLP as a multiple of ``d_model``; 0 = no MLP.
        dropout: dropout on each residual branch.
    """

    def __init__(
        self,
        d_model: int,
        mixer: nn.Module,
        norm: str = "rms",
        norm_eps: float = 1e-5,
        mlp_ratio: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        if not isinstance(mixer, nn.Module):
            raise ValueError(f"mixer: expected an nn.Module, got {type(mixer).__name__}")
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio: expected a number >= 0, got {mlp_ratio!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.norm = make_norm(norm, d_model, norm_eps)
        self.mixer = mixer
        self.dropout = nn.Dropout(dropout)
        hidden = round(mlp_ratio * d_model)
        self.norm2 = make_norm(norm, d_model, norm_eps) if hidden > 0 else None
        self.mlp = _MLP(d_model, hidden) if hidden > 0 else None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: Any = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """``x (B, L, d_model)``, ``mask (B, L)`` -> ``(B, L, d_model)``, 0 at padding.

        Whatever ``x`` holds at padding (NaN and Inf included) is replaced by zeros first, so it
        reaches no real output and no gradient (the norms' and the MLP's included).

        ``state`` / ``return_state``: passed to mixers whose ``forward`` carries a recurrent
        state across calls (``state_support(mixer).forward_state``: Mamba, S4D, causal SeRpEnt),
        for processing a long sequence in chunks.
        """
        x = zero_padding(x, mask)
        if state is None and not return_state:
            m = self.mixer(self.norm(x), mask=mask)
        else:
            if not state_support(self.mixer).forward_state:
                raise ValueError(
                    f"state: {type(self.mixer).__name__}.forward carries no state across calls; "
                    "use step() for streaming"
                )
            m, state = self.mixer(self.norm(x), mask=mask, state=state, return_state=True)
        y = x + self.dropout(m)
        if self.mlp is not None:
            y = zero_padding(y + self.dropout(self.mlp(self.norm2(y))), mask)
        return (y, state) if return_state else y

    @property
    def state_support(self) -> StateSupport:
        """The mixer's (the block itself keeps no state)."""
        return state_support(self.mixer)

    def allocate_state(self, batch: int, device=None, dtype=None) -> Any:
        """The mixer's recurrent state (the block itself keeps none)."""
        return self.mixer.allocate_state(batch, device=device, dtype=dtype)

    def select_state(self, state: Any, index: torch.Tensor) -> Any:
        """Rows ``index (B',)`` of the mixer's recurrent state (``modules.protocol.select_rows``)."""
        return select_rows(self.mixer, state, index)

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One recurrent step ``x_t (B, d_model) -> (B, d_model)`` through the mixer's ``step``."""
        m, state = self.mixer.step(self.norm(x_t), state)
        y = x_t + self.dropout(m)
        if self.mlp is not None:
            y = y + self.dropout(self.mlp(self.norm2(y)))
        return y, state
