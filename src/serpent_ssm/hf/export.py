"""Our models in the transformers layout: ``to_transformers(model)`` wraps a model built by
``build_model`` (same tensors); ``export_run(run_dir, out)`` writes a training run's saved model
as a folder that ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` and
``AutoTokenizer`` load.

A run's ``best/`` is already in that layout (``models.io``: the one file format), so the export
is the model saved again by the library's ``save_pretrained`` (which also brings a ``best/`` of
an earlier release, read through the migrations, to today's format) plus the tokenizer of the
run's ``vocab.json`` when it has one (token and byte tasks). It is written into a temporary
folder beside ``out`` and renamed at the end: a failure leaves ``out`` as it was, and a
re-export replaces an earlier export whole (no stale tokenizer files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from torch import nn

from serpent_ssm.hf.configuration import SerpentHFConfig
from serpent_ssm.hf.modeling import (
    SerpentForCausalLM,
    SerpentForSequenceClassification,
    SerpentPreTrainedModel,
)
from serpent_ssm.hf.tokenization import tokenizer_for
from serpent_ssm.models.config import ModelConfig
from serpent_ssm.models.io import CONFIG_NAME, MODEL_TYPE

__all__ = ["export_run", "to_transformers"]

WHICH = ("best", "final")


def to_transformers(model: nn.Module) -> SerpentPreTrainedModel:
    """The transformers model (``SerpentForCausalLM`` or ``SerpentForSequenceClassification``)
    holding a copy of ``model``'s weights; ``model`` must come from ``build_model`` or
    ``from_pretrained`` (it carries its ``ModelConfig``)."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError("model: expected a model built by build_model (with a ModelConfig), got one without")
    if config.head == "retrieval":
        raise ValueError(
            "model: expected a language model or a classifier, got a retrieval (two-tower) model"
        )
    cls = SerpentForCausalLM if config.head == "lm" else SerpentForSequenceClassification
    wrapped = cls(SerpentHFConfig.from_model_config(config))
    wrapped.model.load_state_dict(model.state_dict())
    return wrapped.eval()


def _is_export(folder: Path) -> bool:
    """``folder`` holds a saved serpent-ssm model and no subfolder (an earlier export)."""
    try:
        record = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    is_model = isinstance(record, dict) and record.get("model_type") == MODEL_TYPE
    return is_model and not any(p.is_dir() for p in folder.iterdir())


def _check_out(run_dir: Path, out: Path) -> Path:
    """``out`` resolved (symlinks followed), refused where writing it would destroy something:
    the run directory itself, a folder inside it or around it, a file, or a folder of other
    files. Nothing is written."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run or run in target.parents:
        raise ValueError(
            f"out: expected a folder outside the run directory {run} (the export would overwrite the "
            f"run's own files), got {out}" + (f" (-> {target})" if target != out.absolute() else "")
        )
    if target in run.parents:
        raise ValueError(f"out: expected a folder that does not hold the run directory {run}, got {out}")
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"out: expected a folder (new, empty, or an earlier export), got the file {out}")
        if any(target.iterdir()) and not _is_export(target):
            raise ValueError(
                f"out: expected a new or empty folder, or an earlier export (config.json with model_type "
                f"{MODEL_TYPE!r}, no subfolders) to replace, got {out}, a folder with other files"
            )
    else:
        above = next(p for p in target.parents if p.exists())
        if not above.is_dir():
            raise ValueError(f"out: expected a folder path, got {out}, under the file {above}")
    return target


def _read_vocab(path: Path):
    """The run's ``vocab.json`` and its tokenizer, or None without one; ValueError names the file."""
    from serpent_ssm.data.vocab import Vocab

    if not path.is_file():
        return None
    try:
        return tokenizer_for(Vocab.load(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        detail = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(
            f"{path}: expected the run's vocabulary (a JSON object with name, kind and tokens), got {detail}"
        ) from None


def _replace(tmp: Path, target: Path) -> None:
    """Rename the finished folder ``tmp`` to ``target``, replacing an earlier export there."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_run(run_dir: str | Path, out: str | Path, which: str = "best") -> Path:
    """Write ``run_dir/which`` (``best`` or ``final``) in the transformers layout into ``out``,
    with the tokenizer of the run's ``vocab.json`` when it has one (token and byte tasks).

    ``out`` may be new, an empty folder, or an earlier export (replaced whole); every other
    ``out`` is refused with a ValueError naming it before anything is written: the run
    directory, a folder inside it (``run_dir/best`` would overwrite the run's model) or holding
    it, a file, or a folder of other files (symlinks are followed).
    """
    from serpent_ssm.models import from_pretrained, save_pretrained

    if which not in WHICH:
        raise ValueError(f"which: expected one of {', '.join(WHICH)}, got {which!r}")
    run_dir, out = Path(run_dir), Path(out)
    source = run_dir / which
    if not source.is_dir():
        raise ValueError(f"run_dir: expected a training run with a {which!r} folder, got {run_dir}")
    target = _check_out(run_dir, out)
    model = from_pretrained(source)  # any released format; checked before anything is written
    tokenizer = _read_vocab(run_dir / "vocab.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
    try:
        save_pretrained(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename happened
    return out
