"""Outputs of every model and every SeRpEnt option equal those recorded before the refactor (to
float32 rounding across processors: ``golden.ACROSS_CPUS``).

The recorded file is ``tests/fixtures/golden_outputs.safetensors`` (``tests/fixtures/golden.py``
writes it): fixed seed, fixed inputs, default backend. Any change here is a change of behaviour.
"""

import pytest
import torch

from tests.fixtures import golden

safetensors_torch = pytest.importorskip("safetensors.torch")
RECORDED = safetensors_torch.load_file(str(golden.GOLDEN))


@pytest.fixture(autouse=True)
def _one_thread():
    """The outputs were recorded with one thread: reductions split over threads round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check(outputs: dict[str, torch.Tensor]) -> None:
    for key, value in outputs.items():
        assert key in RECORDED, f"{key}: no recorded output"
        want = RECORDED[key]
        assert value.shape == want.shape, key
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, want, **golden.ACROSS_CPUS, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(value, want), key


@pytest.mark.parametrize(("name", "options"), golden.SERPENT_CASES, ids=[c[0] for c in golden.SERPENT_CASES])
def test_serpent_outputs_unchanged(name, options):
    _check(golden.serpent_outputs(name, options))


@pytest.mark.parametrize(("key", "name", "head"), golden.MODEL_CASES, ids=[c[0] for c in golden.MODEL_CASES])
def test_model_outputs_unchanged(key, name, head):
    _check(golden.model_outputs(key, name, head))


def test_every_recorded_output_is_checked():
    keys = set()
    for name, _ in golden.SERPENT_CASES:
        keys |= {k for k in RECORDED if k.startswith(name + "/")}
    for key, _, _ in golden.MODEL_CASES:
        keys |= {k for k in RECORDED if k.startswith(key + "/")}
    assert keys == set(RECORDED)
