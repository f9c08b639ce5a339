"""The recurrent steps of the causal mixers: ``serpent_step`` and ``mamba_step`` with their
backends (``naive.py``, ``torch.py``, ``cpu.py``) and what they read (``weights.py``)."""

from serpent_ssm.ops.serpent_step.interface import STEP_BACKENDS, mamba_step, serpent_step
from serpent_ssm.ops.serpent_step.weights import (
    KernelWeights,
    LayerWeights,
    MambaStepWeights,
    MambaTensors,
    SeRpEntStepWeights,
    StackedLinear,
    kernel_weights,
    stack_step_weights,
)

__all__ = [
    "STEP_BACKENDS",
    "KernelWeights",
    "LayerWeights",
    "MambaStepWeights",
    "MambaTensors",
    "SeRpEntStepWeights",
    "StackedLinear",
    "kernel_weights",
    "mamba_step",
    "serpent_step",
    "stack_step_weights",
]
