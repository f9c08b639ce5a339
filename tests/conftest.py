"""Shared test configuration: hypothesis profiles and deterministic torch settings."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# "ci": reproducible examples (CI=true is set by the CI runner); "dev": fresh examples each run;
# "thorough": HYPOTHESIS_PROFILE=thorough for a long local search.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=20,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
