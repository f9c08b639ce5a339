"""SeRpEnt mixer: the invariants (docs/design.md, "Invariants"), streaming, edge cases, config errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from serpent_ssm.modules import S4D, Bidirectional, Mamba, SeRpEnt, SeRpEntConfig
from serpent_ssm.ops.states import map_state

from tests.helpers import assert_close, assert_padding_invariant, right_padding_mask, run_steps

D = 8
SMALL = {"mamba": {"d_state": 4}, "s4d": {"d_state": 8}}


def make(seed=0, backbone="mamba", **options):
    """A small mixer; ``init="identity"`` unless given, so that the compressed branches show in the
    outputs (the causal default, ``"backbone"``, starts them at zero weight)."""
    options.setdefault("init", "identity")
    torch.manual_seed(seed)
    return SeRpEnt(D, backbone, backbone_kwargs=SMALL.get(backbone, {}), **options).eval()


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- causality
@pytest.mark.parametrize("restore", ["hold", "scatter"])
@given(length=st.integers(2, 60), cut=st.floats(0, 0.95), window=st.integers(1, 4), seed=st.integers(0, 999))
@pytest.mark.parametrize("aggregate", ["cell", "linear"])
@pytest.mark.parametrize("trim", [False, True])
def test_causality(restore, aggregate, trim, length, cut, window, seed):
    """Changing x_{l+1:} leaves y_{<=l} unchanged (Mamba backbone).

    With static buffers, bit for bit. With ``trim_buffer`` the buffer length depends on the
    whole row, and the backbone's matrix products round differently for a different number of
    rows, so the past is unchanged up to float round-off only (no information flows back).
    """
    model = make(
        seed,
        causal=True,
        restore=restore,
        window=window,
        rates=(0.5, 0.3, 0.9),
        aggregate=aggregate,
        trim_buffer=trim,
    )
    x = randn(2, length, D, seed=seed)
    l = int(cut * (length - 1))
    x2 = x.clone()
    x2[:, l + 1 :] = randn(2, length - l - 1, D, seed=seed + 1) * 3
    with torch.no_grad():
        past, past2 = model(x)[:, : l + 1], model(x2)[:, : l + 1]
    if trim:
        assert_close(past, past2, 0, 1e-6, "past outputs")
    else:
        assert torch.equal(past, past2)


def test_causality_with_s4d_backbone():
    """S4D's FFT convolution is causal up to round-off (its FFT mixes positions numerically)."""
    model = make(0, "s4d", causal=True)
    x = randn(2, 50, D)
    x2 = x.clone()
    x2[:, 30:] += 3.0
    with torch.no_grad():
        assert_close(model(x)[:, :30], model(x2)[:, :30], 0, 1e-6, "past outputs")


# ----------------------------------------------------------------------------- padding
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    extra=st.integers(0, 10),
    causal=st.booleans(),
    restore=st.sampled_from([None, "scatter", "hold"]),
    aggregate=st.sampled_from(["linear", "kernel", "cell"]),
    window=st.integers(1, 4),
    rates=st.sampled_from([(0.5, 0.3, 0.2), (1.0,), (0.05, 0.7)]),
    intervals=st.sampled_from(
        [("ours", "score"), ("mean", "score"), ("ours", "backbone"), ("mean", "backbone")]
    ),
    seed=st.integers(0, 999),
)
def test_padding_invariance(lengths, extra, causal, restore, aggregate, window, rates, intervals, seed):
    bounds, source = intervals
    model = make(
        seed,
        causal=causal,
        restore=restore,
        aggregate=aggregate,
        window=window,
        rates=rates,
        interval_bounds=bounds,
        interval_source=source,
    )
    x = randn(len(lengths), max(lengths) + extra, D, seed=seed)
    assert_padding_invariant(model, x, lengths, 1e-5, 1e-5)


