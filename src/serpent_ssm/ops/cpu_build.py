"""Build and load the C++ CPU kernels: one library, compiled on first use, cached per user.

The kernels (``csrc/``: the selective scan ``selective_scan_cpu.cpp``, the recurrent step
``mamba_step_cpu.cpp`` and the resampling ops ``resample_cpu.cpp``, with the thread split
``parallel.h``) are plain C++17 with a C interface. On first use they are compiled with the
system's C++ compiler into one library in a per-user cache, and loaded with ``ctypes``: no Python
headers, no torch headers, no ninja, a few seconds of compilation, once per machine and source
version. When no compiler works the library still runs: the selective scan's ``"auto"`` and
``"cpu"`` backends fall back to ``"torch"`` with one warning that says why, and the resampling ops
and the recurrent steps run their torch references.

Each kernel's Python wrapper (``ops.selective_scan.cpu``, ``ops.resample.cpu``, the step's)
mirrors its C struct with ``struct_fields``, binds its entry points with ``kernel_entries`` and
passes tensors with ``data_pointer``, which refuses any tensor a kernel could not read safely.

Environment:
    ``SERPENT_SSM_CPU_KERNEL=0``  never build or use the kernel (no warning)
    ``SERPENT_SSM_CACHE_DIR``     where the compiled library goes (default
                                  ``$XDG_CACHE_HOME/serpent_ssm`` or ``~/.cache/serpent_ssm``)
    ``CXX``                       the compiler (default: the first of c++, g++, clang++)
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
    "KernelUnavailable",
    "cpu_kernel_available",
    "cpu_kernel_status",
    "data_pointer",
    "kernel_entries",
    "load_cpu_kernel",
    "struct_fields",
    "warn_fallback_once",
]

SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
STEP_SOURCE = SOURCE.with_name("mamba_step_cpu.cpp")
RESAMPLE_SOURCE = SOURCE.with_name("resample_cpu.cpp")
SOURCES = (SOURCE, STEP_SOURCE, RESAMPLE_SOURCE)
HEADERS = (SOURCE.with_name("parallel.h"),)
# the versions of the scan's (``ss``) and the recurrent step's (``ms``) C interfaces that this
# Python code expects; a library that reports others is not loaded
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
    if lib.ss_abi_version() != _ABI_VERSION or lib.ms_abi_version() != _STEP_ABI_VERSION:
        raise KernelUnavailable(f"{lib_path} does not match this version of serpent_ssm")
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


def data_pointer(name: str, x: torch.Tensor | None, dtype: torch.dtype) -> int | None:
    """The address of ``x``'s data for a kernel (None for None: a null pointer).

    Raises ``ValueError`` naming ``name`` unless ``x`` is a contiguous CPU tensor of ``dtype``: a
    kernel reads a pointer as a dense array of its type, so anything else (a tensor on another
    device, ``meta`` included, whose pointer is 0 or not host memory; another dtype; a strided
    view) would read memory it does not own. Attributes only: no value is read, nothing waits.
    """
    if x is None:
        return None
    if x.device.type != "cpu" or x.dtype != dtype or not x.is_contiguous():
        layout = "contiguous" if x.is_contiguous() else "strided"
        raise ValueError(
            f"{name}: expected a contiguous {dtype} tensor on the CPU for the kernel, got a {layout} "
            f"{x.dtype} tensor on {x.device}"
        )
    return x.data_ptr()
