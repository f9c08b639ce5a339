"""Small pieces shared by the recurrent mixers."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)


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
# bumped whenever any module, anywhere, registers a submodule or a parameter (setattr,
# add_module, register_parameter: building a model, an adapter library wrapping a layer, a
# parameter replaced): a cached value read from weights checks one integer for all of that
_STRUCTURE = [0]


def _structure_changed(*_: Any) -> None:
    _STRUCTURE[0] += 1


register_module_module_registration_hook(_structure_changed)
register_module_parameter_registration_hook(_structure_changed)


def cached_weights(module: nn.Module, name: str, sources: list[nn.Module], build: Callable[[], Any]) -> Any:
    """``build()`` (a value read from the weights of the modules in ``sources``), kept in
    ``module.__dict__[name]`` while no module anywhere registered a submodule or a parameter
    (a layer wrapped or replaced, a parameter replaced), no leaf module of ``sources`` has
    hooks, and no parameter of ``sources`` changed in place (their version counters: an
    optimiser step, ``load_state_dict``). A few microseconds per check, for steps that run once a
    token. Call it only without gradients; ``module`` is a ``CachedWeights``, whose ``.to()``
    drops the cache. Assigning a parameter's ``.data`` is not seen (call ``.to()`` after that)."""
    caches = module.__dict__.setdefault("_weight_caches", {})
    hit = caches.get(name)
    if hit is not None:
        structure, leaves, params, version, value = hit
        if (
            structure == _STRUCTURE[0]
            and not any(m._forward_hooks or m._forward_pre_hooks for m in leaves)
            and sum(map(_VERSION, params)) == version
        ):
            return value
    structure = _STRUCTURE[0]
    value = build()
    leaves = [m for src in sources for m in src.modules() if not m._modules]
    params = [p for src in sources for p in src.parameters()]
    caches[name] = (structure, leaves, params, sum(map(_VERSION, params)), value)
    return value


class CachedWeights(nn.Module):
    """A module that keeps values read from its weights (``cached_weights``): ``nn.Module._apply``
    (``.to()``, ``.float()``, ...) also drops them."""

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> nn.Module:
        self.__dict__.pop("_weight_caches", None)
        return super()._apply(fn, *args, **kwargs)
