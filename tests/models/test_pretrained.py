"""Pretrained Mamba import: transformers and mamba_ssm checkpoints -> CausalLM, same logits."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from serpent_ssm.models.pretrained import from_mamba_checkpoint, serpent_from_mamba

from tests.helpers import run_steps, wake_branches

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, LAYERS, STATE = 300, 32, 2, 8
TOL = 1e-5  # max abs logit difference allowed against transformers


def _hf_model(seed: int = 0, **overrides) -> nn.Module:
    """A small random ``MambaForCausalLM``, every parameter perturbed so that a swapped or
    skipped tensor (norm weights of ones, D of ones, ...) changes the logits."""
    torch.manual_seed(seed)
    kwargs = {"vocab_size": VOCAB, "hidden_size": WIDTH, "num_hidden_layers": LAYERS, "state_size": STATE}
    cfg = transformers.MambaConfig(**{**kwargs, **overrides})
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "proj" in name else 0.1))
    return model


def _ids(vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def _check_same_logits(ours: nn.Module, ref: nn.Module, vocab: int = VOCAB) -> None:
    ids = _ids(vocab)
    want, got = _logits(ref, ids), _logits(ours, ids)
    assert got.shape == want.shape
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"max abs logit difference {diff:.3g} > {TOL}"


def _save_hf(model: nn.Module, directory, **kwargs):
    model.save_pretrained(directory, **kwargs)
    return directory


def _write_bin(model: nn.Module, directory, state: dict | None = None, config: dict | None = None):
    """A ``pytorch_model.bin`` checkpoint: ``torch.save`` of the state dict and ``config.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state is None else state
    torch.save({k: v.clone() for k, v in state.items()}, directory / "pytorch_model.bin")
    config = model.config.to_dict() if config is None else config
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _mamba_ssm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """transformers names -> mamba_ssm names (only the embedding differs)."""
    return {
        k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in model.state_dict().items()
    }


def _mamba_ssm_config(vocab: int, pad: int, rms_norm: bool = True) -> dict:
    return {
        "d_model": WIDTH,
        "d_intermediate": 0,
        "n_layer": LAYERS,
        "vocab_size": vocab,
        "ssm_cfg": {"d_state": STATE},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": rms_norm,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": pad,
        "tie_embeddings": True,
    }


