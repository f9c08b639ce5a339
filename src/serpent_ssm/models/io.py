"""The one file format of a saved model: ``config.json`` + ``model.safetensors``, shaped for transformers.

``save_pretrained(model, dir)`` writes, atomically (``utils.io``) and without importing
transformers:

- ``config.json``: the model's resolved ``ModelConfig`` with its ``format_version``, under the
  names of the transformers config ``serpent_ssm.hf.SerpentHFConfig`` (``model_type: "serpent"``,
  ``model_name`` for ``name``, ``tie_word_embeddings`` for ``tie_embeddings``, ``id2label`` for
  ``n_classes``), plus what transformers reads: ``architectures``, ``auto_map``, the special
  token ids, ``use_cache``, ``max_position_embeddings`` and ``dtype`` (``config_record``);
- ``model.safetensors``: the tensors as transformers' classes hold them, ``model.`` + our names
  (``KEY_PREFIX``), a tied tensor once;
- ``serpent_auto.py``: the module ``auto_map`` names (imports of ``serpent_ssm.hf``, no code of
  its own), so that ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads
  the folder in a process that did not import ``serpent_ssm.hf``.

So a run's ``best/`` loads with ``from_pretrained`` below and with transformers' Auto classes,
and transformers' own ``save_pretrained`` of our classes writes the same layout.
``from_pretrained(dir)`` reads this format and every earlier one: the library's own layout of
0.1.0-0.4.0 (``ModelConfig``'s names, tensors without the prefix) and the folders
``serpent export-hf`` wrote (this layout); older configs go through ``models.config.migrate``.
safetensors: no code runs on load; works offline. ``safetensors`` is imported lazily (extra
``[train]``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serpent_ssm.models.build import build_model
from serpent_ssm.models.config import FORMAT_VERSION, ModelConfig, migrate
from serpent_ssm.utils.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "AUTO_MAP",
    "CONFIG_NAME",
    "KEY_PREFIX",
    "MODEL_TYPE",
    "WEIGHTS_NAME",
    "config_record",
    "from_pretrained",
    "load_state_checked",
    "model_record",
    "read_config",
    "save_pretrained",
]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MODEL_TYPE = "serpent"
KEY_PREFIX = "model."  # transformers' classes hold our model as ``model`` (its base_model_prefix)
# config.json's names of ModelConfig fields that transformers knows under another name
# (n_classes: transformers' ``id2label``, whose length is ``num_labels``)
FILE_NAMES = {"name": "model_name", "tie_embeddings": "tie_word_embeddings"}
# SerpentHFConfig's defaults where they differ from ModelConfig's (a config.json left them out)
FILE_DEFAULTS = {"model_name": "serpent-mamba", "head": "lm", "vocab_size": 259}
# what transformers reads beside the architecture (SerpentHFConfig's defaults)
TRANSFORMERS_FIELDS = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "use_cache": True,
    "max_position_embeddings": None,
}
ARCHITECTURES = {"lm": "SerpentForCausalLM", "classify": "SerpentForSequenceClassification"}
AUTO_MODULE = "serpent_auto"
AUTO_FILE = f"{AUTO_MODULE}.py"
AUTO_MAP = {
    "AutoConfig": f"{AUTO_MODULE}.SerpentHFConfig",
    "AutoModel": f"{AUTO_MODULE}.SerpentModel",
    "AutoModelForCausalLM": f"{AUTO_MODULE}.SerpentForCausalLM",
    "AutoModelForSequenceClassification": f"{AUTO_MODULE}.SerpentForSequenceClassification",
}
AUTO_SOURCE = """\
# Written by serpent-ssm's save_pretrained: transformers loads this folder through these classes
# with trust_remote_code=True where serpent_ssm.hf was not imported (it needs serpent-ssm[hf]
# installed). With `import serpent_ssm.hf` no code from here runs.
from serpent_ssm.hf import (  # noqa: F401
    SerpentForCausalLM,
    SerpentForSequenceClassification,
    SerpentHFConfig,
    SerpentModel,
)
"""
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ModuleNotFoundError(
            "saving and loading models needs safetensors: pip install 'serpent-ssm[train]'"
        ) from None
    return safetensors.torch


# ---------------------------------------------------------------------- config.json
def config_record(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` record of ``config`` (resolved first): ``format_version``,
    ``model_type``, ``architectures`` (not for a retrieval model, which transformers has no class
    for), ``auto_map``, the architecture under transformers' names, the special token ids,
    ``use_cache``, ``max_position_embeddings`` and ``dtype`` (the weights' dtype)."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config: expected a ModelConfig, got {type(config).__name__}")
    fields = config.resolved().to_dict()
    record: dict[str, Any] = {"format_version": fields.pop("format_version"), "model_type": MODEL_TYPE}
    if config.head in ARCHITECTURES:
        record["architectures"] = [ARCHITECTURES[config.head]]
    record["auto_map"] = dict(AUTO_MAP)
    n_classes = fields.pop("n_classes")
    record.update((FILE_NAMES.get(k, k), v) for k, v in fields.items())
    if config.head != "lm":  # as transformers writes num_labels
        record["id2label"] = {str(i): f"LABEL_{i}" for i in range(n_classes)}
        record["label2id"] = {f"LABEL_{i}": i for i in range(n_classes)}
    record.update(TRANSFORMERS_FIELDS)
    record["dtype"] = str(dtype).removeprefix("torch.")
    return record


def _n_classes(record: dict[str, Any]) -> Any:
    """``n_classes`` of a transformers-shaped record: the length of ``id2label``, else
    ``num_labels``, else transformers' default of 2 (it leaves ``id2label`` out for 2 labels)."""
    labels = record.get("id2label")
    if isinstance(labels, dict):
        return len(labels)
    if labels is not None:
        raise ValueError(f"id2label: expected a mapping of class ids to names, got {labels!r}")
    return record.get("num_labels", 2)


