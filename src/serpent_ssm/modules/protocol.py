"""The mixer protocol and its one question about state: what can this mixer carry?

Every mixer maps ``x (B, L, d_model)`` to ``(B, L, d_model)`` through ``forward(x, mask=None)``
(``mask (B, L)`` bool, True = real element, right padding only). A mixer that can do more
declares it with a ``state_support`` attribute (a class attribute, or a property when it
depends on the instance's options):

- ``StateSupport.step``: ``allocate_state(batch, device=None, dtype=None) -> state`` and
  ``step(x_t (B, d_model), state) -> (y_t, state)``, constant memory per element (generation);
- ``StateSupport.forward_state``: ``forward(x, mask=None, state=None, return_state=False)``
  starts from ``state`` and returns the state after each row's last real element, so a long
  sequence can be processed in chunks (prefill, window-by-window evaluation).

``state_support(mixer)`` is the single place that reads the declaration; ``Block``,
``CausalLM.generate`` and the language-model evaluation ask it and nothing else. A mixer that
declares nothing supports neither.

A state is a tensor, one of the typed states of ``ops.states`` (``MambaState``,
``SeRpEntState``, ...), or a nest of dicts, lists and tuples of them (``map_state`` walks any of
them). Its rows are on dim 0 of every tensor unless the mixer says otherwise with a
``select_state(state, index)`` method; ``select_rows(mixer, state, index)`` picks rows (beam
search reorders its beams with it) either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from serpent_ssm.ops.states import map_state

__all__ = ["StateSupport", "map_state", "select_rows", "state_support"]


@dataclass(frozen=True)
class StateSupport:
    """What a mixer can do with a recurrent state (see the module docstring)."""

    step: bool = False
    forward_state: bool = False

    def __and__(self, other: StateSupport) -> StateSupport:
        """What a stack of two mixers supports: what both do."""
        return StateSupport(self.step and other.step, self.forward_state and other.forward_state)


NO_STATE = StateSupport()


def state_support(mixer: nn.Module) -> StateSupport:
    """The ``StateSupport`` that ``mixer`` declares (none declared: ``StateSupport()``)."""
    declared = getattr(mixer, "state_support", NO_STATE)
    if not isinstance(declared, StateSupport):
        raise ValueError(
            f"{type(mixer).__name__}.state_support: expected a StateSupport, got {type(declared).__name__}"
        )
    return declared


def select_rows(mixer: nn.Module, state: Any, index: torch.Tensor) -> Any:
    """Rows ``index (B',)`` (int64) of ``state``, one of ``mixer``'s recurrent states: the mixer's
    own ``select_state`` when it has one, else ``index_select`` on dim 0 of every tensor."""
    own = getattr(mixer, "select_state", None)
    if callable(own):
        return own(state, index)
    return map_state(lambda t: t.index_select(0, index.to(t.device)), state)
