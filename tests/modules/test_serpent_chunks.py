"""Causal SeRpEnt carries its streaming state through ``forward``: any split of a sequence into
chunks gives the outputs and the final state of one ``forward`` over the whole sequence and of
``step`` element by element, for every option, with padding."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_ssm.modules import S4D, SeRpEnt
from serpent_ssm.modules.protocol import StateSupport
from serpent_ssm.ops.serpent_step import serpent_step

from tests.helpers import ShiftedLayer, assert_close, causal_lm, right_padding_mask, run_steps, wake_branches

D = 8
SMALL = {"mamba": {"d_state": 4}, "s4d": {"d_state": 8}}


def make(seed=0, backbone="mamba", **options):
    options.setdefault("init", "identity")  # the compressed branches show (the default zeroes them)
    torch.manual_seed(seed)
    model = SeRpEnt(D, backbone, backbone_kwargs=SMALL[backbone], causal=True, **options).double().eval()
    with torch.no_grad():  # scores with some spread, so that the intervals differ along the sequence
        for net in model.scores:
            net.weight.mul_(4.0)
    return model


def flat(state, prefix=""):
    """``{path: tensor}`` of a nested state (complex tensors as their real and imaginary parts)."""
    if isinstance(state, torch.Tensor):
        return {prefix: torch.view_as_real(state) if state.is_complex() else state}
    if state is None:
        return {}
    if dataclasses.is_dataclass(state):
        items = ((f.name, getattr(state, f.name)) for f in dataclasses.fields(state))
    else:
        items = state.items() if isinstance(state, dict) else enumerate(state)
    out = {}
    for k, v in items:
        out.update(flat(v, f"{prefix}/{k}"))
    return out


def assert_states_close(got, want, what):
    got, want = flat(got), flat(want)
    assert got.keys() == want.keys(), what
    for k in want:
        assert_close(
            got[k].double(), want[k].double(), 1e-5, 1e-6, f"{what} {k}"
        )  # Mamba keeps float32 states


def row_of(state, b):
    """Row ``b`` of a streaming state as ``{path: tensor}``: the branches' stacked states hold
    the rows on dim 1, the score states on dim 0."""
    return {k: v[b] if k.startswith("/scores") else v[:, b] for k, v in flat(state).items()}


def split(length, cuts):
    """Chunk boundaries of ``range(length)`` from cut points in (0, 1)."""
    points = sorted({0, length, *(int(c * length) for c in cuts)})
    return list(zip(points[:-1], points[1:], strict=True))


def run_chunks(model, x, bounds, mask=None):
    state, outs = None, []
    with torch.no_grad():
        for lo, hi in bounds:
            m = None if mask is None else mask[:, lo:hi]
            y, state = model(x[:, lo:hi], mask=m, state=state, return_state=True)
            outs.append(y)
    return torch.cat(outs, 1), state


OPTIONS = st.fixed_dictionaries(
    {
        "aggregate": st.sampled_from(["cell", "linear", "kernel"]),
        "restore": st.sampled_from(["hold", "scatter"]),
        "include_full_branch": st.booleans(),
        "gate": st.booleans(),
        "interval_bounds": st.sampled_from(["ours", "mean", "paper"]),
        "share_backbone": st.booleans(),
        "share_intervals": st.booleans(),
        "window": st.integers(1, 4),
        "rates": st.sampled_from([(0.5, 0.3, 0.2), (0.9,), (0.25, 0.6)]),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    options=OPTIONS,
    backbone=st.sampled_from(["mamba", "s4d"]),
    from_backbone=st.booleans(),
    length=st.integers(1, 30),
    batch=st.integers(1, 3),
    cuts=st.lists(st.floats(0.01, 0.99), max_size=5),
    seed=st.integers(0, 999),
)
def test_chunks_equal_one_forward_and_steps(options, backbone, from_backbone, length, batch, cuts, seed):
    source = "backbone" if from_backbone and backbone == "mamba" else "score"
    model = make(seed, backbone, interval_source=source, init="default", **options)
    x = torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y_chunks, state_chunks = run_chunks(model, x, split(length, cuts))
    with torch.no_grad():
        y_whole, state_whole = model(x, return_state=True)
        y_plain = model(x)
        state_steps = model.allocate_state(batch, dtype=torch.float64)
        for t in range(length):
            _, state_steps = model.step(x[:, t], state_steps)
    assert torch.equal(y_whole, y_plain)  # a zero state is no state
    assert_close(y_chunks, y_whole, 1e-5, 1e-6, "chunked outputs")
    assert_close(run_steps(model, x), y_whole, 1e-5, 1e-6, "step outputs")
    assert_states_close(state_chunks, state_whole, "chunks vs whole")
    assert_states_close(state_chunks, state_steps, "chunks vs steps")


@settings(max_examples=30, deadline=None)
@given(
    options=OPTIONS,
    lengths=st.lists(st.integers(0, 25), min_size=1, max_size=3),
    extra=st.integers(0, 5),
    cuts=st.lists(st.floats(0.01, 0.99), max_size=4),
    seed=st.integers(0, 999),
)
def test_padded_chunks_end_in_each_rows_own_state(options, lengths, extra, cuts, seed):
    """Right padding across chunks (a row's padding runs to the end of the sequence): each row's
    outputs and final state are those of its real elements alone; padding may hold anything."""
    model = make(seed, init="default", **options)
    total = max(lengths) + extra
    x = torch.randn(
        len(lengths), total, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    mask = right_padding_mask(lengths, total)
    x = torch.where(mask.unsqueeze(-1), x, torch.nan)
    y, state = run_chunks(model, x, split(total, cuts), mask) if total else (x, None)
    if not total:
        return
    for b, n in enumerate(lengths):
        assert torch.count_nonzero(y[b, n:]) == 0
        with torch.no_grad():
            y_b, state_b = model(x[b : b + 1, :n], return_state=True)
        assert_close(y[b, :n], y_b[0], 1e-5, 1e-6, f"row {b}")
        got, want = row_of(state, b), row_of(state_b, 0)
        for k, v in want.items():
            assert_close(got[k].double(), v.double(), 1e-5, 1e-6, f"row {b} {k}")


def test_a_poisoned_row_stays_poisoned_across_chunks():
    model = make(1)
    x = torch.randn(2, 12, D, dtype=torch.float64)
    x[0, 4] = torch.inf
    with torch.no_grad():
        y1, state = model(x[:, :6], return_state=True)
        y2, _ = model(x[:, 6:], state=state, return_state=True)
    assert torch.isnan(y1[0, 4:]).all() and torch.isfinite(y1[0, :4]).all() and torch.isfinite(y1[1]).all()
    assert torch.isnan(y2[0]).all() and torch.isfinite(y2[1]).all()


def test_state_support_and_refusals():
    assert make(0).state_support == StateSupport(step=True, forward_state=True)
    torch.manual_seed(0)
    non_causal = SeRpEnt(D, "mamba", backbone_kwargs=SMALL["mamba"])
    assert non_causal.state_support == StateSupport()
    message = (
        "state: expected a causal SeRpEnt whose backbones carry a state through forward "
        "(causal=True, backbone forward_state), got causal=False"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        non_causal(torch.randn(1, 5, D), return_state=True)

    class NoChunks(S4D):
        state_support = StateSupport(step=True)

    custom = SeRpEnt(D, lambda: NoChunks(D, d_state=4), causal=True)
    assert custom.state_support == StateSupport(step=True, forward_state=False)
    with pytest.raises(ValueError, match="^state: expected a causal SeRpEnt whose backbones carry a state"):
        custom(torch.randn(1, 5, D), return_state=True)
    with pytest.raises(
        ValueError, match=re.escape("state: expected the state of 2 rows (allocate_state(2))")
    ):
        make(0)(torch.randn(2, 5, D, dtype=torch.float64), state=make(0).allocate_state(3))


@pytest.mark.parametrize("name", ["serpent-mamba", "serpent-s4d"])
def test_serpent_language_model_runs_in_chunks(name):
    """CausalLM: chunked forward = one forward = step by step; generate prefills in one pass."""
    torch.manual_seed(0)
    lm = wake_branches(causal_lm(name, 259, 16, 2, serpent={"rates": (0.5, 0.25)}).double().eval())
    assert lm.state_support == StateSupport(step=True, forward_state=True)
    ids = torch.randint(0, 259, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = lm(ids)
        first, state = lm(ids[:, :17], return_state=True)
        second, _ = lm(ids[:, 17:], state=state, return_state=True)
        steps = run_steps(lm, ids)
    assert_close(torch.cat([first, second], 1), whole, 1e-5, 1e-6, "chunked logits")
    assert_close(steps, whole, 1e-5, 1e-6, "step logits")
    calls = []
    original = lm.step
    lm.step = lambda *a: calls.append(1) or original(*a)
    with torch.no_grad():
        out = lm.generate(ids[:, :25], max_new_tokens=3, temperature=0.0)
    assert out.shape == (2, 28) and len(calls) == 3  # the prompt in one pass, then one step a token


FUSED = st.fixed_dictionaries(
    {
        "restore": st.sampled_from(["hold", "scatter"]),
        "include_full_branch": st.booleans(),
        "gate": st.booleans(),
        "interval_bounds": st.sampled_from(["ours", "mean", "paper", "fixed"]),
        "interval_source": st.sampled_from(["score", "backbone"]),
        "share_backbone": st.booleans(),
        "share_intervals": st.booleans(),
        "lean": st.booleans(),
        "rates": st.sampled_from([(0.5, 0.3, 0.2), (0.5,), (0.25, 0.45)]),
    }
)


def branch_by_branch(model, x_t, state):
    """``model``'s step on the ``"naive"`` backend (branch by branch, the reference)."""
    return serpent_step(x_t, state, model.step_weights(), backend="naive")


@settings(max_examples=40, deadline=None)
@given(options=FUSED, length=st.integers(1, 25), batch=st.integers(1, 3), seed=st.integers(0, 999))
def test_fused_step_equals_branch_by_branch_steps(options, length, batch, seed):
    """The causal defaults (cell aggregation, Mamba backbones, Δ ≤ 1) step every branch in one
    stacked backbone step; outputs and states equal the branch-by-branch path's."""
    lean = options.pop("lean")
    model = make(seed, init="default", mix="gates" if lean else "dense", cell_proj=not lean, **options)
    assert model.step_weights().stacked is not None
    x = torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, length // 2] *= 40.0  # big inputs: long intervals, so that grid points are crossed
    with torch.no_grad():
        s_fused, s_ref = model.allocate_state(batch), model.allocate_state(batch)
        for t in range(length):
            y_fused, s_fused = serpent_step(x[:, t], s_fused, model.step_weights(), backend="torch")
            y_ref, s_ref = branch_by_branch(model, x[:, t], s_ref)
            # float32 SSM states: errors scale with the largest output (the 40x inputs give ~100)
            scale = max(1.0, y_ref.abs().max().item())
            assert_close(y_fused, y_ref, 1e-5, 1e-6 * scale, f"output at {t}")
            assert torch.equal(torch.floor(s_fused.t), torch.floor(s_ref.t))  # same grid points
    assert_states_close(s_fused, s_ref, "fused vs branch by branch")


def test_which_mixers_step_fused():
    def fused(model):
        with torch.no_grad():
            return model.step_weights().stacked is not None

    assert fused(make(0))  # the causal defaults
    assert not fused(make(0, rates=(0.9,)))  # Δ up to 1.8: two grid points per element
    assert not fused(make(0, aggregate="linear"))
    assert not fused(make(0, backbone="s4d"))
    x = torch.randn(2, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="^backend: 'torch' steps every branch at once"):
        serpent_step(
            x, make(0, backbone="s4d").allocate_state(2), make(0, backbone="s4d").step_weights(), "torch"
        )
    with pytest.raises(
        ValueError, match="^backend: expected one of 'auto', 'naive', 'torch', 'cpu', got 'gpu'$"
    ):
        serpent_step(x, make(0).allocate_state(2), make(0).step_weights(), "gpu")


def test_fused_step_follows_parameter_changes_and_passes_gradients():
    """The stacked weights are cached without gradients; a changed parameter (an optimiser
    step, load_state_dict) is seen at the next step, and with gradients they flow back."""
    model = make(3, include_full_branch=True, share_backbone=False, cell_proj=True)
    x = torch.randn(2, D, dtype=torch.float64)

    def start():  # every branch about to cross a grid point
        state = model.allocate_state(2)
        return dataclasses.replace(state, t=torch.full_like(state.t, 0.999))

    with torch.no_grad():
        before, _ = model.step(x, start())
        model.backbones[1].out_proj.weight.mul_(2.0)
        model.full_backbone.in_proj.weight.add_(0.1)
        after, _ = model.step(x, start())
        want, _ = branch_by_branch(model, x, start())
    assert not torch.allclose(before, after)
    assert_close(after, want, 1e-5, 1e-6, "after the change")
    y, _ = model.step(x, start())
    y.sum().backward()
    for name in ("full_backbone.in_proj.weight", "backbones.0.in_proj.weight", "aggregators.2.proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", ["mamba", "s4d", "serpent-mamba", "serpent-s4d"])
def test_select_state_picks_rows_of_every_models_state(name):
    """``CausalLM.select_state`` (beam search's reorder) gives the state of the chosen rows: the
    rows continue exactly as the same rows of a run started from those rows alone."""
    torch.manual_seed(0)
    lm = causal_lm(name, 259, 16, 2, serpent={"rates": (0.5, 0.25)} if name.startswith("serpent") else None)
    lm = wake_branches(lm.double().eval())  # the compressed branches' states show
    ids = torch.randint(3, 259, (3, 12), generator=torch.Generator().manual_seed(2))
    index = torch.tensor([2, 0, 2, 1])
    with torch.no_grad():
        _, state = lm(ids[:, :7], return_state=True)
        picked = lm.select_state(state, index)
        got, _ = lm(ids[index, 7:], state=picked, return_state=True)
        want = lm(ids[index])[:, 7:]
    assert_close(got, want, 1e-5, 1e-6, "continued rows")


@pytest.mark.parametrize("shared", [False, True])
def test_a_wrapped_layer_applies_in_step(shared):
    """A layer that an adapter wraps (a LoRA layer; here a Linear plus an offset) is called, never
    read as a weight: with separate backbones step() goes branch by branch, with a shared one
    the fused step calls the shared layers; both equal forward()."""

    model = make(2, include_full_branch=True, share_backbone=shared)
    model.backbones[0].in_proj = ShiftedLayer(model.backbones[0].in_proj)
    with torch.no_grad():
        assert (model.step_weights().stacked is None) is not shared
    x = torch.randn(2, 20, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5.0
    with torch.no_grad():
        y = model(x)
    assert_close(run_steps(model, x), y, 1e-5, 1e-6, "step outputs")
