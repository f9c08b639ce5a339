"""Model name -> the mixer of each block: ``mamba``, ``s4d``, ``serpent-mamba``, ``serpent-s4d``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from serpent_ssm.modules.backbones import backbone_options, make_backbone
from serpent_ssm.modules.serpent import SeRpEnt
from serpent_ssm.modules.serpent_config import SeRpEntConfig, SeRpEntOptions

__all__ = ["MODEL_NAMES", "backbone_name", "make_mixer_factory"]

MODEL_NAMES = ("mamba", "s4d", "serpent-mamba", "serpent-s4d")


def backbone_name(name: str) -> str:
    """The backbone behind a model name (``serpent-mamba`` -> ``mamba``)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"name: expected one of {', '.join(map(repr, MODEL_NAMES))}, got {name!r}")
    return name.removeprefix("serpent-")


def make_mixer_factory(
    name: str,
    d_model: int,
    causal: bool = False,
    backbone_kwargs: Any = None,
    serpent_kwargs: Any = None,
) -> Callable[[], nn.Module]:
    """Factory of the mixer behind a model name.

    ``mamba`` / ``s4d``: the backbone (wrapped in ``Bidirectional`` when not causal);
    ``serpent-mamba`` / ``serpent-s4d``: a ``SeRpEnt`` mixer over that backbone. ``backbone_kwargs``
    (a mapping or the backbone's options dataclass) and ``serpent_kwargs`` (a mapping or
    ``SeRpEntOptions``) are checked here, before any mixer is built. With the SeRpEnt option
    ``layers``, the factory builds the layers of one stack in order (call ``i`` is layer ``i``):
    SeRpEnt at those indices, the plain backbone elsewhere; build a new factory per model.
    """
    backbone = backbone_name(name)
    options = backbone_options(backbone, backbone_kwargs)
    if not name.startswith("serpent-"):
        return lambda: make_backbone(backbone, d_model, options, bidirectional=not causal)
    if serpent_kwargs is None or isinstance(serpent_kwargs, dict):
        serpent_kwargs = SeRpEntOptions(**(serpent_kwargs or {}))
    kwargs = dataclasses.asdict(options)
    config = SeRpEntConfig.from_options(d_model, backbone, serpent_kwargs, causal, kwargs)
    if serpent_kwargs.layers is None:
        return lambda: SeRpEnt(d_model, config=config)
    return _LayerPattern(
        lambda: SeRpEnt(d_model, config=config),
        lambda: make_backbone(backbone, d_model, options, bidirectional=not causal),
        serpent_kwargs.layers,
    )


class _LayerPattern:
    """A mixer factory for a stack whose layers ``layers`` (0-based) are SeRpEnt and the others
    the plain backbone: call ``i`` (counted from 0) builds layer ``i``'s mixer, so a model calls it
    once per layer, in order, as ``SequenceEncoder`` and ``CausalLM`` do."""

    def __init__(
        self, serpent: Callable[[], nn.Module], plain: Callable[[], nn.Module], layers: tuple[int, ...]
    ):
        self.serpent, self.plain, self.layers, self.calls = serpent, plain, frozenset(layers), 0

    def __call__(self) -> nn.Module:
        layer, self.calls = self.calls, self.calls + 1
        return self.serpent() if layer in self.layers else self.plain()
