"""``serpent_minimal`` (the readable SeRpEnt) equals the ``SeRpEnt`` mixer at its non-causal defaults."""

from __future__ import annotations

import ast
import inspect
import re
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from serpent_ssm.modules import SeRpEnt
from serpent_ssm.modules import serpent_minimal as minimal_module
from serpent_ssm.modules.serpent_minimal import serpent_minimal

from tests.helpers import assert_close

D = 8
SMALL = {"mamba": {"d_state": 4}, "s4d": {"d_state": 8}}
RATES = st.lists(st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0]), min_size=1, max_size=3)


def make(backbone: str, seed: int, dtype=torch.float64, **options) -> SeRpEnt:
    """A non-causal mixer at the defaults (but ``options``) with random weights everywhere that
    matters: spread scores (so the intervals differ a lot) and a random branch merge."""
    torch.manual_seed(seed)
    mixer = SeRpEnt(D, backbone, backbone_kwargs=SMALL[backbone], **options).to(dtype).eval()
    with torch.no_grad():
        for score in mixer.scores:
            score.weight.normal_(0.0, 1.5)
            score.bias.normal_(0.0, 0.5)
        for p in mixer.out_proj.parameters():
            p.normal_(0.0, 1.0)
    return mixer


def minimal_alone(x: torch.Tensor, mixer: SeRpEnt) -> torch.Tensor:
    """``serpent_minimal`` with the mixer's own ``forward`` disabled, so that it cannot delegate."""
    with mock.patch.object(SeRpEnt, "forward", side_effect=AssertionError("SeRpEnt.forward called")):
        return serpent_minimal(x, mixer)


@pytest.mark.parametrize("backbone", ["mamba", "s4d"])
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    rates=RATES,
    share=st.sampled_from([(True, True), (False, True), (True, False)]),
    seed=st.integers(0, 999),
)
def test_equals_serpent(backbone, lengths, rates, share, seed):
    """Per row (a padded row on its real prefix) the minimal version gives the mixer's outputs,
    float64, for any rates, with shared or per-branch intervals and backbones."""
    share_intervals, share_backbone = share
    mixer = make(
        backbone, seed, rates=tuple(rates), share_intervals=share_intervals, share_backbone=share_backbone
    )
    length = max(lengths)
    x = torch.randn(
        len(lengths), length, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        want = mixer(x, mask=mask)
        for row, n in enumerate(lengths):
            got = minimal_alone(x[row : row + 1, :n], mixer)
            assert_close(got[0], want[row, :n], rtol=1e-10, atol=1e-10, what=f"row {row}")
    assert want.abs().max() > 1e-3  # the comparison is not between zeros


@pytest.mark.parametrize("backbone", ["mamba", "s4d"])
def test_gradients_equal(backbone):
    """The same gradients (float64) for the input, the score layer and the merge: the times, and
    through them the pooling and the restore, are differentiable in the scores in both."""
    mixer = make(backbone, 3, rates=(0.5, 0.3, 0.2))
    x = torch.randn(2, 29, D, dtype=torch.float64, requires_grad=True)
    weights = [x, mixer.scores[0].weight, mixer.scores[0].bias, *mixer.out_proj.parameters()]
    cotangent = torch.randn(2, 29, D, dtype=torch.float64)
    want = torch.autograd.grad((mixer(x) * cotangent).sum(), weights)
    got = torch.autograd.grad((minimal_alone(x, mixer) * cotangent).sum(), weights)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert w.abs().max() > 0, f"gradient {i} is zero"
        assert_close(g, w, rtol=1e-9, atol=1e-10, what=f"gradient {i}")


def test_float32_at_the_defaults():
    """``SeRpEnt(d_model)`` itself, float32 (the fused CPU resampling kernels where built)."""
    torch.manual_seed(0)
    mixer = SeRpEnt(16).eval()
    x = torch.randn(3, 57, 16)
    with torch.no_grad():
        assert_close(minimal_alone(x, mixer), mixer(x), rtol=1e-4, atol=1e-5, what="float32")


@pytest.mark.parametrize(
    "options",
    [
        {"causal": True},
        {"restore": "hold"},
        {"aggregate": "linear"},
        {"gate": True},
        {"mix": "dense"},
        {"include_full_branch": True},
        {"interval_bounds": "mean"},
        {"cell_proj": True},
    ],
)
def test_refuses_other_options(options):
    mixer = SeRpEnt(D, backbone_kwargs=SMALL["mamba"], **options)
    name = next(iter(options))
    with pytest.raises(ValueError, match=re.escape(f"got {{'{name}': ")):
        serpent_minimal(torch.randn(1, 5, D), mixer)


def test_imports_nothing_of_the_library():
    """The minimal version computes every step itself: at run time it imports nothing from
    ``serpent_ssm`` (only ``SeRpEnt``, for the type hint), so it cannot call the resampling ops."""
    tree = ast.parse(inspect.getsource(minimal_module))
    hints = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skip = {id(n) for block in hints for stmt in block.body for n in ast.walk(stmt)}
    names = [
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skip
        for alias in node.names
    ]
    assert "math" in names and not [n for n in names if n.startswith("serpent_ssm")], names
