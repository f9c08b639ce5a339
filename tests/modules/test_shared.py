"""The decoding weight cache (``modules._shared.cached_weights``): a hit while nothing changed, a
rebuild after any change that could make the cached value stale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from serpent_ssm.modules import Mamba
from serpent_ssm.modules._shared import cached_weights


def _changes():
    def in_place(m):
        m.x_proj.weight.mul_(2.0)

    def parameter_replaced(m):
        m.D = nn.Parameter(m.D.detach().clone())

    def layer_replaced(m):
        m.out_proj = nn.Linear(m.out_proj.in_features, m.out_proj.out_features, bias=False)

    def layer_wrapped(m):
        m.in_proj = nn.Sequential(m.in_proj)

    def layer_added(m):
        m.dt_proj.adapter = nn.Linear(2, 2)

    def parameter_added(m):
        m.conv1d.register_parameter("extra", nn.Parameter(torch.zeros(1)))

    def hooked(m):
        m.dt_proj.register_forward_pre_hook(lambda mod, args: None)

    def unhooked(m):
        m.hook.remove()

    def loaded(m):
        m.load_state_dict({k: v + 1.0 for k, v in m.state_dict().items()})

    def moved(m):
        m.double()

    def mode(m):
        m.train(False)

    return [in_place, parameter_replaced, layer_replaced, layer_wrapped, layer_added, parameter_added,
            hooked, unhooked, loaded, moved, mode]  # fmt: skip


def _counted(m):
    built = []

    def get():
        return cached_weights(m, "probe", [m], lambda: built.append(1) or len(built))

    return get, built


def test_a_hit_while_nothing_changes():
    m = Mamba(8, d_state=4)
    get, built = _counted(m)
    with torch.no_grad():
        assert [get() for _ in range(5)] == [1] * 5
        m(torch.randn(1, 3, 8))  # running the module changes nothing
        assert get() == 1
    assert built == [1]


@pytest.mark.parametrize("change", _changes(), ids=lambda f: f.__name__)
def test_any_change_rebuilds(change):
    m = Mamba(8, d_state=4)
    object.__setattr__(m, "hook", m.x_proj.register_forward_hook(lambda mod, args, out: None))
    get, _ = _counted(m)
    with torch.no_grad():
        assert get() == 1
        change(m)
        assert get() == 2
        assert get() == 2
