"""Run configuration: one YAML file = model + data + optimiser + training loop.

Every key is checked before anything runs: an unknown key, a wrong type or a bad value fails
with a message naming the key path (``optim.lr: expected a float, got 'fast'``). ``--set
a.b=value`` overrides are parsed as YAML scalars (``--set model.d_model=128``).

A YAML file may hold ``presets``: named sets of overrides applied with ``--preset NAME`` (our
configs keep a CPU-sized default and a ``paper`` preset side by side).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serpent_ssm.models.config import ModelConfig
from serpent_ssm.train.tasks import task_spec
from serpent_ssm.utils.config import check_fields, from_mapping, prefix_error

__all__ = [
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "load_run_config",
    "model_config_for",
    "parse_override",
]


@dataclass
class DataConfig:
    """Which task and how to batch it. ``data_dir``: the root of the official layouts (also
    where generated sets are cached). ``generate``: for listops/pathfinder, generator arguments
    used when the files are absent (e.g. ``{n_train: 2000, min_len: 100, max_len: 500}``).
    Language modelling (english, wikitext103): ``seq_len`` bytes per training window;
    ``limit_eval`` caps the bytes of the validation/test text that are scored."""

    task: str = "listops"
    data_dir: str = "data"
    batch_size: int = 32
    eval_batch_size: int = 64
    max_len: int | None = None
    size: int = 32
    difficulty: str = "hard"
    pad_to: int | None = None
    seq_len: int = 512
    limit_train: int | None = None
    limit_eval: int | None = None
    generate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        task_spec(self.task)  # an unknown name fails here, naming data.task
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}: expected a positive integer, got {getattr(self, name)}")


@dataclass
class OptimConfig:
    """AdamW; the SSM parameters (``_optim`` hints, ``_no_weight_decay``) get their own group."""

    lr: float = 3e-3
    weight_decay: float = 0.05
    ssm_lr: float | None = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        if self.lr <= 0:
            raise ValueError(f"optim.lr: expected a positive float, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps: expected a non-negative integer, got {self.warmup_steps}")


@dataclass
class TrainConfig:
    """The loop: steps, evaluation, logging, seeds, device."""

    max_steps: int = 500
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("max_steps", "eval_every", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: expected a positive integer, got {getattr(self, name)}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        model_config_for(self.model, self.data.task)  # every model value checked before any data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return from_mapping(cls, d)


def model_config_for(model: ModelConfig, task: str) -> ModelConfig:
    """``model`` with the facts of ``task`` filled in (classes, inputs, head), resolved
    (``ModelConfig.resolved``): the config ``build_model`` gets. Needs no data."""
    facts = task_spec(task).model_facts()
    try:
        return dataclasses.replace(model, **facts).resolved()
    except ValueError as exc:
        raise prefix_error("model", exc) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (``["a", "b"]``, value parsed as a YAML scalar)."""
    import yaml

    if "=" not in text:
        raise ValueError(f"--set: expected KEY.PATH=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _set_path(d: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise ValueError(f"--set {'.'.join(path)}: {part} is not a mapping")
    d[path[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_run_config(
    path: str | Path | None = None, overrides: list[str] = (), preset: str | None = None
) -> RunConfig:
    """Read a YAML run config (or start from the defaults), apply a preset, then ``--set``s."""
    try:
        import yaml
    except ImportError:
        raise ModuleNotFoundError("YAML configs need PyYAML: pip install 'serpent-ssm[train]'") from None
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: missing: expected a YAML run config")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    presets = raw.pop("presets", {}) or {}
    if preset is not None:
        if preset not in presets:
            raise ValueError(
                f"--preset: expected one of {', '.join(sorted(presets)) or '(none)'}, got {preset!r}"
            )
        raw = _merge(raw, presets[preset])
    for text in overrides:
        key, value = parse_override(text)
        _set_path(raw, key, value)
    return RunConfig.from_dict(raw)