# ----------------------------------------------------------------------------- counts
@given(
    lengths=st.lists(st.integers(0, 120), min_size=1, max_size=4),
    causal=st.booleans(),
    rates=st.sampled_from([(0.5, 0.3, 0.2), (0.3,), (1.0, 0.01), (0.7, 0.1)]),
    bounds=st.sampled_from(["ours", "paper"]),
    seed=st.integers(0, 999),
)
def test_counts_are_exact(lengths, causal, rates, bounds, seed):
    model = make(seed, causal=causal, rates=rates, interval_bounds=bounds)
    total = max(lengths)
    x = randn(len(lengths), total, D, seed=seed)
    mask = right_padding_mask(lengths, total)
    with torch.no_grad():
        _, info = model(x, mask=mask, return_info=True)
    for branch in info["branches"]:
        for b, n in enumerate(lengths):
            if causal:
                expected = math.floor(float(branch["delta"][b, :n].double().sum()))
            else:
                expected = -((-n * round(branch["rate"] * 100)) // 100)  # exact ceil(κ n) for κ in hundredths
            assert int(branch["counts"][b]) == expected
            assert int(branch["valid"][b].sum()) == expected


# ----------------------------------------------------------------------------- gradient
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("aggregate", ["linear", "kernel", "cell"])
def test_gradient_reaches_the_interval_network(causal, aggregate):
    model = make(0, causal=causal, aggregate=aggregate).train()
    x = randn(3, 40, D)
    mask = right_padding_mask([40, 33, 12], 40)
    (model(x, mask=mask) * randn(3, 40, D, seed=1)).sum().backward()
    for p in model.scores.parameters():
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- identity limit
@pytest.mark.parametrize("aggregate", ["cell", "linear"])
@pytest.mark.parametrize("backbone", ["mamba", "s4d"])
@pytest.mark.parametrize("causal", [True, False])
def test_identity_limit_equals_the_backbone(aggregate, backbone, causal):
    """κ = 1, K = 1, Δ ≡ 1, hold: the branch is its backbone on the full sequence."""
    model = make(
        0,
        backbone,
        causal=causal,
        rates=(1.0,),
        window=1,
        interval_bounds="fixed",
        restore="hold",
        aggregate=aggregate,
        include_full_branch=False,
    )
    if aggregate == "linear":  # the identity init keeps small time-feature weights: zero them
        with torch.no_grad():
            model.aggregators[0].proj.weight[:, D:] = 0.0
    x = randn(3, 37, D)
    mask = right_padding_mask([37, 20, 1], 37)
    with torch.no_grad():
        assert_close(model(x, mask=mask), model.backbones[0](x, mask=mask), 1e-6, 1e-6, "output")


# ----------------------------------------------------------------------------- streaming
@given(
    length=st.integers(1, 40),
    batch=st.integers(1, 3),
    rates=st.sampled_from([(0.5, 0.3, 0.2), (1.0,), (0.9, 0.05)]),
    window=st.integers(1, 4),
    restore=st.sampled_from(["hold", "scatter"]),
    aggregate=st.sampled_from(["linear", "kernel", "cell"]),
    backbone=st.sampled_from(["mamba", "s4d"]),
    full=st.booleans(),
    gate=st.booleans(),
    shared=st.booleans(),
    bounds=st.sampled_from(["ours", "mean"]),
    from_backbone=st.booleans(),
    lean=st.booleans(),
    seed=st.integers(0, 999),
)
def test_step_equals_forward(
    length,
    batch,
    rates,
    window,
    restore,
    aggregate,
    backbone,
    full,
    gate,
    shared,
    bounds,
    from_backbone,
    lean,
    seed,
):
    model = make(
        seed,
        backbone,
        causal=True,
        rates=rates,
        window=window,
        restore=restore,
        aggregate=aggregate,
        include_full_branch=full,
        gate=gate,
        share_intervals=shared,
        init="default" if gate else "identity",  # a gate that is not 1 everywhere
        interval_bounds=bounds,
        interval_source="backbone" if from_backbone and backbone == "mamba" else "score",
        share_backbone=lean,
        mix="gates" if lean else "dense",
        cell_proj=not lean,
    )
    x = randn(batch, length, D, seed=seed)
    with torch.no_grad():
        y = model(x)
    assert_close(run_steps(model, x), y, 1e-4, 1e-5, "step outputs")


def test_streaming_state_has_constant_size():
    model = make(0, causal=True)
    state = model.allocate_state(2)

    def size(s):
        sizes = []
        map_state(lambda leaf: sizes.append(leaf.numel()) or leaf, s)
        return sum(sizes)

    before = size(state)
    with torch.no_grad():
        for _ in range(50):
            _, state = model.step(randn(2, D), state)
    assert size(state) == before


# ----------------------------------------------------------------------------- backbones
def test_user_supplied_mixer_works():
    class CumulativeMean(nn.Module):
        """A causal mixer following the protocol: forward(x, mask) and step()."""

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, D)

        def forward(self, x, mask=None):
            if mask is not None:
                x = x * mask.unsqueeze(-1)
            steps = torch.arange(1, x.shape[1] + 1).view(1, -1, 1)
            return self.lin(x.cumsum(1) / steps)

        def allocate_state(self, batch, device=None, dtype=None):
            return {"sum": torch.zeros(batch, D), "n": torch.zeros(batch, 1)}

        def step(self, x_t, state):
            s, n = state["sum"] + x_t, state["n"] + 1
            return self.lin(s / n), {"sum": s, "n": n}

    torch.manual_seed(0)
    model = SeRpEnt(D, backbone=CumulativeMean, causal=True, init="identity").eval()  # every branch shows
    x = randn(2, 30, D)
    mask = right_padding_mask([30, 17], 30)
    with torch.no_grad():
        y = model(x, mask=mask)
    assert_close(run_steps(model, x[1:, :17])[0], y[1, :17], 1e-5, 1e-6, "streamed row")


