"""Model configs, build_model, save_pretrained / from_pretrained round trips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from serpent_ssm.models import (
    FORMAT_VERSION,
    MODEL_NAMES,
    ModelConfig,
    build_model,
    from_pretrained,
    migrate,
    save_pretrained,
)
from serpent_ssm.models.io import read_config
from serpent_ssm.modules import SeRpEntOptions

from tests.fixtures import golden
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
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["model_type"] == "serpent" and stored["model_name"] == name  # transformers' names
    assert len(stored["id2label"]) == 3
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
    wrong = r"model\.safetensors: tensor 'model\.encoder\.encoder\.weight': expected shape \(5, 8\), "
    wrong += r"got \(5, 12\)"
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


# ----------------------------------------------------------------------------- format and migration
FIXTURES = Path(__file__).parent.parent / "fixtures" / "v0.1.0"


@pytest.mark.parametrize("name", ["lm-serpent-empty", "classify-serpent-s4d", "lm-mamba"])
def test_models_saved_by_0_1_0_load_through_the_migration(name):
    """config.json files of 0.1.0 (no format_version; a causal SeRpEnt LM saved before the full
    branch became the causal default had ``"serpent": {}``) give the same logits as then."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    recorded = safetensors_torch.load_file(str(FIXTURES / "logits.safetensors"))
    assert "format_version" not in json.loads((FIXTURES / name / "config.json").read_text())
    model = from_pretrained(FIXTURES / name).eval()
    assert model.config.causal is name.startswith("lm")
    with torch.no_grad():
        got = model(recorded["ids"] if name.startswith("lm") else recorded["x"])
    if "s4d" in name:  # S4D's convolution runs in float64 since 0.2.0 (causal for any finite input)
        torch.testing.assert_close(got, recorded[name], rtol=0, atol=1e-6)
    else:  # the same model as then: its logits to float32 rounding on any processor
        torch.testing.assert_close(got, recorded[name], **golden.ACROSS_CPUS)
    if name == "lm-serpent-empty":
        assert model.config.serpent.include_full_branch is False
        assert all(b.mixer.full_backbone is None for b in model.blocks)


def test_the_library_layout_of_0_4_0_still_loads(tmp_path):
    """Up to 0.4.0 ``save_pretrained`` wrote ``ModelConfig``'s names (no ``model_type``) and the
    tensors without transformers' ``model.`` prefix: such a folder (every run's ``best/`` then)
    loads with the same logits."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    cfg = ModelConfig(name="serpent-mamba", head="lm", d_model=8, n_layers=2, vocab_size=11)
    model = build_model(cfg).eval()
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    state = {k: v for k, v in model.state_dict().items() if k != "head.weight"}  # tied: stored once
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
    loaded = from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert loaded.head.weight is loaded.embedding.weight
    record = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**record, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"config\.json: not a model config: model_type: expected 'serpent'"):
        from_pretrained(tmp_path)


def test_migrate_refuses_unknown_versions():
    with pytest.raises(
        ValueError, match=r"^format_version: expected one of 0\.1\.0, 0\.2\.0, 0\.3\.0, 0\.4\.0, got '9\.9'$"
    ):
        migrate({"format_version": "9.9"})
    assert migrate({"name": "mamba", "serpent": {}})["serpent"] is None


def test_a_0_2_0_classifier_keeps_the_mixer_of_then(tmp_path):
    """0.2.0 -> 0.3.0: a record that left share_backbone, mix and cell_proj out meant the defaults
    of then (three backbones, a dense output map, the cell projection), not today's lean mixer."""
    record = {"format_version": "0.2.0", "name": "serpent-mamba", "d_model": 8, "n_layers": 1,
              "d_input": 1, "n_classes": 3, "serpent": {"rates": [0.5, 0.3, 0.2]}}  # fmt: skip
    old = ModelConfig.from_dict(migrate(record)).resolved().serpent
    assert (old.share_backbone, old.mix, old.cell_proj) == (False, "dense", True)
    new = ModelConfig.from_dict({k: v for k, v in record.items() if k != "format_version"}).resolved()
    assert (new.serpent.share_backbone, new.serpent.mix, new.serpent.cell_proj) == (True, "gates", False)
    kept = dict(record, serpent={"share_backbone": True, "mix": "gates", "cell_proj": False})
    assert ModelConfig.from_dict(migrate(kept)).serpent.mix == "gates"  # set values are kept


