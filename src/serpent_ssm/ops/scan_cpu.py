"""The fused CPU selective scan: the ``"cpu"`` backend.

The kernel (``csrc/selective_scan_cpu.cpp``) is plain C++17 with a C interface. On first use it
is compiled with the system's C++ compiler, together with the recurrent-step kernel of
``ops.mamba_step_cpu`` (``csrc/mamba_step_cpu.cpp``) and the resampling kernel of
``ops.resample_cpu`` (``csrc/resample_cpu.cpp``), into one library in a per-user cache, and
loaded with ``ctypes``: no Python headers, no torch headers, no ninja, a few seconds of
compilation, once per machine and source version. When no compiler works the library still
runs: ``"auto"`` and ``"cpu"`` fall back to the ``"torch"`` backend with one warning that says
why (and the recurrent steps run their torch reference).

Environment:
    ``SERPENT_SSM_CPU_KERNEL=0``  never build or use the kernel (no warning)
    ``SERPENT_SSM_CACHE_DIR``     where the compiled library goes (default
                                  ``$XDG_CACHE_HOME/serpent_ssm`` or ``~/.cache/serpent_ssm``)
    ``CXX``                       the compiler (default: the first of c++, g++, clang++)

Each (batch row, channel) is one task: its whole recurrence runs with the state in registers,
fusing softplus and bias, discretisation, the state update, the ``C`` contraction, the ``D``
skip and the ``z`` gate. Tasks are split over ``torch.get_num_threads()`` threads. The forward
pass keeps the state every ``CHECKPOINT_INTERVAL`` steps (``Bt·D·L/T·N`` numbers); the backward
pass recomputes the states of one chunk at a time from those checkpoints.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = [
    "CHECKPOINT_INTERVAL",
    "cpu_kernel_available",
    "cpu_kernel_status",
    "cpu_scan",
    "kernel_entries",
    "load_cpu_kernel",
]

CHECKPOINT_INTERVAL = 64
SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
STEP_SOURCE = SOURCE.with_name("mamba_step_cpu.cpp")
RESAMPLE_SOURCE = SOURCE.with_name("resample_cpu.cpp")
SOURCES = (SOURCE, STEP_SOURCE, RESAMPLE_SOURCE)
HEADERS = (SOURCE.with_name("parallel.h"),)
_ABI_VERSION = 1
_STEP_ABI_VERSION = 3
_BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-pthread"]
# four parts of -ffast-math, not all of it: the kernel source says which and why
_BASE_FLAGS += ["-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros"]
_NATIVE_FLAGS = ["-march=native"]  # tried first; dropped if the compiler rejects it
_ENV_SWITCH = "SERPENT_SSM_CPU_KERNEL"

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


def struct_fields(ints: str, pointers: str) -> list[tuple[str, type]]:
    """``ctypes.Structure._fields_`` of a C struct: the int64 fields named in ``ints``, then the
    pointer fields named in ``pointers`` (space-separated, in the struct's order)."""
    return [(name, _I64) for name in ints.split()] + [(name, _PTR) for name in pointers.split()]


class _ScanArgs(ctypes.Structure):
    """Mirror of ``ScanArgs`` in the C++ source (same order, same types)."""

    _fields_ = struct_fields(
        "batch dim length dstate groups_b groups_c chunk n_threads softplus has_D has_z has_bias "
        "has_h0 has_lengths has_dhT sb_b sb_g sb_l sc_b sc_g sc_l "
        "gb_t gb_b gb_g gb_l gc_t gc_b gc_g gc_l",
        "u delta A B C D z bias h0 lengths y h_final ckpt dy dhT "
        "du ddelta dz dA_part dB dC dD_part dbias_part dh0",
    )


class KernelUnavailable(RuntimeError):
    """The kernel could not be built or loaded; the message says why."""


def _cache_dir() -> Path:
    if os.environ.get("SERPENT_SSM_CACHE_DIR"):
        return Path(os.environ["SERPENT_SSM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "serpent_ssm"


def _find_compiler() -> str:
    if os.environ.get("CXX"):
        path = shutil.which(os.environ["CXX"])
        if path is None:
            raise KernelUnavailable(f"CXX={os.environ['CXX']!r} is not an executable on PATH")
        return path
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise KernelUnavailable("no C++ compiler found (looked for $CXX, c++, g++, clang++)")


def _cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: the instruction-set flags of this CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compile(compiler: str, out: Path) -> None:
    """Compile SOURCES into the shared library ``out`` (atomically: temp file, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in (_BASE_FLAGS + _NATIVE_FLAGS, _BASE_FLAGS):
        fd, tmp = tempfile.mkstemp(suffix=out.suffix, dir=out.parent)
        os.close(fd)
        try:
            proc = subprocess.run(
                [compiler, *flags, *map(str, SOURCES), "-o", tmp], capture_output=True, text=True, timeout=300
            )
            if proc.returncode == 0:
                os.replace(tmp, out)
                return
            errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no message")
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    names = ", ".join(src.name for src in SOURCES)
    raise KernelUnavailable(f"{compiler} failed to compile {names}: {errors[-1]}")


def _build_and_load() -> ctypes.CDLL:
    for src in (*SOURCES, *HEADERS):
        if not src.is_file():
            raise KernelUnavailable(f"the kernel source {src} is missing from the installation")
    compiler = _find_compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelUnavailable(f"{compiler} --version failed: {exc}") from exc
    key = hashlib.sha256()
    sources = [src.read_bytes() for src in (*SOURCES, *HEADERS)]
    for part in (*sources, compiler.encode(), version.encode(), " ".join(_BASE_FLAGS).encode()):
        key.update(part)
        key.update(b"\0")
    key.update(f"{platform.system()} {platform.machine()} {_cpu_fingerprint()}".encode())
    suffix = ".dll" if os.name == "nt" else ".so"
    lib_path = _cache_dir() / f"selective_scan_cpu-{key.hexdigest()[:20]}{suffix}"
    if not lib_path.is_file():
        try:
            _compile(compiler, lib_path)
        except OSError as exc:  # e.g. a read-only cache directory
            raise KernelUnavailable(f"cannot write the compiled kernel to {lib_path.parent}: {exc}") from exc
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load {lib_path}: {exc}") from exc
    if (
        lib.ss_abi_version() != _ABI_VERSION
        or lib.ss_args_size() != ctypes.sizeof(_ScanArgs)
        or lib.ms_abi_version() != _STEP_ABI_VERSION
    ):
        raise KernelUnavailable(f"{lib_path} does not match this version of serpent_ssm")
    for name in ("ss_forward_f32", "ss_forward_f64", "ss_backward_f32", "ss_backward_f64"):
        getattr(lib, name).argtypes = [ctypes.POINTER(_ScanArgs)]
        getattr(lib, name).restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=1)
def _kernel() -> tuple[ctypes.CDLL | None, str]:
    """``(library, "")`` or ``(None, reason)``; built and loaded once per process."""
    if os.environ.get(_ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"disabled by {_ENV_SWITCH}={os.environ[_ENV_SWITCH]}"
    try:
        return _build_and_load(), ""
    except KernelUnavailable as exc:
        return None, str(exc)


def load_cpu_kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; None when it cannot be built."""
    return _kernel()[0]


_bound: dict[tuple[int, str], bool] = {}  # (id of a loaded library, prefix) -> its entries match


def kernel_entries(
    prefix: str, args_type: type[ctypes.Structure], names: tuple[str, ...], abi_version: int | None = None
) -> ctypes.CDLL | None:
    """The loaded library when its entry points ``{prefix}_{name}`` (each taking a pointer to the
    C struct mirrored by ``args_type``) match this version: ``{prefix}_args_size()`` is the
    struct's size and, when given, ``{prefix}_abi_version()`` is ``abi_version``. Their argument
    types are set once per library. None when the library is missing or does not match."""
    lib = load_cpu_kernel()
    if lib is None:
        return None
    key = (id(lib), prefix)
    if key not in _bound:
        size = getattr(lib, f"{prefix}_args_size")
        size.restype = ctypes.c_int64
        ok = size() == ctypes.sizeof(args_type)
        if abi_version is not None:
            ok = ok and getattr(lib, f"{prefix}_abi_version")() == abi_version
        for name in names:
            entry = getattr(lib, f"{prefix}_{name}")
            entry.argtypes = [ctypes.POINTER(args_type)]
            entry.restype = ctypes.c_int
        _bound[key] = ok
    return lib if _bound[key] else None


def cpu_kernel_available() -> bool:
    """True when the fused CPU kernel is built (or can be) and loaded."""
    return load_cpu_kernel() is not None


def cpu_kernel_status() -> str:
    """``"available"``, or why the kernel is not (also used in the fallback warning)."""
    lib, reason = _kernel()
    return "available" if lib is not None else reason


_warned = False


def warn_fallback_once() -> None:
    """Warn, once per process, that the ``"torch"`` backend runs instead of the kernel."""
    global _warned
    reason = cpu_kernel_status()
    if _warned or reason.startswith("disabled by"):
        return
    _warned = True
    warnings.warn(
        f"serpent_ssm: the fused CPU selective-scan kernel is unavailable ({reason}); using the "
        "slower 'torch' backend. Install a C++ compiler (e.g. `apt install g++`, `xcode-select "
        f"--install`) for the 'cpu' backend, or set {_ENV_SWITCH}=0 to silence this warning.",
        RuntimeWarning,
        stacklevel=3,
    )


# ----------------------------------------------------------------------------- autograd
def _ptr(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _kernel_layout(x: torch.Tensor, length: int, dtype: torch.dtype):
    """B or C (differentiably) -> ``(tensor, (kind, groups, (s_b, s_g, s_l)))`` for the kernel.

    ``(D, N)`` time-invariant stays ``(D, N)`` (one group per channel, strides 0 over batch and
    time); ``(Bt, N, L)`` and ``(Bt, G, N, L)`` become ``(Bt, G, L, N)`` with the state index
    contiguous.
    """
    if x.dim() == 2:
        t = x.to(dtype).contiguous()
        return t, ("time-invariant", t.shape[0], (0, t.shape[1], 0))
    kind = "shared" if x.dim() == 3 else "grouped"
    t = (x.unsqueeze(1) if x.dim() == 3 else x).to(dtype).transpose(2, 3).contiguous()
    g, n = t.shape[1], t.shape[3]
    return t, (kind, g, (g * length * n, length * n, n))


def _grad_buffer(kind: str, bt: int, groups: int, length: int, n: int, d: int, threads: int, dtype):
    """Accumulator for dB or dC, ``(copies, ...)``, and its strides (t, b, g, l).

    Summing over the first dimension gives the gradient in the kernel layout.
    """
    if kind == "time-invariant":  # one (D, N) copy per batch row, summed afterwards
        buf = torch.zeros(bt, d, n, dtype=dtype)
        return buf, (0, d * n, n, 0)
    # (Bt, G, L, N); one copy per thread when several channels share a group
    copies = threads if groups < d else 1
    buf = torch.zeros(copies, bt, groups, length, n, dtype=dtype)
    return buf, (bt * groups * length * n if copies > 1 else 0, groups * length * n, length * n, n)


def _run(fn, args: _ScanArgs, **tensors: torch.Tensor | None) -> None:
    """Point ``args`` at ``tensors`` (None -> null) and call the kernel entry point ``fn``."""
    for name, t in tensors.items():
        setattr(args, name, _ptr(t))
    if fn(ctypes.byref(args)) != 0:
        raise RuntimeError("serpent_ssm: the CPU scan kernel rejected its arguments (a bug)")


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, Bk, Ck, D, z, delta_bias, h0, lengths, softplus, b_layout, c_layout):
        # b_layout, c_layout: (kind, groups, (s_b, s_g, s_l)) of Bk, Ck; see _kernel_layout
        lib = load_cpu_kernel()
        bt, d, length = u.shape
        n = A.shape[1]
        cdt = u.dtype
        threads = torch.get_num_threads()
        n_chunks = -(-length // CHECKPOINT_INTERVAL)
        y = torch.empty_like(u)
        h_final = torch.empty(bt, d, n, dtype=cdt)
        ckpt = torch.empty(bt, d, n_chunks, n, dtype=cdt)
        args = _ScanArgs(
            batch=bt,
            dim=d,
            length=length,
            dstate=n,
            groups_b=b_layout[1],
            groups_c=c_layout[1],
            chunk=CHECKPOINT_INTERVAL,
            n_threads=threads,
            softplus=int(softplus),
            has_D=D is not None,
            has_z=z is not None,
            has_bias=delta_bias is not None,
            has_h0=h0 is not None,
            has_lengths=lengths is not None,
            has_dhT=0,
            sb_b=b_layout[2][0],
            sb_g=b_layout[2][1],
            sb_l=b_layout[2][2],
            sc_b=c_layout[2][0],
            sc_g=c_layout[2][1],
            sc_l=c_layout[2][2],
        )
        _run(lib.ss_forward_f64 if cdt == torch.float64 else lib.ss_forward_f32, args,
             u=u, delta=delta, A=A, B=Bk, C=Ck, D=D, z=z, bias=delta_bias, h0=h0, lengths=lengths,
             y=y, h_final=h_final, ckpt=ckpt)  # fmt: skip
        ctx.args = args
        ctx.layouts = (b_layout, c_layout)
        ctx.save_for_backward(u, delta, A, Bk, Ck, D, z, delta_bias, lengths, ckpt)
        ctx.mark_non_differentiable(ckpt)
        return y, h_final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh_final):
        u, delta, A, Bk, Ck, D, z, delta_bias, lengths, ckpt = ctx.saved_tensors
        (b_kind, groups_b, _), (c_kind, groups_c, _) = ctx.layouts
        lib = load_cpu_kernel()
        bt, d, length = u.shape
        n = A.shape[1]
        cdt = u.dtype
        threads = max(1, min(ctx.args.n_threads, bt * d))
        dy = dy.to(cdt).contiguous() if dy is not None else torch.zeros_like(u)
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else None
        dA_part = torch.empty(bt, d, n, dtype=cdt)
        dD_part = torch.empty(bt, d, dtype=cdt)
        dbias_part = torch.empty(bt, d, dtype=cdt)
        dh0 = torch.empty(bt, d, n, dtype=cdt)
        dB, gb = _grad_buffer(b_kind, bt, groups_b, length, n, d, threads, cdt)
        dC, gc = _grad_buffer(c_kind, bt, groups_c, length, n, d, threads, cdt)
        dhT = dh_final.to(cdt).contiguous() if dh_final is not None else None
        args = ctx.args
        args.n_threads = threads
        args.has_dhT = dhT is not None
        args.gb_t, args.gb_b, args.gb_g, args.gb_l = gb
        args.gc_t, args.gc_b, args.gc_g, args.gc_l = gc
        _run(lib.ss_backward_f64 if cdt == torch.float64 else lib.ss_backward_f32, args,
             u=u, delta=delta, A=A, B=Bk, C=Ck, D=D, z=z, bias=delta_bias, lengths=lengths, ckpt=ckpt,
             dy=dy, dhT=dhT, du=du, ddelta=ddelta, dz=dz, dA_part=dA_part, dB=dB, dC=dC,
             dD_part=dD_part, dbias_part=dbias_part, dh0=dh0)  # fmt: skip
        grads = (
            du,
            ddelta,
            dA_part.sum(0),
            dB.sum(0) if dB.shape[0] > 1 else dB[0],
            dC.sum(0) if dC.shape[0] > 1 else dC[0],
            dD_part.sum(0),
            dz,
            dbias_part.sum(0),
            dh0,
        )
        needed = ctx.needs_input_grad[: len(grads)]
        return *(g if need else None for g, need in zip(grads, needed, strict=True)), None, None, None, None


def cpu_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask, initial_state, return_final_state):
    """The fused kernel with ``selective_scan``'s arguments (already validated).

    Computes in float32 (float64 for float64 ``u``); returns ``y`` in ``u``'s dtype and the
    final state ``(Bt, D, N)`` in the compute dtype when requested.
    """
    bt, d, length = u.shape
    out_dtype = u.dtype
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32

    def prep(x):
        return None if x is None else x.to(cdt).contiguous()

    Bk, b_layout = _kernel_layout(B, length, cdt)
    Ck, c_layout = _kernel_layout(C, length, cdt)
    lengths = mask.sum(1, dtype=torch.int64).contiguous() if mask is not None else None
    y, h = _CpuScan.apply(
        prep(u),
        prep(delta),
        prep(A),
        Bk,
        Ck,
        prep(D),
        prep(z),
        prep(delta_bias),
        prep(initial_state),
        lengths,
        bool(delta_softplus),
        b_layout,
        c_layout,
    )
    y = y.to(out_dtype)
    return (y, h) if return_final_state else y