def test_non_causal_backbones_are_bidirectional_by_default():
    model = make(0)
    assert all(isinstance(b, Bidirectional) for b in model.backbones)
    assert all(isinstance(b, Mamba) for b in make(0, causal=True).backbones)
    assert all(isinstance(b.forward_mixer, S4D) for b in make(0, "s4d").backbones)


@pytest.mark.parametrize("causal", [False, True])
def test_per_branch_intervals_have_their_own_score_network(causal):
    model = make(3, causal=causal, share_intervals=False, rates=(0.5, 0.25))
    assert len(model.scores) == 2
    x = randn(2, 30, D, seed=1)
    with torch.no_grad():
        model.scores[1].weight.zero_()  # branch 1: constant intervals, branch 0: learned ones
        _, info = model(x, return_info=True)
    d0, d1 = (b["delta"] for b in info["branches"])
    torch.testing.assert_close(d1, torch.full_like(d1, 0.25))  # 2κσ(0) = κ
    assert d0.std() > 1e-3
    shared = make(3, causal=causal, rates=(0.5, 0.25))
    assert len(shared.scores) == 1
    with torch.no_grad():
        _, info = shared(x, return_info=True)
    a, b = (br["delta"] for br in info["branches"])
    torch.testing.assert_close(a / 0.5, b / 0.25)  # one score, scaled by each rate


def test_full_branch_adds_a_plain_backbone():
    model = make(0, include_full_branch=True, mix="dense")
    assert model.out_proj.in_features == 4 * D
    y = model(randn(2, 20, D))
    assert y.shape == (2, 20, D)


@pytest.mark.parametrize("causal", [False, True])
def test_gate_starts_at_one_and_then_acts_per_position(causal):
    x, mask = randn(2, 24, D), right_padding_mask([24, 15], 24)
    plain, gated = make(3, causal=causal), make(3, causal=causal, gate=True)
    assert gated.gate_proj is not None and plain.gate_proj is None
    with torch.no_grad():  # identity init: the gate is exactly 1
        assert_close(gated(x, mask=mask), plain(x, mask=mask), 0, 0, "output at init")
        gated.gate_proj.weight.normal_()
        y = gated(x, mask=mask)
        # y_l = plain_l ⊙ 2σ(W_g x_l + b_g): the gate reads position l only
        expected = plain(x, mask=mask) * 2 * torch.sigmoid(gated.gate_proj(x))
    assert_close(y, expected * mask.unsqueeze(-1), 1e-6, 1e-6, "gated output")
    assert not torch.allclose(y, plain(x, mask=mask))


