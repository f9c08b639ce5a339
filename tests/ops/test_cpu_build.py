"""The CPU kernel's build, cache and fallback: the library runs without a compiler."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from serpent_ssm.ops import cpu_build, resolve_backend, selective_scan

from tests.helpers import assert_close
from tests.ops.test_selective_scan import make_inputs


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A process-wide kernel state that the test may break: fresh cache, no warning given yet;
    restored (and the real kernel reloaded on demand) afterwards."""
    monkeypatch.setenv("SERPENT_SSM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SERPENT_SSM_CPU_KERNEL", raising=False)
    monkeypatch.setattr(cpu_build, "_warned", False)
    cpu_build._kernel.cache_clear()
    yield tmp_path
    cpu_build._kernel.cache_clear()


def _scan(backend):
    inputs = make_inputs(2, 4, 3, 20, requires_grad=False)
    return selective_scan(**inputs, delta_softplus=True, backend=backend)


def test_no_compiler_falls_back_to_torch_with_one_warning(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert not cpu_build.cpu_kernel_available()
    assert cpu_build.cpu_kernel_status() == "CXX='no-such-compiler-xyz' is not an executable on PATH"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("auto", "cpu") == "torch"
        y_auto = _scan("auto")
        y_cpu = _scan("cpu")  # an explicit request falls back too: models keep running
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert messages[0].startswith(
        "serpent_ssm: the fused CPU selective-scan kernel is unavailable "
        "(CXX='no-such-compiler-xyz' is not an executable on PATH); using the slower 'torch' backend."
    )
    y_torch = _scan("torch")
    assert torch.equal(y_auto, y_torch) and torch.equal(y_cpu, y_torch)


def test_failing_compiler_is_reported(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CXX", "false")  # exists, fails on everything
    assert not cpu_build.cpu_kernel_available()
    status = cpu_build.cpu_kernel_status()
    names = r"selective_scan_cpu\.cpp, mamba_step_cpu\.cpp, resample_cpu\.cpp"
    assert re.fullmatch(rf".*false failed to compile {names}: .*", status)
    assert not list((fresh_kernel / "cache").glob("*.so"))  # no half-written library left behind


def test_disabled_kernel_gives_no_warning(fresh_kernel, monkeypatch):
    monkeypatch.setenv("SERPENT_SSM_CPU_KERNEL", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", "cpu") == "torch"
        _scan("auto")
    assert cpu_build.cpu_kernel_status() == "disabled by SERPENT_SSM_CPU_KERNEL=0"


@pytest.mark.skipif(not cpu_build.cpu_kernel_available(), reason="no C++ compiler for the CPU kernel")
def test_kernel_is_compiled_once_into_the_cache(fresh_kernel):
    assert cpu_build.cpu_kernel_available()
    built = list((fresh_kernel / "cache").iterdir())
    assert len(built) == 1 and built[0].name.startswith("selective_scan_cpu-")
    mtime = built[0].stat().st_mtime_ns
    cpu_build._kernel.cache_clear()  # a new process: loads the cached library, no rebuild
    assert cpu_build.cpu_kernel_available()
    assert [p.stat().st_mtime_ns for p in (fresh_kernel / "cache").iterdir()] == [mtime]
    assert_close(_scan("cpu"), _scan("ref"), 1e-5, 1e-5, "y")


def test_cpu_backend_needs_cpu_tensors():
    with pytest.raises(ValueError, match=r"^backend: 'cpu' needs tensors on the CPU, got device meta$"):
        resolve_backend("cpu", "meta")
