"""Pure functions: the selective scan with its backends, and SeRpEnt's resampling steps (``resample``)."""

from serpent_ssm.ops.selective_scan import (
    BACKENDS,
    available_backends,
    resolve_backend,
    selective_scan,
    selective_scan_ref,
)

__all__ = ["BACKENDS", "available_backends", "resolve_backend", "selective_scan", "selective_scan_ref"]