@given(length=st.integers(2, 40), cut=st.floats(0, 0.95), seed=st.integers(0, 999))
def test_gated_causality(length, cut, seed):
    model = make(seed, causal=True, gate=True, init="default", trim_buffer=False)
    x = randn(2, length, D, seed=seed)
    l = int(cut * (length - 1))
    x2 = x.clone()
    x2[:, l + 1 :] = randn(2, length - l - 1, D, seed=seed + 1) * 3
    with torch.no_grad():
        assert torch.equal(model(x)[:, : l + 1], model(x2)[:, : l + 1])


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("causal", [False, True])
def test_length_one(causal):
    model = make(0, causal=causal)
    y = model(randn(3, 1, D))
    assert y.shape == (3, 1, D) and torch.isfinite(y).all()


@pytest.mark.parametrize("causal", [False, True])
def test_all_padding_rows_give_zero_output(causal):
    model = make(0, causal=causal)
    mask = right_padding_mask([10, 0], 10)
    y = model(randn(2, 10, D), mask=mask)
    assert torch.count_nonzero(y[1]) == 0 and torch.isfinite(y).all()


def test_tiny_rate_gives_one_element():
    model = make(0, rates=(0.001,))
    _, info = model(randn(2, 50, D), return_info=True)
    assert info["branches"][0]["counts"].tolist() == [1, 1]
    assert info["branches"][0]["index"].shape == (2, 1)


@pytest.mark.parametrize("causal", [False, True])
def test_long_sequence_is_finite(causal):
    torch.manual_seed(0)
    model = SeRpEnt(4, "mamba", causal=causal, backbone_kwargs={"d_state": 2, "expand": 1}, init="identity")
    x = randn(1, 16384, 4)
    y = model(x)
    y.square().mean().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------- learning
def test_tiny_classifier_overfits_random_sequences():
    """The whole path learns: 32 random sequences, random labels, 100 % train accuracy."""
    torch.manual_seed(0)
    vocab, classes, length, d = 12, 4, 24, 32

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.mixer = SeRpEnt(d, "mamba", backbone_kwargs={"d_state": 8})
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, classes)

        def forward(self, tokens, mask):
            h = self.embed(tokens)
            h = h + self.mixer(self.norm(h), mask=mask)
            pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            return self.head(pooled)

    tokens = torch.randint(0, vocab, (32, length))
    lengths = torch.randint(length // 2, length + 1, (32,))
    mask = torch.arange(length)[None] < lengths[:, None]
    labels = torch.randint(0, classes, (32,))
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(tokens, mask), labels)
        loss.backward()
        opt.step()
        if (model(tokens, mask).argmax(-1) == labels).all():
            break
    with torch.no_grad():
        assert (model(tokens, mask).argmax(-1) == labels).float().mean().item() == 1.0


# ----------------------------------------------------------------------------- bad input
def _raises(message, fn):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fn()