def model_record(record: Any) -> dict[str, Any]:
    """A ``config.json`` record of any layout and released format as a ``ModelConfig`` record
    of today's format (``ModelConfig.from_dict`` checks it): this layout (``model_type``
    ``"serpent"``; keys transformers adds are ignored, as transformers ignores them) or the
    library's layout of 0.1.0-0.4.0 (``ModelConfig``'s names, migrated)."""
    if not isinstance(record, dict):
        raise ValueError(f"config: expected a JSON object, got {type(record).__name__}")
    if "model_type" not in record:
        return migrate(record)
    if record["model_type"] != MODEL_TYPE:
        mamba = record["model_type"] == "mamba"
        hint = " (a transformers Mamba checkpoint: models.from_mamba_checkpoint)" if mamba else ""
        raise ValueError(
            f"model_type: expected {MODEL_TYPE!r} (a serpent-ssm model), got {record['model_type']!r}{hint}"
        )
    out: dict[str, Any] = {"format_version": record.get("format_version", FORMAT_VERSION)}
    for field in _MODEL_FIELDS:
        key = FILE_NAMES.get(field, field)
        if field == "n_classes":
            continue
        if key in record:
            out[field] = record[key]
        elif key in FILE_DEFAULTS:
            out[field] = FILE_DEFAULTS[key]
    if out.get("head", "lm") != "lm":  # a language model has no classes: ModelConfig's default stands
        out["n_classes"] = _n_classes(record)
    return migrate(out)


def read_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` in a saved model's ``config.json`` (any layout, any released format)."""
    path = Path(path)
    try:
        return ModelConfig.from_dict(model_record(json.loads(path.read_text(encoding="utf-8"))))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a model config: {exc}") from None


# ---------------------------------------------------------------------- the files
def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model.safetensors``, ``serpent_auto.py`` and ``config.json`` (each atomically,
    the config last) into ``directory``."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError("model: expected a model built by build_model (with a ModelConfig), got one without")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    st = _safetensors()
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:  # a tied weight (the LM head): stored once, re-tied on load
            continue
        seen.add(v.data_ptr())
        state[KEY_PREFIX + k] = v.detach().contiguous()
    data = st.save(state, metadata={"format": "pt"})
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    atomic_write_bytes(directory / WEIGHTS_NAME, lambda f: f.write(data))
    atomic_write_text(directory / AUTO_FILE, AUTO_SOURCE)
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config_record(config, dtype), indent=1) + "\n")
    return directory


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in ``directory`` (by ``save_pretrained``, transformers'
    ``save_pretrained`` of our classes, ``serpent export-hf``, or an earlier release).

    Raises ValueError naming the file when the config is unreadable or the weights do not match
    it (missing, unexpected or mis-shaped tensors).
    """
    directory = Path(directory)
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (cfg_path, weights):
        if not path.is_file():
            raise ValueError(
                f"{path}: missing: expected {CONFIG_NAME} and {WEIGHTS_NAME} from save_pretrained"
            )
    model = build_model(read_config(cfg_path))
    try:
        state = _safetensors().load_file(str(weights), device=str(map_location))
    except Exception as exc:  # a truncated or corrupt file
        raise ValueError(f"{weights}: unreadable safetensors file: {exc}") from None
    prefix = KEY_PREFIX if state and all(k.startswith(KEY_PREFIX) for k in state) else ""
    state = {k.removeprefix(prefix): v for k, v in state.items()}  # 0.1.0-0.4.0: no prefix
    load_state_checked(model, state, weights, prefix)
    return model


def load_state_checked(
    model: nn.Module, state: dict[str, torch.Tensor], source: str | Path, prefix: str = ""
) -> None:
    """``model.load_state_dict(state)`` with one error naming ``source`` and the first mismatch
    (as the file names it: ``prefix`` + the model's name)."""
    own = model.state_dict()
    state = dict(state)
    by_ptr = {own[k].data_ptr(): k for k in own if k in state}
    for k in set(own) - set(state):  # tied weights are saved once
        if own[k].data_ptr() in by_ptr:
            state[k] = state[by_ptr[own[k].data_ptr()]]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        first = f"missing tensor {prefix + missing[0]!r}" if missing else None
        what = first or f"unexpected tensor {prefix + unexpected[0]!r}"
        raise ValueError(
            f"{source}: weights do not match the model "
            f"({what}; {len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for k in own:  # the model's own order: the first mismatching tensor is named
        v = state[k]
        if v.shape != own[k].shape:
            raise ValueError(
                f"{source}: tensor {prefix + k!r}: expected shape {tuple(own[k].shape)}, got {tuple(v.shape)}"
            )
    model.load_state_dict(state)
