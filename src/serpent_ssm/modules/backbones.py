"""The backbone registry: name -> mixer class, and each backbone's options as a typed dataclass.

``BACKBONES`` maps ``"mamba"`` and ``"s4d"`` to their classes. ``BACKBONE_OPTIONS[name]`` is a
dataclass whose fields are the keyword arguments of that class's constructor (besides
``d_model``, ``device`` and ``dtype``) with the same types and defaults, derived from the
signature so that they cannot drift apart. ``make_backbone(name, d_model, options,
bidirectional)`` builds one (``Bidirectional`` wraps two copies for non-causal use).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

from torch import nn

from serpent_ssm.modules.bidirectional import Bidirectional
from serpent_ssm.modules.mamba import Mamba
from serpent_ssm.modules.s4d import S4D
from serpent_ssm.utils.config import check_fields, from_mapping

__all__ = ["BACKBONES", "BACKBONE_OPTIONS", "backbone_options", "make_backbone"]

BACKBONES: dict[str, type[nn.Module]] = {"mamba": Mamba, "s4d": S4D}
_NOT_OPTIONS = ("self", "d_model", "device", "dtype")


def _options_class(cls: type[nn.Module]) -> type:
    """A dataclass of ``cls.__init__``'s keyword arguments (types and defaults from the signature)."""
    hints = typing.get_type_hints(cls.__init__)
    fields = [
        (p.name, hints[p.name], dataclasses.field(default=p.default))
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name not in _NOT_OPTIONS
    ]
    options = dataclasses.make_dataclass(
        f"{cls.__name__}Options", fields, namespace={"__post_init__": check_fields}
    )
    options.__doc__ = f"Keyword arguments of ``{cls.__name__}`` (see its docstring), typed."
    return options


BACKBONE_OPTIONS: dict[str, type] = {name: _options_class(cls) for name, cls in BACKBONES.items()}


def backbone_options(name: str, options: Any = None) -> Any:
    """``options`` (None, a mapping or the dataclass) as ``BACKBONE_OPTIONS[name]``."""
    if name not in BACKBONES:
        raise ValueError(f"backbone: expected one of {', '.join(map(repr, BACKBONES))}, got {name!r}")
    cls = BACKBONE_OPTIONS[name]
    if options is None:
        return cls()
    if isinstance(options, cls):
        return options
    if not isinstance(options, dict):
        raise ValueError(f"backbone_kwargs: expected a mapping of {name} options, got {options!r}")
    return from_mapping(cls, options)


def make_backbone(name: str, d_model: int, options: Any = None, bidirectional: bool = False) -> nn.Module:
    """The ``name`` backbone of width ``d_model`` with ``options`` (mapping or dataclass)."""
    opts = backbone_options(name, options)
    kwargs = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    cls = BACKBONES[name]
    if bidirectional:
        return Bidirectional(lambda: cls(d_model, **kwargs), d_model)
    return cls(d_model, **kwargs)