def test_config_errors():
    _raises(
        "rates: expected every rate in (0, 1], got 1.5 in (0.5, 1.5)",
        lambda: SeRpEntConfig(8, rates=(0.5, 1.5)),
    )
    _raises("rates: expected every rate in (0, 1], got 0.0 in (0.0,)", lambda: SeRpEntConfig(8, rates=(0,)))
    _raises("rates: expected a non-empty list of rates in (0, 1], got ()", lambda: SeRpEntConfig(8, rates=()))
    _raises("rates: expected a list of rates in (0, 1], got 0.5", lambda: SeRpEntConfig(8, rates=0.5))
    _raises("window: expected an integer >= 1, got 0", lambda: SeRpEntConfig(8, window=0))
    _raises("gate: expected a boolean, got 1", lambda: SeRpEntConfig(8, gate=1))
    _raises("n_bases: expected an integer >= 1, got -2", lambda: SeRpEntConfig(8, n_bases=-2))
    _raises(
        "aggregate: expected one of 'linear', 'kernel', 'cell', got 'attention'",
        lambda: SeRpEntConfig(8, aggregate="attention"),
    )
    _raises(
        "restore: expected 'hold' or 'scatter' in causal mode, got 'interp' "
        "(it reads the next grid point, which lies in the future)",
        lambda: SeRpEntConfig(8, causal=True, restore="interp"),
    )
    _raises(
        "interval_bounds: expected one of 'ours', 'paper', 'fixed', 'mean', got 'wide'",
        lambda: SeRpEntConfig(8, interval_bounds="wide"),
    )
    _raises("mix: expected one of 'dense', 'gates', got 'sum'", lambda: SeRpEntConfig(8, mix="sum"))
    _raises("cell_proj: expected a boolean, got 'no'", lambda: SeRpEntConfig(8, cell_proj="no"))
    _raises(
        "interval_source: expected one of 'score', 'backbone', got 'attention'",
        lambda: SeRpEntConfig(8, interval_source="attention"),
    )
    _raises(
        "interval_source: expected 'score' with backbone 's4d' (its Δ does not depend on the input), "
        "got 'backbone'",
        lambda: SeRpEntConfig(8, backbone="s4d", interval_source="backbone"),
    )
    _raises(
        "interval_source: expected a backbone with selective intervals (an 'intervals' method, as Mamba "
        "has), got S4D",
        lambda: SeRpEnt(8, lambda: S4D(8), causal=True, interval_source="backbone"),
    )
    _raises(
        "backbone: expected one of 'mamba', 's4d' or a factory, got 'lstm'",
        lambda: SeRpEntConfig(8, backbone="lstm"),
    )
    _raises(
        "bidirectional: expected False in causal mode, got True (it would read the future)",
        lambda: SeRpEntConfig(8, causal=True, bidirectional=True),
    )


def test_defaults_follow_the_mode():
    assert SeRpEntConfig(8).restore == "interp" and SeRpEntConfig(8).bidirectional is True
    assert SeRpEntConfig(8, causal=True).restore == "hold"
    assert SeRpEntConfig(8).rates == (0.5, 0.3, 0.2) and SeRpEntConfig(8).window == 3
    assert SeRpEntConfig(8).aggregate == "cell" and SeRpEntConfig(8, causal=True).aggregate == "cell"
    # the ablations of results/README.md: a causal LM needs the full branch, classifiers do not
    assert SeRpEntConfig(8).include_full_branch is False
    assert SeRpEntConfig(8, causal=True).include_full_branch is True
    assert SeRpEntConfig(8, causal=True, include_full_branch=False).include_full_branch is False
    # the long runs (results/long/README.md): the lean shared mixer in both modes; a causal one
    # starts as its backbone
    lean = SeRpEntConfig(8)
    assert (lean.share_backbone, lean.mix, lean.cell_proj, lean.init) == (True, "gates", False, "identity")
    causal = SeRpEntConfig(8, causal=True)
    assert (causal.share_backbone, causal.mix, causal.cell_proj, causal.init) == (
        True,
        "gates",
        False,
        "backbone",
    )
    assert SeRpEntConfig(8, causal=True, include_full_branch=False).init == "identity"
    assert SeRpEntConfig(8, include_full_branch=True).init == "identity"
    mine = SeRpEntConfig(8, causal=True, share_backbone=False, mix="dense", cell_proj=True, init="default")
    assert (mine.share_backbone, mine.mix, mine.cell_proj, mine.init) == (False, "dense", True, "default")


def test_causal_default_is_its_backbone_at_the_start():
    """At its defaults a causal mixer has one backbone's parameters plus O(D) (the score network,
    D + 1, and the gates of three branches and the full one, 4·D + D) and computes exactly its
    backbone until training gives the compressed branches weight."""
    torch.manual_seed(3)
    model = SeRpEnt(D, causal=True, backbone_kwargs=SMALL["mamba"]).eval()
    n_backbone = sum(p.numel() for p in model.full_backbone.parameters())
    assert model.full_backbone is model.backbones[0]
    assert sum(p.numel() for p in model.parameters()) == n_backbone + (D + 1) + (4 * D + D)
    x = randn(2, 17, D, seed=3)
    with torch.no_grad():
        assert torch.equal(model(x), model.full_backbone(x))
        assert_close(run_steps(model, x), model(x), 1e-5, 1e-6, "step outputs")


