"""Import pretrained Mamba language models (Mamba-1: transformers' ``MambaForCausalLM`` and
mamba_ssm's ``MambaLMHeadModel``) into ``CausalLM``.

``from_mamba_checkpoint(path)`` returns a ``mamba`` ``CausalLM`` with the checkpoint's weights:
its logits equal those of the original model (tested against transformers to 1e-5).
``serpent_from_mamba(path)`` returns a ``serpent-mamba`` ``CausalLM`` of the same width and
depth whose SeRpEnt branch backbones all start from the pretrained mixer of their layer.

Checkpoint layouts (``path`` is the directory, or the weights file with ``config.json`` beside it):

* transformers: ``config.json`` with ``model_type: "mamba"``; weights ``model.safetensors``,
  ``pytorch_model.bin``, or either sharded (``model.safetensors.index.json`` /
  ``pytorch_model.bin.index.json``). Norms: RMSNorm with ``layer_norm_epsilon``.
* mamba_ssm: ``config.json`` with ``d_model``, ``n_layer``, ``vocab_size``, ``ssm_cfg``,
  ``rms_norm``, ``pad_vocab_size_multiple``, ``tie_embeddings``; weights ``pytorch_model.bin``
  (or ``model.safetensors``). Norms: RMSNorm, or LayerNorm when ``rms_norm`` is false, with
  mamba_ssm's fixed epsilon 1e-5. mamba_ssm pads the vocabulary to a multiple of
  ``pad_vocab_size_multiple``: the model keeps the padded size (the embedding's rows) as its
  ``vocab_size``, so ids past the tokenizer's vocabulary get the checkpoint's (untrained)
  logits, exactly as in mamba_ssm; ``MambaCheckpointConfig.tokenizer_vocab_size`` is the
  unpadded size.

Tensor names (``{i}`` the layer, ``{p}`` a mixer parameter: ``in_proj.weight``,
``in_proj.bias`` (``use_bias`` / ``bias``), ``conv1d.weight``, ``conv1d.bias`` (``use_conv_bias``
/ ``conv_bias``), ``x_proj.weight``, ``dt_proj.weight``, ``dt_proj.bias``, ``A_log``, ``D``,
``out_proj.weight``, ``out_proj.bias``)::

    transformers                        mamba_ssm                          ours (CausalLM)
    backbone.embeddings.weight          backbone.embedding.weight          embedding.weight
    backbone.layers.{i}.norm.weight     backbone.layers.{i}.norm.weight    blocks.{i}.norm.weight
    -                                   backbone.layers.{i}.norm.bias      blocks.{i}.norm.bias
    backbone.layers.{i}.mixer.{p}       backbone.layers.{i}.mixer.{p}      blocks.{i}.mixer.{p}
    backbone.norm_f.weight              backbone.norm_f.weight             norm.weight
    -                                   backbone.norm_f.bias               norm.bias
    lm_head.weight                      lm_head.weight                     head.weight

transformers also accepts ``backbone.embedding.weight`` (as its ``MambaModel`` does).
Every tensor of the model must be found with the expected shape, and every tensor of the file
must be used, else ``ValueError`` names the file, the tensor and both shapes. With tied
embeddings (the default of both libraries) ``lm_head.weight`` may be absent; when present its
shape is checked and its values are not used (both libraries tie it to the embedding on load).
Files are read safely: safetensors, or ``torch.load(weights_only=True)``. Tensors are copied
into a float32 model (half-precision checkpoints are upcast exactly). Not kept:
``residual_in_fp32`` (our residual stream has the model's dtype; identical in float32) and the
initialisation-only options (``time_step_min``/``max``/``scale``/``floor``, ``dt_init``...).
Not supported (``ValueError``): Mamba-2 (``model_type: "mamba2"``, ``ssm_cfg.layer: "Mamba2"``),
hybrid attention layers (``attn_layer_idx``), MLP blocks (``d_intermediate > 0``), activations
other than SiLU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serpent_ssm.models.build import build_model
from serpent_ssm.models.config import ModelConfig
from serpent_ssm.models.lm import CausalLM
from serpent_ssm.modules.mamba import Mamba

__all__ = ["MambaCheckpointConfig", "from_mamba_checkpoint", "read_mamba_checkpoint", "serpent_from_mamba"]

CONFIG_NAME = "config.json"
# weights files looked for in a directory, in this order
WEIGHTS_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
MIXER_PARAMS = (
    "in_proj.weight",
    "in_proj.bias",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "A_log",
    "D",
    "out_proj.weight",
    "out_proj.bias",
)
# accepted in place of a missing name (transformers' MambaModel.load_hook renames it on load)
_ALIASES = {"backbone.embeddings.weight": "backbone.embedding.weight"}
# mamba_ssm's ssm_cfg keys: used (mapped to our Mamba), or initialisation/speed only (ignored)
_SSM_CFG_USED = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "dt_rank": "dt_rank"}
_SSM_CFG_IGNORED = ("dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path", "layer_idx")


@dataclass(frozen=True)
class MambaCheckpointConfig:
    """What ``config.json`` says, in our terms.

    Attributes:
        layout: ``"transformers"`` or ``"mamba_ssm"``.
        d_model, n_layers: width and depth.
        vocab_size: rows of the embedding (mamba_ssm: padded to ``pad_vocab_size_multiple``).
        tokenizer_vocab_size: the config's ``vocab_size`` (unpadded).
        d_state, d_conv, expand, dt_rank, bias, conv_bias: the Mamba mixer.
        norm: ``"rms"`` or ``"layer"``; norm_eps: its epsilon.
        tie_embeddings: the head shares the embedding matrix.
    """

    layout: str
    d_model: int
    n_layers: int
    vocab_size: int
    tokenizer_vocab_size: int
    d_state: int
    d_conv: int
    expand: int
    dt_rank: int
    bias: bool
    conv_bias: bool
    norm: str
    norm_eps: float
    tie_embeddings: bool

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of our ``Mamba`` mixer (besides ``d_model``)."""
        return {
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "dt_rank": self.dt_rank,
            "bias": self.bias,
            "conv_bias": self.conv_bias,
        }

    def their_name(self, ours: str) -> str:
        """Checkpoint name of our ``CausalLM`` state-dict entry ``ours`` (see the module's table)."""
        if ours == "embedding.weight":
            hf = self.layout == "transformers"
            return "backbone.embeddings.weight" if hf else "backbone.embedding.weight"
        if ours == "head.weight":
            return "lm_head.weight"
        if ours.startswith("norm."):
            return "backbone.norm_f." + ours.removeprefix("norm.")
        if ours.startswith("blocks."):
            _, i, rest = ours.split(".", 2)
            return f"backbone.layers.{i}.{rest}"
        raise ValueError(f"{ours}: expected a tensor of a mamba CausalLM, got an unknown name")


