"""Selective resampling: SeRpEnt's times, grid selection, windows, cell pooling, RBF features and
restore, batched and mask-aware.

Modules: ``torch`` (every op in torch ops, any device; its docstring explains the resampling),
``interface`` (``cell_pool`` and ``restore``: checks, then the fused CPU kernel where it applies,
else their torch versions), ``cpu`` (that kernel's wrapper, built by ``ops.cpu_build``),
``checks`` (the shared device check) and ``naive`` (the loop twins the tests compare with).
"""

from serpent_ssm.ops.resample.interface import cell_pool, restore
from serpent_ssm.ops.resample.torch import (
    RESTORES,
    ceil_rate,
    compressed_length,
    gather_windows,
    intervals_to_times,
    mean_normalised_carry,
    mean_normalised_intervals,
    mean_normalised_step,
    rbf_centers,
    rbf_features,
    select_grid,
    window_offsets,
)

__all__ = [
    "RESTORES",
    "ceil_rate",
    "cell_pool",
    "compressed_length",
    "gather_windows",
    "intervals_to_times",
    "mean_normalised_carry",
    "mean_normalised_intervals",
    "mean_normalised_step",
    "rbf_centers",
    "rbf_features",
    "restore",
    "select_grid",
    "window_offsets",
]