# ---------------------------------------------------------------------- transformers layout
VARIANTS = {
    "default": {},
    # untied head, a large epsilon (it must be taken from the config), biases, odd sizes
    "variant": {
        "tie_word_embeddings": False,
        "layer_norm_epsilon": 0.05,
        "use_bias": True,
        "use_conv_bias": False,
        "time_step_rank": 3,
        "expand": 3,
        "conv_kernel": 3,
    },
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_safetensors_same_logits(tmp_path, variant):
    ref = _hf_model(**VARIANTS[variant])
    _save_hf(ref, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = from_mamba_checkpoint(tmp_path)
    assert type(ours).__name__ == "CausalLM" and not ours.training
    assert ours.vocab_size == VOCAB
    assert (ours.head.weight is ours.embedding.weight) == (variant == "default")
    _check_same_logits(ours, ref)
    # the weights file itself, config.json beside it
    _check_same_logits(from_mamba_checkpoint(tmp_path / "model.safetensors"), ref)


def test_transformers_pytorch_bin_same_logits(tmp_path):
    # transformers >= 5 always writes safetensors; write pytorch_model.bin as transformers 4 did
    ref = _hf_model(seed=2)
    _write_bin(ref, tmp_path)
    ours = from_mamba_checkpoint(tmp_path / "pytorch_model.bin")
    _check_same_logits(ours, ref)


def test_transformers_layout_with_mamba_ssm_embedding_name(tmp_path, hf_small):
    # transformers' MambaModel accepts backbone.embedding.weight too (its load hook renames it)
    _write_bin(hf_small, tmp_path, _mamba_ssm_state(hf_small))
    ours = from_mamba_checkpoint(tmp_path)
    torch.testing.assert_close(ours.embedding.weight, hf_small.backbone.embeddings.weight, rtol=0, atol=0)


def test_transformers_sharded_same_logits(tmp_path):
    ref = _hf_model(seed=3)
    _save_hf(ref, tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _check_same_logits(from_mamba_checkpoint(tmp_path), ref)


# ---------------------------------------------------------------------- mamba_ssm layout
def test_mamba_ssm_layout_padded_vocab(tmp_path):
    # mamba_ssm pads vocab_size 300 to a multiple of 16: the embedding has 304 rows
    ref = _hf_model(seed=4, vocab_size=304)
    _write_bin(ref, tmp_path, _mamba_ssm_state(ref), _mamba_ssm_config(VOCAB, pad=16))
    ours = from_mamba_checkpoint(tmp_path)
    assert ours.vocab_size == 304
    assert ours.mamba_config.layout == "mamba_ssm" and ours.mamba_config.tokenizer_vocab_size == VOCAB
    _check_same_logits(ours, ref, vocab=304)


def test_mamba_ssm_layer_norm(tmp_path):
    # rms_norm: false -> LayerNorm (weight and bias); reference: the transformers model with
    # LayerNorms in place of its RMSNorms, which is mamba_ssm's architecture for that option
    ref = _hf_model(seed=5)
    with torch.no_grad():
        for owner in [*ref.backbone.layers, ref.backbone]:
            attr = "norm" if owner is not ref.backbone else "norm_f"
            ln = nn.LayerNorm(WIDTH, eps=1e-5)
            ln.weight.copy_(getattr(owner, attr).weight)
            ln.bias.normal_(0.0, 0.1)
            setattr(owner, attr, ln)
    _write_bin(ref, tmp_path, _mamba_ssm_state(ref), _mamba_ssm_config(VOCAB, pad=1, rms_norm=False))
    ours = from_mamba_checkpoint(tmp_path)
    assert isinstance(ours.norm, nn.LayerNorm) and isinstance(ours.blocks[0].norm, nn.LayerNorm)
    _check_same_logits(ours, ref)


# ---------------------------------------------------------------------- errors
def _raises(message: str):
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


@pytest.fixture(scope="module")
def hf_small():
    return _hf_model(seed=6)


def test_shape_mismatch(tmp_path, hf_small):
    state = hf_small.state_dict()
    state["backbone.layers.1.mixer.D"] = torch.ones(63)
    _write_bin(hf_small, tmp_path, state)
    file = tmp_path / "pytorch_model.bin"
    with _raises(f"{file}: tensor 'backbone.layers.1.mixer.D': expected shape (64,), got (63,)"):
        from_mamba_checkpoint(tmp_path)


def test_config_disagrees_with_weights(tmp_path, hf_small):
    _save_hf(hf_small, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "state_size": 4}))
    file = tmp_path / "model.safetensors"
    with _raises(f"{file}: tensor 'backbone.layers.0.mixer.A_log': expected shape (64, 4), got (64, 8)"):
        from_mamba_checkpoint(tmp_path)


def test_missing_tensor(tmp_path, hf_small):
    state = {k: v for k, v in hf_small.state_dict().items() if k != "backbone.layers.0.mixer.conv1d.bias"}
    _write_bin(hf_small, tmp_path, state)
    file = tmp_path / "pytorch_model.bin"
    with _raises(
        f"{file}: tensor 'backbone.layers.0.mixer.conv1d.bias': expected shape (64,), got no such tensor"
    ):
        from_mamba_checkpoint(tmp_path)


def test_missing_untied_head(tmp_path):
    ref = _hf_model(seed=7, tie_word_embeddings=False)
    state = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    _write_bin(ref, tmp_path, state)
    file = tmp_path / "pytorch_model.bin"
    with _raises(f"{file}: tensor 'lm_head.weight': expected shape (300, 32), got no such tensor"):
        from_mamba_checkpoint(tmp_path)


def test_unexpected_tensor(tmp_path, hf_small):
    state = {**hf_small.state_dict(), "backbone.layers.2.norm.weight": torch.ones(WIDTH)}
    _write_bin(hf_small, tmp_path, state)
    file = tmp_path / "pytorch_model.bin"
    with _raises(
        f"{file}: tensor 'backbone.layers.2.norm.weight': expected no such tensor in a transformers "
        "Mamba LM with this config, got shape (32,)"
    ):
        from_mamba_checkpoint(tmp_path)


def test_config_of_neither_layout(tmp_path, hf_small):
    _write_bin(hf_small, tmp_path, config={"hidden_size": 32, "n_layers": 2})
    file = tmp_path / "config.json"
    with _raises(
        f"{file}: expected a Mamba LM config (transformers: model_type 'mamba', hidden_size, "
        "num_hidden_layers, ...; mamba_ssm: d_model, n_layer, vocab_size, ssm_cfg, ...), "
        "got keys ['hidden_size', 'n_layers']"
    ):
        from_mamba_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "mamba2"}, "model_type: expected 'mamba' (a Mamba-1 MambaForCausalLM), got 'mamba2'"),
        (
            {**_mamba_ssm_config(VOCAB, 8), "ssm_cfg": {"layer": "Mamba2"}},
            "ssm_cfg.layer: expected 'Mamba1', got 'Mamba2'",
        ),
        (
            {**_mamba_ssm_config(VOCAB, 8), "attn_layer_idx": [1]},
            "attn_layer_idx: expected no attention layers (a pure Mamba LM), got [1]",
        ),
        (
            {"model_type": "mamba", "hidden_size": 32, "num_hidden_layers": 2},
            "vocab_size: expected a positive integer, got no such entry",
        ),
    ],
)
def test_unsupported_config(tmp_path, hf_small, config, message):
    _write_bin(hf_small, tmp_path, config=config)
    with _raises(f"{tmp_path / 'config.json'}: {message}"):
        from_mamba_checkpoint(tmp_path)


