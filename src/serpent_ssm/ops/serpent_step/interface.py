"""The recurrent step entry points: ``serpent_step`` (a causal SeRpEnt layer) and ``mamba_step`` (a
Mamba layer), each with backends chosen as ``selective_scan`` chooses its own.

Backends: ``"naive"`` (SeRpEnt only: branch by branch, any configuration; the reference),
``"torch"`` (every backbone in one stacked step) and ``"cpu"`` (one C++ kernel call, float32,
without gradients). ``"auto"`` takes ``"cpu"`` where its weights are there and
``step_kernel_usable`` holds (``SERPENT_SSM_STEP_KERNEL=0`` turns it off), else ``"torch"`` where
its weights are there, else ``"naive"``.
"""

from __future__ import annotations

import torch

from serpent_ssm.ops.serpent_step.cpu import mamba_step_cpu, serpent_step_cpu, step_kernel_usable
from serpent_ssm.ops.serpent_step.naive import serpent_step_naive
from serpent_ssm.ops.serpent_step.torch import mamba_step_torch, serpent_step_torch
from serpent_ssm.ops.serpent_step.weights import MambaStepWeights, SeRpEntStepWeights
from serpent_ssm.ops.states import MambaState, SeRpEntState

__all__ = ["STEP_BACKENDS", "mamba_step", "serpent_step"]

STEP_BACKENDS = ("auto", "naive", "torch", "cpu")


def _check_backend(backend: str, allowed: tuple[str, ...]) -> None:
    if backend not in allowed:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, allowed))}, got {backend!r}")


def _refuse_cpu(has_kernel: bool, x_t: torch.Tensor) -> None:
    raise ValueError(
        "backend: 'cpu' needs the kernel's weights (weights.kernel, built without gradients) and a "
        f"float32 CPU input with gradients off, got kernel={has_kernel}, "
        f"x_t {x_t.dtype} on {x_t.device}, grad enabled={torch.is_grad_enabled()}"
    )


def serpent_step(
    x_t: torch.Tensor, state: SeRpEntState, weights: SeRpEntStepWeights, backend: str = "auto"
) -> tuple[torch.Tensor, SeRpEntState]:
    """One element ``x_t (B, D)`` through a causal SeRpEnt layer: ``y_t (B, D)`` and the new state.

    ``weights`` from ``SeRpEnt.step_weights()``; ``state`` from ``SeRpEnt.allocate_state`` or an
    earlier step. A backend asked for by name whose weights are absent (``"torch"`` needs
    ``weights.stacked``, ``"cpu"`` ``weights.kernel`` and a float32 CPU input without gradients)
    raises."""
    _check_backend(backend, STEP_BACKENDS)
    usable = None  # whether the kernel applies: asked once per step
    if backend == "auto":
        usable = weights.kernel is not None and step_kernel_usable(x_t)
        if usable:
            backend = "cpu"
        else:
            backend = "torch" if weights.stacked is not None else "naive"
    if backend == "naive":
        return serpent_step_naive(x_t, state, weights)
    if backend == "torch":
        if weights.stacked is None:
            raise ValueError(
                "backend: 'torch' steps every branch at once, which needs Δ ≤ 1, cell aggregation and "
                "plain Mamba backbones (weights.stacked), got a mixer without them; use 'naive'"
            )
        return serpent_step_torch(x_t, state, weights)
    if not usable and (weights.kernel is None or not step_kernel_usable(x_t)):
        _refuse_cpu(weights.kernel is not None, x_t)
    return serpent_step_cpu(x_t, state, weights)


def mamba_step(
    x_t: torch.Tensor, state: MambaState, weights: MambaStepWeights, backend: str = "auto"
) -> tuple[torch.Tensor, MambaState]:
    """One element ``x_t (B, D)`` through a Mamba layer (``Mamba.step_weights()``): ``y_t (B, D)``
    and the new state. ``"auto"``: ``"cpu"`` when ``weights.kernel`` is there and usable, else
    ``"torch"``."""
    _check_backend(backend, ("auto", "torch", "cpu"))
    usable = weights.kernel is not None and step_kernel_usable(x_t)
    if backend == "cpu" and not usable:
        _refuse_cpu(weights.kernel is not None, x_t)
    if usable and backend != "torch":
        return mamba_step_cpu(x_t, state, weights.kernel)
    y, conv, ssm = mamba_step_torch(x_t, state.conv, state.ssm, weights)
    return y, MambaState(conv, ssm)