# ---------------------------------------------------------------------- config.json
def _get(cfg: dict, path: Path, key: str, kind: str, default: Any = None, required: bool = False) -> Any:
    """``cfg[key]`` checked to be ``kind`` (``"int"``: positive int, ``"bool"``, ``"float"``: > 0)."""
    if key not in cfg or (cfg[key] is None and not required):
        if required:
            raise ValueError(f"{path}: {key}: expected a positive integer, got no such entry")
        return default
    value = cfg[key]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key}: expected a positive integer, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{path}: {key}: expected true or false, got {value!r}")
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value <= 0:
            raise ValueError(f"{path}: {key}: expected a positive number, got {value!r}")
        value = float(value)
    return value


def _expand(path: Path, d_model: int, expand: Any, inner: Any = None) -> int:
    """Integer ``expand`` such that ``d_inner = expand * d_model`` (our Mamba's parametrisation);
    ``inner``: transformers' ``intermediate_size``, which wins when given."""
    if inner is not None:
        if isinstance(inner, bool) or not isinstance(inner, int) or inner < 1 or inner % d_model:
            raise ValueError(
                f"{path}: intermediate_size: expected a positive multiple of the width {d_model} "
                f"(our Mamba has d_inner = expand * d_model), got {inner!r}"
            )
        return inner // d_model
    ok = isinstance(expand, (int, float)) and not isinstance(expand, bool) and expand >= 1
    if not ok or float(expand) != int(expand):
        raise ValueError(f"{path}: expand: expected a positive integer, got {expand!r}")
    return int(expand)


def _dt_rank(path: Path, key: str, value: Any, d_model: int) -> int:
    if value is None or value == "auto":
        return math.ceil(d_model / 16)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: {key}: expected a positive integer or 'auto', got {value!r}")
    return value


