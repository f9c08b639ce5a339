"""The selective scan (S6) behind one function, with interchangeable backends.

``selective_scan`` takes the argument layout of mamba_ssm's ``selective_scan_fn``, so code
written for mamba_ssm calls it unchanged::

    y = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)

It computes, per batch ``b``, channel ``d`` and state ``n``::

    Δ_t     = softplus(delta_t + delta_bias)          (or delta_t + delta_bias)
    h_t     = exp(Δ_t A[d, n]) h_{t-1} + Δ_t B_t[n] u_t
    y_t     = sum_n C_t[n] h_t[n] + D[d] u_t
    y_t    *= silu(z_t)                               (when z is given)

Modules: ``interface`` (``selective_scan``: checks the arguments and dispatches to a backend),
``checks`` (those checks: devices, shapes, dtypes, values), ``naive`` (``selective_scan_ref``: the
plain loop over time that is the ``"ref"`` backend and the oracle of the others, sharing nothing
with them but the argument checks) and the fast backends ``chunked`` (``"torch"``), ``cpu`` (the
fused C++ kernel, built by ``ops.cpu_build``) and ``cuda`` (mamba_ssm's kernel).
"""

from serpent_ssm.ops.selective_scan.interface import (
    BACKENDS,
    available_backends,
    check_backend,
    resolve_backend,
    selective_scan,
)
from serpent_ssm.ops.selective_scan.naive import selective_scan_ref

__all__ = [
    "BACKENDS",
    "available_backends",
    "check_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
]
