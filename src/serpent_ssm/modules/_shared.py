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


class _Fingerprint:
    """What a cached value depends on, taken once when it is built: the ``_modules`` dict of every
    module under the sources (a copy, to compare with), the ``_parameters`` dicts and the
    parameters in them, which leaf modules have forward hooks (a fused step would skip them) and the
    sum of the parameters' version counters. ``holds()`` checks them all in a few microseconds:
    dict comparisons and identity checks, no walk of the module tree."""

    def __init__(self, sources: list[nn.Module]) -> None:
        modules = [m for src in sources for m in src.modules()]
        self.children = [m._modules for m in modules]
        self.children_then = [dict(c) for c in self.children]
        self.param_dicts = [m._parameters for m in modules]
        self.params = self._params()
        self.leaves = [m for m in modules if not m._modules]
        self.hooked = self._hooked()
        self.version = sum(map(_VERSION, self.params))

    def _params(self) -> list[torch.Tensor]:
        return [p for d in self.param_dicts for p in d.values() if p is not None]

    def _hooked(self) -> list[bool]:
        return [bool(m._forward_hooks) or bool(m._forward_pre_hooks) for m in self.leaves]

    def holds(self) -> bool:
        """No module under the sources replaced, added or removed, no parameter replaced, added
        or changed in place, no leaf module hooked or unhooked since the fingerprint was taken."""
        if not all(map(operator.eq, self.children, self.children_then)):
            return False
        params = [p for d in self.param_dicts for p in d.values() if p is not None]
        return (
            len(params) == len(self.params)
            and all(map(operator.is_, params, self.params))
            and sum(map(_VERSION, params)) == self.version
            and [bool(m._forward_hooks) or bool(m._forward_pre_hooks) for m in self.leaves] == self.hooked
        )


def cached_weights(module: nn.Module, name: str, sources: list[nn.Module], build: Callable[[], Any]) -> Any:
    """``build()`` (a value read from the weights of the modules in ``sources``), kept in
    ``module.__dict__[name]`` while the modules under ``sources`` are the same objects (no layer
    wrapped, added or replaced), their parameters are the same tensors (none replaced or
    added), none changed in place (their version counters: an optimiser step,
    ``load_state_dict``) and no leaf module was hooked or unhooked (a fused step reads only
    unhooked layers). Nothing outside ``module`` is touched: no global hook, no counter. A few
    microseconds per check (``_Fingerprint.holds``), for steps that run once a token. Call it
    only without gradients; ``module`` is a ``CachedWeights``, whose ``.to()`` and
    ``train()``/``eval()`` drop the cache. Assigning a parameter's ``.data`` is not seen (call
    ``.to()`` after that)."""
    caches = module.__dict__.setdefault("_weight_caches", {})
    hit = caches.get(name)
    if hit is not None and hit[0].holds():
        return hit[1]
    fingerprint = _Fingerprint(sources)
    value = build()
    caches[name] = (fingerprint, value)
    return value


class CachedWeights(nn.Module):
    """A module that keeps values read from its weights (``cached_weights``): ``nn.Module._apply``
    (``.to()``, ``.float()``, ...) and ``train()``/``eval()`` also drop them."""

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> nn.Module:
        self.__dict__.pop("_weight_caches", None)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> nn.Module:
        self.__dict__.pop("_weight_caches", None)
        return super().train(mode)