def _transformers_config(cfg: dict, path: Path) -> MambaCheckpointConfig:
    if cfg["model_type"] != "mamba":
        raise ValueError(
            f"{path}: model_type: expected 'mamba' (a Mamba-1 MambaForCausalLM), got {cfg['model_type']!r}"
        )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{path}: hidden_act: expected 'silu' (our Mamba's activation), got {act!r}")
    d = _get(cfg, path, "hidden_size", "int", required=True)
    vocab = _get(cfg, path, "vocab_size", "int", required=True)
    return MambaCheckpointConfig(
        layout="transformers",
        d_model=d,
        n_layers=_get(cfg, path, "num_hidden_layers", "int", required=True),
        vocab_size=vocab,
        tokenizer_vocab_size=vocab,
        d_state=_get(cfg, path, "state_size", "int", 16),
        d_conv=_get(cfg, path, "conv_kernel", "int", 4),
        expand=_expand(path, d, cfg.get("expand", 2), cfg.get("intermediate_size")),
        dt_rank=_dt_rank(path, "time_step_rank", cfg.get("time_step_rank"), d),
        bias=_get(cfg, path, "use_bias", "bool", False),
        conv_bias=_get(cfg, path, "use_conv_bias", "bool", True),
        norm="rms",
        norm_eps=_get(cfg, path, "layer_norm_epsilon", "float", 1e-5),
        tie_embeddings=_get(cfg, path, "tie_word_embeddings", "bool", True),
    )


def _mamba_ssm_config(cfg: dict, path: Path) -> MambaCheckpointConfig:
    d = _get(cfg, path, "d_model", "int", required=True)
    vocab = _get(cfg, path, "vocab_size", "int", required=True)
    if cfg.get("d_intermediate", 0):
        raise ValueError(
            f"{path}: d_intermediate: expected 0 (Mamba blocks without an MLP), got {cfg['d_intermediate']!r}"
        )
    if cfg.get("attn_layer_idx"):
        raise ValueError(
            f"{path}: attn_layer_idx: expected no attention layers (a pure Mamba LM), "
            f"got {cfg['attn_layer_idx']!r}"
        )
    ssm = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        raise ValueError(f"{path}: ssm_cfg: expected a dict of Mamba options, got {ssm!r}")
    layer = ssm.get("layer", "Mamba1")
    if layer != "Mamba1":
        raise ValueError(f"{path}: ssm_cfg.layer: expected 'Mamba1', got {layer!r}")
    known = {*_SSM_CFG_USED, *_SSM_CFG_IGNORED, "layer", "bias", "conv_bias"}
    unknown = sorted(set(ssm) - known)
    if unknown:
        raise ValueError(
            f"{path}: ssm_cfg: expected only Mamba1 options ({', '.join(sorted(known))}), got {unknown[0]!r}"
        )
    pad = _get(cfg, path, "pad_vocab_size_multiple", "int", 1)
    return MambaCheckpointConfig(
        layout="mamba_ssm",
        d_model=d,
        n_layers=_get(cfg, path, "n_layer", "int", required=True),
        vocab_size=-(-vocab // pad) * pad,
        tokenizer_vocab_size=vocab,
        d_state=_get(ssm, path, "d_state", "int", 16),
        d_conv=_get(ssm, path, "d_conv", "int", 4),
        expand=_expand(path, d, ssm.get("expand", 2)),
        dt_rank=_dt_rank(path, "ssm_cfg.dt_rank", ssm.get("dt_rank"), d),
        bias=_get(ssm, path, "bias", "bool", False),
        conv_bias=_get(ssm, path, "conv_bias", "bool", True),
        norm="rms" if _get(cfg, path, "rms_norm", "bool", True) else "layer",
        norm_eps=1e-5,  # mamba_ssm's MixerModel default; not stored in its config.json
        tie_embeddings=_get(cfg, path, "tie_embeddings", "bool", True),
    )


def read_mamba_config(path: str | Path) -> MambaCheckpointConfig:
    """Parse a transformers or mamba_ssm Mamba ``config.json``; ``ValueError`` names the file."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: expected a readable JSON config, got {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    if "model_type" in cfg:
        return _transformers_config(cfg, path)
    if "d_model" in cfg and "n_layer" in cfg:
        return _mamba_ssm_config(cfg, path)
    raise ValueError(
        f"{path}: expected a Mamba LM config (transformers: model_type 'mamba', hidden_size, "
        f"num_hidden_layers, ...; mamba_ssm: d_model, n_layer, vocab_size, ssm_cfg, ...), "
        f"got keys {sorted(cfg)}"
    )


# ---------------------------------------------------------------------- weights
def _locate(path_or_dir: str | Path) -> tuple[Path, Path]:
    """``(config.json, weights file)`` for a checkpoint directory or a weights file."""
    p = Path(path_or_dir)
    if p.is_dir():
        for name in WEIGHTS_NAMES:
            if (p / name).is_file():
                return p / CONFIG_NAME, p / name
        raise ValueError(
            f"{p}: expected a checkpoint directory with one of {', '.join(WEIGHTS_NAMES)}, got none"
        )
    if not p.is_file():
        raise ValueError(f"{p}: expected a checkpoint directory or weights file, got no such path")
    return p.parent / CONFIG_NAME, p


def _load_file(path: Path, map_location) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors or ``torch.save`` file (no code runs on load)."""
    try:
        if path.name.endswith(".safetensors"):
            import safetensors.torch

            return safetensors.torch.load_file(str(path), device=str(map_location))
        state = torch.load(path, map_location=map_location, weights_only=True)
    except ImportError:
        raise ModuleNotFoundError(
            "reading .safetensors files needs safetensors: pip install 'serpent-ssm[train]'"
        ) from None
    except Exception as exc:  # truncated, corrupt, or not a tensors-only pickle
        raise ValueError(
            f"{path}: expected a readable weights file, got {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), got {type(state).__name__}")
    return state


def _load_weights(path: Path, map_location) -> dict[str, tuple[torch.Tensor, Path]]:
    """Checkpoint tensors by name, each with the file it came from (shards through the index)."""
    if not path.name.endswith(".index.json"):
        return {k: (v, path) for k, v in _load_file(path, map_location).items()}
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: expected a shard index with a 'weight_map', got {type(exc).__name__}: {exc}"
        ) from None
    out: dict[str, tuple[torch.Tensor, Path]] = {}
    for shard in shards:
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise ValueError(f"{path}: expected shard {shard!r} beside the index, got no such file")
        out.update((k, (v, shard_path)) for k, v in _load_file(shard_path, map_location).items())
    return out


def _build(cfg: MambaCheckpointConfig, name: str, serpent: dict[str, Any] | None) -> CausalLM:
    """Our LM for the checkpoint's architecture, with a ``ModelConfig`` (so ``save_pretrained``
    works on it)."""
    config = ModelConfig(
        name=name,
        head="lm",
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        vocab_size=cfg.vocab_size,
        norm=cfg.norm,
        norm_eps=cfg.norm_eps,
        tie_embeddings=cfg.tie_embeddings,
        causal=True,
        backbone=cfg.backbone_kwargs(),
        serpent=dict(serpent or {}) if name.startswith("serpent-") else None,
    )
    return build_model(config)


def read_mamba_checkpoint(
    path_or_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[MambaCheckpointConfig, dict[str, torch.Tensor]]:
    """Read and check a Mamba LM checkpoint.

    Returns its config and its tensors under the state-dict names of our ``mamba`` ``CausalLM``
    (``embedding.weight``, ``blocks.{i}.norm.*``, ``blocks.{i}.mixer.*``, ``norm.*``, and
    ``head.weight`` when the embeddings are not tied), each checked against the shape the config
    implies. ``ValueError`` names the file and the tensor on any mismatch.
    """
    cfg_path, weights_path = _locate(path_or_dir)
    if not cfg_path.is_file():
        raise ValueError(f"{cfg_path}: expected the checkpoint's config.json, got no such file")
    cfg = read_mamba_config(cfg_path)
    theirs = _load_weights(weights_path, map_location)
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        reference = _build(cfg, "mamba", None)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    used = set()
    for ours, shape in expected.items():
        name = cfg.their_name(ours)
        if name not in theirs and name in _ALIASES and _ALIASES[name] in theirs:
            name = _ALIASES[name]
        optional = ours == "head.weight" and cfg.tie_embeddings
        if name not in theirs:
            if optional:
                continue
            raise ValueError(f"{weights_path}: tensor {name!r}: expected shape {shape}, got no such tensor")
        tensor, src = theirs[name]
        used.add(name)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{src}: tensor {name!r}: expected shape {shape}, got {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{src}: tensor {name!r}: expected a floating-point tensor, got {tensor.dtype}")
        if not optional:  # a tied head is the embedding (both libraries tie it on load)
            state[ours] = tensor
    extra = sorted(set(theirs) - used)
    if extra:
        tensor, src = theirs[extra[0]]
        raise ValueError(
            f"{src}: tensor {extra[0]!r}: expected no such tensor in a {cfg.layout} Mamba LM "
            f"with this config, got shape {tuple(tensor.shape)}"
        )
    return cfg, state


def _copy(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``module``'s parameters of the same names (all of them must be given)."""
    params = dict(module.named_parameters())
    assert set(params) == set(state), (sorted(params), sorted(state))
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def from_mamba_checkpoint(path_or_dir: str | Path, map_location: str | torch.device = "cpu") -> CausalLM:
    """A ``mamba`` ``CausalLM`` with the weights of a transformers or mamba_ssm Mamba LM.

    Args:
        path_or_dir: the checkpoint directory, or its weights file (``config.json`` beside it).
        map_location: device the tensors are read to and the model is returned on.
    Returns:
        A float32 model in eval mode whose logits equal the original model's (for a mamba_ssm
        checkpoint, over the padded vocabulary: ``model.vocab_size`` is the padded size).
    Raises:
        ValueError naming the file: unknown config format, unsupported option, or a tensor that
        is missing, unexpected, or of the wrong shape.
    """
    cfg, state = read_mamba_checkpoint(path_or_dir, map_location)
    model = _build(cfg, "mamba", None).to(map_location)
    own = {k: v for k, v in model.state_dict().items() if k in state}
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
    model.mamba_config = cfg
    return model.eval()


def serpent_from_mamba(
    path_or_dir: str | Path,
    serpent: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> CausalLM:
    """A ``serpent-mamba`` ``CausalLM`` warm-started from a pretrained Mamba LM.

    Same width, depth, vocabulary, norms and mixer sizes as the checkpoint; ``serpent`` holds
    SeRpEnt options (``rates``, ``aggregate``, ``init``, ...; causal mode is implied).

    Copied from the checkpoint: the embedding, every block's norm, the final norm, the head
    (when untied), and layer ``i``'s Mamba mixer into every backbone of block ``i``'s SeRpEnt
    mixer (each rate branch, and the full branch when ``include_full_branch``).
    Fresh (SeRpEnt's own initialisation, ``init`` option): the interval scores
    (``mixer.scores``), the aggregators (``mixer.aggregators``) and the branch merge
    (``mixer.out_proj``).

    At the defaults (one backbone shared by every branch, the full branch, ``init="backbone"``)
    the warm-started model computes exactly the Mamba LM: the merge passes the full branch and
    the compressed branches, which run the pretrained mixer on sequences compressed by their
    rates, start at zero weight; training gives them weight where they help. With
    ``init="identity"`` the merge averages the branches instead, and the model is the Mamba LM
    only when every branch sees the whole sequence
    (``{"rates": (1.0,), "interval_bounds": "fixed", "init": "identity"}``).
    """
    serpent = dict(serpent or {})
    reserved = sorted({"d_model", "backbone", "backbone_kwargs", "causal", "config"} & set(serpent))
    if reserved:
        raise ValueError(
            f"serpent: expected SeRpEnt options other than those the checkpoint sets "
            f"(d_model, backbone, backbone_kwargs, causal, config), got {reserved[0]!r}"
        )
    cfg, state = read_mamba_checkpoint(path_or_dir, map_location)
    model = _build(cfg, "serpent-mamba", serpent).to(map_location)
    outer = {k: v for k, v in state.items() if ".mixer." not in k}
    own = model.state_dict()
    with torch.no_grad():
        for k, v in outer.items():
            own[k].copy_(v)
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}.mixer."
        mixer_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        backbones = list(block.mixer.backbones)
        if block.mixer.full_backbone is not None:
            backbones.append(block.mixer.full_backbone)
        for bb in backbones:
            if not isinstance(bb, Mamba):
                raise ValueError(
                    f"serpent: expected causal Mamba backbones to copy into, got {type(bb).__name__}"
                )
            _copy(bb, mixer_state)
    model.mamba_config = cfg
    return model.eval()