def test_non_causal_default_is_as_wide_as_its_backbone():
    """At its defaults a non-causal mixer has its backbone's parameters plus O(D): the score
    network (D + 1) and the gates of its three branches (3·D + D)."""
    model = make(7)
    n_backbone = sum(p.numel() for p in model.backbones[0].parameters())
    assert len(model.backbones) == 1 and model.full_backbone is None
    assert sum(p.numel() for p in model.parameters()) == n_backbone + (D + 1) + (3 * D + D)


def test_step_needs_causal_mode():
    _raises(
        "step: expected a causal SeRpEnt (causal=True), got a non-causal one",
        lambda: make(0).allocate_state(1),
    )


def test_bad_forward_input():
    model = make(0)
    _raises("x: expected shape (*, *, 8), got (2, 5, 3)", lambda: model(torch.zeros(2, 5, 3)))
    _raises(
        "mask: expected right padding (real elements first, then padding) in every row, "
        "got a real element after padding in row 0",
        lambda: model(torch.zeros(1, 3, D), mask=torch.tensor([[False, True, True]])),
    )


# ----------------------------------------------------------------------------- shared backbone
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backbone", ["mamba", "s4d"])
def test_shared_backbone_has_one_set_of_weights_and_starts_as_it(causal, backbone):
    shared = make(4, backbone, causal=causal, share_backbone=True, include_full_branch=True, init="backbone")
    separate = make(4, backbone, causal=causal, include_full_branch=True, share_backbone=False)
    n_backbone = sum(p.numel() for p in shared.full_backbone.parameters())
    assert len(shared.backbones) == 1 and shared.full_backbone is shared.backbones[0]
    extra = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    assert extra == 3 * n_backbone  # one backbone instead of four
    x = randn(3, 23, D, seed=2)
    mask = right_padding_mask([23, 11, 1], 23)
    with torch.no_grad():  # init="backbone": exactly the full branch, i.e. the backbone
        assert torch.equal(shared(x, mask=mask), shared.full_backbone(x, mask=mask) * mask[..., None])
    assert_padding_invariant(shared, x, [23, 11, 1], 1e-5, 1e-6)


@pytest.mark.parametrize("aggregate", ["cell", "linear", "kernel"])
def test_backbone_init_builds_the_identity_aggregators(aggregate):
    """``init="backbone"`` differs from ``"identity"`` only in the merge: every aggregator starts
    as it does under ``"identity"`` (passing its input), so the compressed branches carry a view
    of the sequence once their merge weights leave zero."""
    options = dict(causal=True, include_full_branch=True, aggregate=aggregate, cell_proj=True)
    backbone_init = make(5, init="backbone", **options).aggregators.state_dict()
    identity_init = make(5, init="identity", **options).aggregators.state_dict()
    assert backbone_init.keys() == identity_init.keys()
    for key, value in backbone_init.items():
        assert torch.equal(value, identity_init[key]), key


def test_shared_backbone_is_stored_once():
    """The full branch runs the shared module without a second name for it: the state dict holds
    each weight once (transformers' save_pretrained refuses tensors stored under two names), and a
    state dict saved before 0.4.0, which named them twice, still loads."""
    model = make(2, causal=True, include_full_branch=True)
    state = model.state_dict()
    assert model.full_backbone is model.backbones[0]
    assert not any(k.startswith("full_backbone.") for k in state)
    assert len({v.data_ptr() for v in state.values()}) == len(state)
    old = {**state, **{"full_backbone." + k.removeprefix("backbones.0."): v for k, v in state.items()
                       if k.startswith("backbones.0.")}}  # fmt: skip
    other = make(3, causal=True, include_full_branch=True)
    other.load_state_dict(old)
    x = randn(2, 9, D)
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
    separate = make(2, causal=True, include_full_branch=True, share_backbone=False)
    with pytest.raises(RuntimeError, match="Unexpected key"):  # only a shared mixer drops them
        separate.load_state_dict({**separate.state_dict(), "full_backbone.extra": torch.zeros(1)})


@given(length=st.integers(1, 30), aggregate=st.sampled_from(["cell", "linear"]), seed=st.integers(0, 99))
def test_shared_backbone_streams_like_forward(length, aggregate, seed):
    model = make(seed, causal=True, share_backbone=True, aggregate=aggregate, init="default")
    x = randn(2, length, D, seed=seed)
    with torch.no_grad():
        y = model(x)
    assert_close(run_steps(model, x), y, 1e-4, 1e-5, "step outputs")


