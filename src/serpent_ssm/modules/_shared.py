"""Small pieces shared by the recurrent mixers."""

from __future__ import annotations

import operator
from collections.abc import Callable
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


def plain_linear(layer: nn.Module) -> bool:
    """``layer`` is an ``nn.Linear`` with no hooks of its own: a fused step may read its weight
    instead of calling it (an adapter wrapping it, or a hook, would be skipped)."""
    return type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks)


_VERSION = operator.attrgetter("_version")


def cached_weights(module: nn.Module, name: str, sources: list[nn.Module], build: Callable[[], Any]) -> Any:
    """``build()`` (a value read from the weights of the modules in ``sources``), kept in
    ``module.__dict__[name]`` while every submodule of ``sources`` is the same object in the same
    place, none has hooks, and no parameter changed in place (their version counters: an optimiser
    step, ``load_state_dict``). A few microseconds per check, for steps that run once a token.
    Call it only without gradients, and drop ``name`` in ``_apply`` (``.to()``). A parameter
    replaced by a new object inside the same layer is not seen (call ``.to()`` after that)."""
    hit = module.__dict__.get(name)
    if hit is not None:
        mods, slots, params, version, value = hit
        if (
            all(parent._modules.get(key) is child for parent, key, child in slots)
            and not any(m._forward_hooks or m._forward_pre_hooks for m in mods)
            and sum(map(_VERSION, params)) == version
        ):
            return value
    value = build()
    mods = [m for src in sources for m in src.modules()]
    slots = [(parent, key, child) for parent in mods for key, child in parent._modules.items()]
    params = [p for src in sources for p in src.parameters()]
    module.__dict__[name] = (mods, slots, params, sum(map(_VERSION, params)), value)
    return value