def test_a_0_3_0_language_model_keeps_the_mixer_of_then(tmp_path):
    """0.3.0 -> 0.4.0: a causal record that left share_backbone, mix, cell_proj and init out meant
    the causal defaults of then (three backbones, a dense merge, the cell projection, identity
    init); a saved model gives the same logits after the lean mixer became the causal default."""
    then = {"share_backbone": False, "mix": "dense", "cell_proj": True, "init": "identity"}
    torch.manual_seed(0)
    cfg = ModelConfig(name="serpent-mamba", head="lm", d_model=8, n_layers=2, vocab_size=11, serpent=then)
    model = build_model(cfg).eval()
    save_pretrained(model, tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    record["format_version"] = "0.3.0"
    for key in then:  # as a 0.3.0 record written by hand, or by a YAML config, would leave them
        record["serpent"][key] = None
    record["causal"] = None
    (tmp_path / "config.json").write_text(json.dumps(record))
    loaded = from_pretrained(tmp_path).eval()
    assert {k: getattr(loaded.config.serpent, k) for k in then} == then
    ids = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    classifier = {"format_version": "0.3.0", "name": "serpent-mamba", "d_model": 8, "n_layers": 1,
                  "d_input": 1, "n_classes": 3, "serpent": {"init": None}}  # fmt: skip
    lean = ModelConfig.from_dict(migrate(classifier)).resolved().serpent
    assert (lean.share_backbone, lean.mix, lean.cell_proj, lean.init) == (True, "gates", False, "identity")
    today = ModelConfig(name="serpent-mamba", head="lm", d_model=8, n_layers=1, vocab_size=11).resolved()
    assert (today.serpent.share_backbone, today.serpent.mix, today.serpent.init) == (
        True,
        "gates",
        "backbone",
    )


def test_config_json_is_the_resolved_config_with_its_version(tmp_path):
    cfg = ModelConfig(name="serpent-mamba", head="lm", d_model=8, n_layers=1, vocab_size=9)
    model = build_model(cfg)
    save_pretrained(model, tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert next(iter(stored)) == "format_version" and stored["format_version"] == FORMAT_VERSION
    assert stored["model_type"] == "serpent" and stored["architectures"] == ["SerpentForCausalLM"]
    assert stored["causal"] is True and stored["serpent"]["include_full_branch"] is True
    assert stored["serpent"]["restore"] == "hold" and stored["serpent"]["bidirectional"] is False
    assert stored["serpent"]["init"] == "backbone" and stored["serpent"]["share_backbone"] is True
    assert stored["backbone"]["d_state"] == 16 and stored["backbone"]["expand"] == 2
    assert read_config(tmp_path / "config.json") == model.config == cfg.resolved()
    mixer = model.blocks[0].mixer
    assert mixer.config.options() == model.config.serpent  # the module runs what the file says


def test_typed_config_converts_mappings():
    cfg = ModelConfig.from_dict(
        {"name": "serpent-s4d", "serpent": {"rates": [0.5]}, "backbone": {"d_state": 8}}
    )
    assert (
        cfg.serpent.rates == (0.5,)
        and cfg.backbone.d_state == 8
        and type(cfg.backbone).__name__ == "S4DOptions"
    )
    assert ModelConfig(name="mamba", serpent={}).serpent is None
    assert ModelConfig(name="serpent-mamba").serpent == SeRpEntOptions()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.serpent.rates=0.5"], "model.serpent.rates: expected a list of rates in (0, 1], got 0.5"),
        (["model.serpent.rates=[0.5, 2]"], "model.serpent.rates: expected every rate in (0, 1], got 2.0"),
        (["model.serpent.causal=true"], "model.serpent.causal: unknown key, expected one of aggregate, "),
        (["model.serpent.window=x"], "model.serpent.window: expected an integer, got 'x'"),
        (["model.backbone.d_stat=4"], "model.backbone.d_stat: unknown key, expected one of backend, bias, "),
        (["model.backbone.d_state=x"], "model.backbone.d_state: expected an integer, got 'x'"),
        (["model.name=mamba", "model.serpent.rates=[0.5]"], "model.serpent: only for the serpent-* models"),
        (["model.d_model=0"], "model.d_model: expected a positive integer, got 0"),
        (
            ["data.task=english", "model.serpent.restore=interp"],
            "model.serpent.restore: expected 'hold' or 'scatter' in causal mode, got 'interp'",
        ),
        (
            ["data.task=english", "model.causal=false"],
            "model.causal: expected true (or unset) for a language",
        ),
        (
            ["model.n_layers=4", "model.serpent.layers=[1, 4]"],
            "model.serpent.layers: expected layer indices below n_layers=4, got [1, 4]",
        ),
        (
            ["model.serpent.layers=[0, 0]"],
            "model.serpent.layers: expected distinct layer indices >= 0 (or null for every layer), "
            "got [0, 0]",
        ),
        (["model.serpent.layers=[]"], "model.serpent.layers: expected distinct layer indices >= 0"),
        (["model.serpent.layers=1"], "model.serpent.layers: expected a list of layer indices, got 1"),
    ],
)
def test_bad_model_values_name_the_full_key_path(overrides, message):
    from serpent_ssm.train.config import load_run_config

    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_run_config(None, ["model.name=serpent-mamba", *overrides])


def test_bad_model_values_fail_in_the_cli_before_any_data(tmp_path, capsys):
    from serpent_ssm.cli import main

    missing = tmp_path / "no-data"  # listops without data.generate: loading would fail on this
    args = ["train", "--data-dir", str(missing), "--out", str(tmp_path / "run")]
    for key in ("model.serpent.rates=0.5", "model.serpent.causal=true", "model.backbone.nope=1"):
        code = main([*args, "--set", "model.name=serpent-mamba", "--set", key])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert err.startswith(f"serpent: error: model.{key.split('=')[0].removeprefix('model.')}: "), err
    assert not missing.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("head", ["classify", "lm"])
def test_serpent_layers_put_the_plain_backbone_elsewhere(tmp_path, head):
    """``model.serpent.layers``: SeRpEnt in the listed layers, the plain backbone (bidirectional
    when non-causal) in the others; saved and loaded as such, and a causal stack still streams."""
    from serpent_ssm.modules import Bidirectional, Mamba, SeRpEnt

    inputs = {"vocab_size": 20} if head == "lm" else {"d_input": 1}
    cfg = ModelConfig(
        name="serpent-mamba", head=head, d_model=16, n_layers=4, serpent={"layers": [1, 2]}, **inputs
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    plain = Mamba if head == "lm" else Bidirectional
    kinds = [type(block.mixer) for block in (model.blocks if head == "lm" else model.encoder.blocks)]
    assert kinds == [plain, SeRpEnt, SeRpEnt, plain]
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    x = torch.randint(1, 20, (2, 12)) if head == "lm" else torch.rand(2, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    if head == "lm":
        with torch.no_grad():
            out = model.generate(x[:, :3], max_new_tokens=4, temperature=0.0)
        assert out.shape == (2, 7)