def test_backbone_init_needs_the_full_branch():
    _raises(
        "init: expected 'identity' or 'default' without the full branch, got 'backbone' "
        "(it starts the mixer as its full branch; set include_full_branch=true)",
        lambda: SeRpEntConfig(8, init="backbone"),
    )


# ----------------------------------------------------------------------------- interval variants
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_intervals_from_the_backbone_are_its_selectivity(causal, shared):
    """``interval_source="backbone"``: no score network; the score is log of the scoring backbone's
    mean Δ (both directions when bidirectional), and training moves that backbone's Δ."""
    model = make(1, causal=causal, interval_source="backbone", share_intervals=shared)
    assert len(model.scores) == 0
    x = randn(2, 19, D, seed=1)
    mask = right_padding_mask([19, 8], 19)
    _, info = model(x, mask=mask, return_info=True)
    for i, branch in enumerate(info["branches"]):
        backbone = model.branch_backbone(0 if shared else i)
        with torch.no_grad():
            selectivity = backbone.intervals(x, mask).mean(-1)
        want = 2 * branch["rate"] * selectivity / (1 + selectivity)  # 2κσ(log m)
        assert_close(branch["delta"][mask], want[mask], 1e-5, 1e-7, "intervals")
    info["branches"][0]["delta"][mask].sum().backward()
    scoring = model.branch_backbone(0)
    inner = scoring.forward_mixer if not causal else scoring
    assert inner.dt_proj.weight.grad is not None and inner.dt_proj.weight.grad.abs().sum() > 0


def test_mean_bounds_keep_the_causal_grid_where_sigmoid_bounds_collapse():
    """The causal interval collapse in one picture: scores far below 0 leave "ours" (2κσ(s)) with no
    grid point at all, while "mean" (κ·e^s / mean e^s) keeps floor(κ·n) of them."""
    counts = {}
    for bounds in ("ours", "mean"):
        model = make(0, causal=True, rates=(0.5, 0.25), interval_bounds=bounds)
        with torch.no_grad():
            model.scores[0].weight.zero_()
            model.scores[0].bias.fill_(-40.0)
            _, info = model(randn(2, 48, D), return_info=True)
        counts[bounds] = [b["counts"].tolist() for b in info["branches"]]
    assert counts == {"ours": [[0, 0], [0, 0]], "mean": [[24, 24], [12, 12]]}


@pytest.mark.parametrize("causal", [False, True])
def test_lean_shared_mixer_has_its_backbones_parameters_and_starts_as_it(causal):
    """share_backbone + mix="gates" + cell_proj=False + init="backbone": one backbone's parameters
    plus the score network and the gates (O(D)), and the output is the backbone's at the start."""
    model = make(
        5,
        causal=causal,
        share_backbone=True,
        include_full_branch=True,
        init="backbone",
        mix="gates",
        cell_proj=False,
    )
    n_backbone = sum(p.numel() for p in model.full_backbone.parameters())
    n_branches = len(model.config.rates) + 1
    assert sum(p.numel() for p in model.parameters()) == n_backbone + (D + 1) + (n_branches * D + D)
    x = randn(3, 21, D, seed=5)
    mask = right_padding_mask([21, 9, 1], 21)
    with torch.no_grad():
        assert torch.equal(model(x, mask=mask), model.full_backbone(x, mask=mask) * mask[..., None])
    assert_padding_invariant(model, x, [21, 9, 1], 1e-5, 1e-6)


def test_gates_mix_the_branches_per_channel():
    model = make(6, mix="gates", init="default")
    with torch.no_grad():
        model.out_proj.weight.copy_(torch.randn(model.out_proj.weight.shape))
        model.out_proj.bias.copy_(torch.randn(D))
    branches = randn(2, 5, 3 * D, seed=6)
    want = sum(branches[..., b * D : (b + 1) * D] * model.out_proj.weight[b] for b in range(3))
    assert_close(model.out_proj(branches), want + model.out_proj.bias, 1e-6, 1e-6, "gates")
