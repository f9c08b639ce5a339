"""Model configs, build_model, save_pretrained / from_pretrained round trips."""

from __future__ import annotations

import json
import re

import pytest
import torch

from serpent_ssm.models import MODEL_NAMES
from serpent_ssm.models.config import ModelConfig, build_model, from_pretrained, save_pretrained

from tests.helpers import right_padding_mask


def _inputs(cfg: ModelConfig, batch=3, length=20):
    g = torch.Generator().manual_seed(0)
    if cfg.vocab_size:
        x = torch.randint(1, cfg.vocab_size, (batch, length), generator=g)
    else:
        x = torch.rand(batch, length, generator=g)
    return x, right_padding_mask([length, 13, 5], length)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("head", ["classify", "retrieval"])
def test_save_and_load_round_trip(tmp_path, name, head):
    inputs = {"vocab_size": 20} if head == "retrieval" or name.endswith("mamba") else {"d_input": 1}
    cfg = ModelConfig(name=name, head=head, d_model=16, n_layers=1, n_classes=3, **inputs)
    model = build_model(cfg).eval()
    x, mask = _inputs(cfg)
    args = (x, mask, x.flip(1), mask) if head == "retrieval" else (x, mask)
    with torch.no_grad():
        want = model(*args)
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["name"] == name
    loaded = from_pretrained(tmp_path).eval()
    with torch.no_grad():
        got = loaded(*args)
    assert got.shape == (3, 3)
    assert torch.equal(got, want)


@pytest.mark.parametrize("causal", [False, True])
def test_saved_serpent_config_does_not_depend_on_library_defaults(tmp_path, monkeypatch, causal):
    """config.json records every SeRpEnt option as resolved: a model saved under one set of
    defaults loads unchanged after the defaults change (as include_full_branch did for causal mode)."""
    from serpent_ssm.modules import serpent

    cfg = ModelConfig(name="serpent-mamba", d_model=8, n_layers=1, vocab_size=9, causal=causal)
    model = build_model(cfg).eval()
    save_pretrained(model, tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())["serpent"]
    resolved = next(m for m in model.modules() if isinstance(m, serpent.SeRpEnt)).config
    assert stored["include_full_branch"] == resolved.include_full_branch == causal
    assert stored["aggregate"] == resolved.aggregate and stored["restore"] == resolved.restore
    assert stored["rates"] == [0.5, 0.3, 0.2] and "causal" not in stored
    original = serpent.SeRpEntConfig.__post_init__

    def other_defaults(self):  # a future release with other defaults
        self.restore = self.restore or "scatter"
        if self.include_full_branch is None:
            self.include_full_branch = not self.causal
        original(self)

    monkeypatch.setattr(serpent.SeRpEntConfig, "__post_init__", other_defaults)
    x, mask = _inputs(cfg)
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path).eval()(x, mask), model(x, mask))


def test_pixel_inputs_accept_2d(tmp_path):
    model = build_model(ModelConfig(d_model=8, n_layers=1, d_input=1)).eval()
    x = torch.rand(2, 12)
    with torch.no_grad():
        assert torch.equal(model(x), model(x[..., None]))


def test_load_errors(tmp_path):
    model = build_model(ModelConfig(d_model=8, n_layers=1, vocab_size=5))
    save_pretrained(model, tmp_path / "a")
    other = build_model(ModelConfig(d_model=12, n_layers=1, vocab_size=5))
    save_pretrained(other, tmp_path / "b")
    (tmp_path / "a/model.safetensors").write_bytes((tmp_path / "b/model.safetensors").read_bytes())
    wrong = r"model\.safetensors: tensor 'encoder\.encoder\.weight': expected shape \(5, 8\), got \(5, 12\)"
    with pytest.raises(ValueError, match=wrong):
        from_pretrained(tmp_path / "a")
    data = (tmp_path / "b/model.safetensors").read_bytes()
    (tmp_path / "b/model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: unreadable safetensors file"):
        from_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'c' / 'config.json'}: missing")):
        from_pretrained(tmp_path / "c")


def test_config_errors():
    with pytest.raises(
        ValueError, match=r"^model\.name: expected one of mamba, s4d, serpent-mamba, serpent-s4d, got 'gpt'$"
    ):
        ModelConfig(name="gpt")
    with pytest.raises(ValueError, match=r"^model\.d_modl: unknown key, expected one of "):
        ModelConfig.from_dict({"d_modl": 3})
    with pytest.raises(ValueError, match=r"^model\.serpent\.ratez: unknown key"):
        ModelConfig(name="serpent-mamba", serpent={"ratez": [0.5]})