def test_missing_files(tmp_path, hf_small):
    with _raises(
        f"{tmp_path}: expected a checkpoint directory with one of model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json, got none"
    ):
        from_mamba_checkpoint(tmp_path)
    torch.save(hf_small.state_dict(), tmp_path / "pytorch_model.bin")
    with _raises(f"{tmp_path / 'config.json'}: expected the checkpoint's config.json, got no such file"):
        from_mamba_checkpoint(tmp_path)


# ---------------------------------------------------------------------- SeRpEnt warm start
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    ref = _hf_model(seed=8)
    return ref, _save_hf(ref, tmp_path_factory.mktemp("mamba"))


def test_serpent_backbones_start_from_the_pretrained_mixers(hf_dir):
    _, path = hf_dir
    mamba = from_mamba_checkpoint(path)
    separate = {"share_backbone": False, "mix": "dense", "cell_proj": True, "init": "identity"}
    model = serpent_from_mamba(path, {"include_full_branch": True, **separate})
    assert len(model.blocks) == LAYERS and model.vocab_size == VOCAB
    for blk, pre in zip(model.blocks, mamba.blocks, strict=True):
        want = pre.mixer.state_dict()
        backbones = [*blk.mixer.backbones, blk.mixer.full_backbone]
        assert len(backbones) == 4
        for bb in backbones:
            got = bb.state_dict()
            assert set(got) == set(want)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
        torch.testing.assert_close(blk.norm.weight, pre.norm.weight, rtol=0, atol=0)
        assert blk.norm.eps == pre.norm.eps
        # fresh SeRpEnt parts keep the identity init: the merge averages the branches
        eye = torch.eye(WIDTH).repeat(1, 4) / 4
        torch.testing.assert_close(blk.mixer.out_proj.weight, eye, rtol=0, atol=0)
    torch.testing.assert_close(model.embedding.weight, mamba.embedding.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.norm.weight, mamba.norm.weight, rtol=0, atol=0)
    assert model.head.weight is model.embedding.weight


def test_serpent_step_equals_forward(hf_dir):
    _, path = hf_dir
    model = wake_branches(serpent_from_mamba(path))  # the compressed branches show
    ids = _ids()[:, :12]
    full = _logits(model, ids)
    assert full.shape == (2, 12, VOCAB) and torch.isfinite(full).all()
    torch.testing.assert_close(run_steps(model, ids), full, rtol=1e-5, atol=1e-5)


def test_serpent_full_rate_fixed_is_the_mamba_lm(hf_dir):
    # one branch of rate 1 with fixed intervals: every cell holds one element, identity init
    # passes it through, so the warm-started model computes exactly the pretrained Mamba LM
    ref, path = hf_dir
    model = serpent_from_mamba(path, {"rates": (1.0,), "interval_bounds": "fixed", "init": "identity"})
    _check_same_logits(model, ref)


def test_serpent_at_its_defaults_starts_as_the_mamba_lm(hf_dir):
    """The causal default (one shared backbone, the full branch, ``init="backbone"``): the
    compressed branches start at zero weight, so the warm-started model is the pretrained LM."""
    ref, path = hf_dir
    model = serpent_from_mamba(path)
    assert all(blk.mixer.full_backbone is blk.mixer.backbones[0] for blk in model.blocks)
    _check_same_logits(model, ref)


def test_serpent_rejects_options_the_checkpoint_sets(hf_dir):
    _, path = hf_dir
    with _raises(
        "serpent: expected SeRpEnt options other than those the checkpoint sets "
        "(d_model, backbone, backbone_kwargs, causal, config), got 'backbone_kwargs'"
    ):
        serpent_from_mamba(path, {"backbone_kwargs": {"d_state": 4}})
