"""Bidirectional wrapper: a mixer run forwards and on the reversed sequence."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from serpent_ssm.modules.protocol import StateSupport
from serpent_ssm.utils.sequence import reverse_padded, zero_padding
from serpent_ssm.utils.validation import check_mixer_input, check_positive_int

__all__ = ["Bidirectional"]

COMBINES = ("add", "concat")


class Bidirectional(nn.Module):
    """Run one mixer on ``x`` and a second, independent one on ``x`` reversed; combine.

    With a mask, each row's *real* elements are reversed and its right padding stays at the
    end (``reverse_padded``), so the backward mixer also sees right padding and the result is
    padding-invariant whenever the wrapped mixer is (whatever the padding holds: it is passed to
    both mixers as it is, and each ignores it).

    Args:
        make_mixer: factory called twice, each call returning a fresh mixer
            ``(B, L, d_model) -> (B, L, d_model)`` that accepts ``mask=``.
        d_model: model width.
        combine: ``"add"`` (sum of both directions) or ``"concat"`` (a ``Linear(2D, D)`` over
            the concatenation).
    """

    state_support = StateSupport()  # it reads the future: no streaming, no chunks

    def __init__(self, make_mixer: Callable[[], nn.Module], d_model: int, combine: str = "add") -> None:
        super().__init__()
        if not callable(make_mixer):
            raise ValueError(
                f"make_mixer: expected a callable returning a mixer, got {type(make_mixer).__name__}"
            )
        self.d_model = check_positive_int("d_model", d_model)
        if combine not in COMBINES:
            raise ValueError(f"combine: expected one of {', '.join(map(repr, COMBINES))}, got {combine!r}")
        self.combine = combine
        self.forward_mixer = make_mixer()
        self.backward_mixer = make_mixer()
        if self.forward_mixer is self.backward_mixer:
            raise ValueError("make_mixer: expected a new mixer on every call, got the same object twice")
        self.proj = nn.Linear(2 * d_model, d_model) if combine == "concat" else None

    def intervals(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Both directions' selective intervals at each position, for mixers that have them
        (``Mamba.intervals``): ``x (B, L, d_model)`` -> ``(B, L, E_fwd + E_bwd)`` (0 at padding)."""
        for m in (self.forward_mixer, self.backward_mixer):
            if not callable(getattr(m, "intervals", None)):
                raise ValueError(
                    f"intervals: expected wrapped mixers with selective intervals (such as Mamba), "
                    f"got {type(m).__name__}"
                )
        fwd = self.forward_mixer.intervals(x, mask)
        bwd = reverse_padded(self.backward_mixer.intervals(reverse_padded(x, mask), mask), mask)
        return torch.cat([fwd, bwd], dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, L, d_model)``, ``mask (B, L)`` -> ``(B, L, d_model)`` (0 at padding)."""
        check_mixer_input(x, mask, self.d_model, self)
        y_fwd = self.forward_mixer(x, mask=mask)
        y_bwd = reverse_padded(self.backward_mixer(reverse_padded(x, mask), mask=mask), mask)
        if self.proj is None:
            y = y_fwd + y_bwd
        else:
            y = self.proj(torch.cat([y_fwd, y_bwd], dim=-1))
        return zero_padding(y, mask)
