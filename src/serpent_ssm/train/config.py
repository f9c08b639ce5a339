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

import torch

from serpent_ssm.models.config import ModelConfig
from serpent_ssm.train.tasks import task_spec
from serpent_ssm.utils.config import check_fields, check_minimums, from_mapping, prefix_error

__all__ = [
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "load_run_config",
    "model_config_for",
    "parse_override",
]


# the data config's lengths and counts: each at least 1 when set
_DATA_COUNTS = ("batch_size", "eval_batch_size", "max_len", "size", "pad_to", "limit_train", "limit_eval")


@dataclass
class DataConfig:
    """Which task and how to batch it. ``data_dir``: the root of the official layouts (also
    where generated sets are cached). ``generate``: for listops/pathfinder/sparse-digits, generator
    arguments used when the files are absent (e.g. ``{n_train: 2000, min_len: 100, max_len: 500}``).
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
        check_minimums(self, "data.", {name: 1 for name in _DATA_COUNTS})
        if self.seq_len < 2:
            raise ValueError(
                f"data.seq_len: expected at least 2 (an input and its next byte), got {self.seq_len}"
            )


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
        for name in ("lr", "ssm_lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"optim.{name}: expected a positive float, got {getattr(self, name)}")
        check_minimums(self, "optim.", {"weight_decay": 0.0, "warmup_steps": 0, "grad_clip": 0.0})
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio: expected a number in [0, 1], got {self.min_lr_ratio}")
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"optim.betas[{i}]: expected a number in [0, 1), got {beta}")


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
        check_minimums(
            self, "train.", {"max_steps": 1, "eval_every": 1, "log_every": 1, "checkpoint_every": 1}
        )
        check_minimums(self, "train.", {"seed": 0})
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(
                f"train.device: expected a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                f"got {self.device!r}"
            ) from None


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


def _yaml_load(text: str, where: str) -> Any:
    """``text`` parsed as YAML, safely and without aliases (``*name``): an alias can expand a few
    hundred bytes into gigabytes (a "billion laughs" document), and a run config never needs one.
    Errors name ``where`` (the file, or the ``--set``)."""
    try:
        import yaml
    except ImportError:
        raise ModuleNotFoundError("YAML configs need PyYAML: pip install 'serpent-ssm[train]'") from None

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ValueError(
                    f"{where}: line {mark.line + 1}: YAML aliases (*name) are not supported in run configs; "
                    "write the values out"
                )
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {exc}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (``["a", "b"]``, value parsed as a YAML scalar)."""
    if "=" not in text:
        raise ValueError(f"--set: expected KEY.PATH=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), _yaml_load(raw, f"--set {text}") if raw.strip() else None


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
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: missing: expected a YAML run config")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: expected UTF-8 text, got {exc.reason} at byte {exc.start}") from None
        raw = _yaml_load(text, str(path)) or {}
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
