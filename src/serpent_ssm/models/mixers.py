"""The mixer of each block, by layer: ``make_mixer(layer_idx) -> nn.Module``, the one factory every
model takes (``SequenceClassifier``, ``RetrievalClassifier``, ``CausalLM``).

``make_mixer_factory(name, ...)`` makes one from a model name (``mamba``, ``s4d``,
``serpent-mamba``, ``serpent-s4d``); ``layer_factory`` checks the factory a model is given.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from serpent_ssm.modules.backbones import backbone_options, make_backbone
from serpent_ssm.modules.serpent import SeRpEnt
from serpent_ssm.modules.serpent_config import SeRpEntConfig, SeRpEntOptions

__all__ = ["MODEL_NAMES", "MixerFactory", "backbone_name", "layer_factory", "make_mixer_factory"]

MODEL_NAMES = ("mamba", "s4d", "serpent-mamba", "serpent-s4d")

MixerFactory = Callable[[int], nn.Module]
"""``make_mixer(layer_idx)``: a new mixer for the block at ``layer_idx`` (0-based) of a stack."""


def backbone_name(name: str) -> str:
    """The backbone behind a model name (``serpent-mamba`` -> ``mamba``)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"name: expected one of {', '.join(map(repr, MODEL_NAMES))}, got {name!r}")
    return name.removeprefix("serpent-")


def _check_layer(layer_idx: Any) -> None:
    if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or layer_idx < 0:
        raise ValueError(f"layer_idx: expected the block's index, an integer >= 0, got {layer_idx!r}")


def make_mixer_factory(
    name: str,
    d_model: int,
    causal: bool = False,
    backbone_kwargs: Any = None,
    serpent_kwargs: Any = None,
) -> MixerFactory:
    """``make_mixer(layer_idx)`` for a model name.

    ``mamba`` / ``s4d``: the backbone (wrapped in ``Bidirectional`` when not causal) at every
    layer; ``serpent-mamba`` / ``serpent-s4d``: a ``SeRpEnt`` mixer over that backbone at the
    layers of the SeRpEnt option ``layers`` (every layer when None) and the plain backbone at the
    others. Each call builds a new mixer, which depends on ``layer_idx`` alone (not on the calls
    before), so one factory serves any number of models. ``backbone_kwargs`` (a mapping or the
    backbone's options dataclass) and ``serpent_kwargs`` (a mapping or ``SeRpEntOptions``) are
    checked here, before any mixer is built.
    """
    backbone = backbone_name(name)
    options = backbone_options(backbone, backbone_kwargs)

    def plain(layer_idx: int) -> nn.Module:
        _check_layer(layer_idx)
        return make_backbone(backbone, d_model, options, bidirectional=not causal)

    if not name.startswith("serpent-"):
        return plain
    if serpent_kwargs is None or isinstance(serpent_kwargs, dict):
        serpent_kwargs = SeRpEntOptions(**(serpent_kwargs or {}))
    config = SeRpEntConfig.from_options(
        d_model, backbone, serpent_kwargs, causal, dataclasses.asdict(options)
    )
    layers = None if serpent_kwargs.layers is None else frozenset(serpent_kwargs.layers)

    def serpent(layer_idx: int) -> nn.Module:
        if layers is not None and layer_idx not in layers:
            return plain(layer_idx)
        _check_layer(layer_idx)
        return SeRpEnt(d_model, config=config)

    return serpent


def layer_factory(make_mixer: Any) -> MixerFactory:
    """``make_mixer`` as a model's ``make_mixer(layer_idx) -> nn.Module``, checked.

    A factory that takes no argument (what the classifiers called before they passed the layer
    index) still works, with a ``FutureWarning``: it builds every layer alike. A model name, or
    anything else that is not callable, is refused with a ``ValueError``.
    """
    if isinstance(make_mixer, str):
        raise ValueError(
            "make_mixer: expected a callable make_mixer(layer_idx) -> mixer, got the model name "
            f"{make_mixer!r} (make_mixer_factory({make_mixer!r}, d_model, causal=...) makes one; "
            "build_model(ModelConfig(name=...)) builds the whole model)"
        )
    if not callable(make_mixer):
        raise ValueError(
            f"make_mixer: expected a callable make_mixer(layer_idx) -> mixer, got {type(make_mixer).__name__}"
        )
    try:
        signature = inspect.signature(make_mixer)
    except (TypeError, ValueError):  # no signature to read (some builtins): trust it
        return make_mixer
    if _accepts(signature, 0) or not _accepts(signature):
        return make_mixer
    warnings.warn(
        "make_mixer: a factory without arguments is deprecated; models call make_mixer(layer_idx) "
        "with the block's index (write `lambda layer_idx: ...`)",
        FutureWarning,
        stacklevel=3,
    )
    return lambda layer_idx: make_mixer()


def _accepts(signature: inspect.Signature, *args: Any) -> bool:
    """Whether a callable of ``signature`` can be called with ``args``."""
    try:
        signature.bind(*args)
    except TypeError:
        return False
    return True
