"""Input checks shared by ops and modules.

Every check raises ``ValueError`` whose message names the argument, what was expected and what
was received, so that a bad call fails at the library boundary with an actionable message
instead of deep inside a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "check_module_dtype",
    "check_float_tensor",
    "check_finite",
    "check_mask",
    "check_mixer_input",
    "check_positive_float",
    "check_positive_int",
    "check_shape",
]


def _fmt_shape(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_float_tensor(name: str, x: object, ndim: int | Sequence[int] | None = None) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor (optionally of a given rank) and return it."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise ValueError(f"{name}: expected a real floating-point tensor, got complex dtype {x.dtype}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{name}: expected a tensor of rank {want}, got rank {x.dim()} with shape {tuple(x.shape)}"
            )
    return x


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int | None]) -> None:
    """Check ``x.shape`` against ``expected`` (``None`` entries match any size)."""
    if x.shape == expected:  # the common case: every size given and matching
        return
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape, strict=True))
    if not ok:
        raise ValueError(f"{name}: expected shape {_fmt_shape(expected)}, got {tuple(x.shape)}")


def check_device(name: str, x: torch.Tensor, expected: torch.device | str) -> None:
    """Check that ``x`` lives on ``expected`` (reads the attribute only: no synchronisation)."""
    if x.device == expected:  # the common case, without building a device
        return
    want = torch.device(expected)
    if x.device.type != want.type or (want.index is not None and x.device.index != want.index):
        raise ValueError(f"{name}: expected a tensor on {want}, got one on {x.device}")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise if ``x`` contains NaN or infinity (meant for small parameter tensors)."""
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{name}: expected finite values, got {n_nan} NaN and {n_inf} infinite entries out of {x.numel()}"
        )


def check_mask(mask: object, batch: int, length: int, name: str = "mask") -> torch.Tensor:
    """Validate a right-padding mask of shape ``(batch, length)``, True = real element.

    Each row must hold its real elements first and its padding after them
    (``[1, 1, 1, 0, 0]``); any other pattern is rejected. Returns the mask as a bool tensor.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(
            f"{name}: expected a bool torch.Tensor of shape ({batch}, {length}), got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: expected dtype torch.bool (True = real element), got {mask.dtype}")
    if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] != length:
        raise ValueError(f"{name}: expected shape ({batch}, {length}), got {tuple(mask.shape)}")
    if length > 1:
        bad = (~mask[:, :-1]) & mask[:, 1:]
        if bool(bad.any()):
            row = int(bad.any(dim=1).nonzero()[0, 0])
            raise ValueError(
                f"{name}: expected right padding (real elements first, then padding) in every row, "
                f"got a real element after padding in row {row}"
            )
    return mask


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def check_positive_float(name: str, value: object) -> float:
    """Return ``float(value)`` if it is a finite number > 0, else raise naming ``name``."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def check_mixer_input(
    x: object, mask: torch.Tensor | None, d_model: int, module: torch.nn.Module | None = None
) -> torch.Tensor | None:
    """Validate a mixer input ``x (B, L, d_model)`` and its optional right-padding mask ``(B, L)``;
    with ``module``, also that ``x`` has the module's floating dtype (outside autocast)."""
    check_float_tensor("x", x, ndim=3)
    check_shape("x", x, (None, None, d_model))
    if module is not None:
        check_module_dtype("x", x, module)
    if mask is not None:
        check_mask(mask, x.shape[0], x.shape[1])
    return mask


def check_module_dtype(name: str, x: torch.Tensor, module: torch.nn.Module) -> None:
    """``x`` must have the dtype of ``module``'s floating parameters, unless autocast is on (where
    mixed dtypes are the point)."""
    if torch.is_autocast_enabled() or torch.is_autocast_enabled("cpu"):
        return
    # the module's own parameters first, as module.parameters() yields them (without its generators)
    own = (p.dtype for p in module._parameters.values() if p is not None and p.is_floating_point())
    dtype = next(own, None)
    if dtype is None:
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is not None and x.dtype != dtype:
        raise ValueError(
            f"{name}: expected {str(dtype).removeprefix('torch.')} like the module's weights, got "
            f"{str(x.dtype).removeprefix('torch.')} (convert the input, or the module with .to(dtype))"
        )
