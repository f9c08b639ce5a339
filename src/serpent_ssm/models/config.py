"""``ModelConfig``: everything that defines a model's architecture, typed and checked on construction.

A config travels from YAML (``model:`` of a run config) or ``config.json`` (a saved model) to the
modules as one object: ``ModelConfig.from_dict`` checks every key with the coercion of
``utils.config`` (errors name the key path, ``model.serpent.rates: ...``), the backbone options
become the backbone's typed dataclass (``modules.backbones.BACKBONE_OPTIONS``) and the SeRpEnt
options a ``SeRpEntOptions``. Defaults that depend on other fields (``causal`` from the head,
SeRpEnt's mode-dependent options) are filled in by ``resolved()``, the one place that does it;
``build_model`` builds from the resolved config and ``save_pretrained`` writes it, with
``format_version``, so that a later change of a default cannot change a saved model.
``migrate`` reads the files of earlier versions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from serpent_ssm.models.mixers import MODEL_NAMES, backbone_name
from serpent_ssm.modules.backbones import backbone_options
from serpent_ssm.modules.block import NORMS
from serpent_ssm.modules.serpent_config import SeRpEntOptions, resolve_options
from serpent_ssm.utils.config import check_fields, check_minimums, from_mapping, prefix_error, to_mapping

__all__ = ["FIRST_DEFAULT_MIXER", "FORMAT_VERSION", "HEADS", "ModelConfig", "migrate", "unversioned_format"]

HEADS = ("classify", "retrieval", "lm")
FORMAT_VERSION = "0.4.0"
# The first default's SeRpEnt mixer (non-causal up to format 0.2.0, causal up to 0.3.0): a backbone
# per branch, a dense merge, the cell projection, identity init. Migrations fill it in; a benchmark
# or a test that wants that mixer sets these options.
FIRST_DEFAULT_MIXER = {"share_backbone": False, "mix": "dense", "cell_proj": True, "init": "identity"}
LEAN = ("share_backbone", "mix", "cell_proj")  # the options of the lean shared mixer


@dataclass
class ModelConfig:
    """Everything that defines a model's architecture (not its training).

    ``name``: mamba, s4d, serpent-mamba, serpent-s4d. ``head``: ``classify`` (SequenceClassifier),
    ``retrieval`` (two towers) or ``lm`` (CausalLM). Inputs: ``vocab_size`` for token ids, or
    ``d_input`` for float features (1 for pixels). ``causal``: None = by the head (a language
    model is causal, a classifier is not); ``False`` makes the backbones bidirectional, and a
    language model refuses it. ``backbone``: the options of the Mamba/S4D mixer (``d_state``,
    ``expand``, ...; a mapping is converted to the backbone's typed options). ``serpent``: the
    ``SeRpEntOptions`` of the serpent-* models (a mapping is converted; None, or an empty
    mapping, for the others).
    ``norm_eps`` and ``tie_embeddings`` apply to the language model.
    """

    name: str = "mamba"
    head: str = "classify"
    d_model: int = 64
    n_layers: int = 2
    n_classes: int = 10
    vocab_size: int | None = None
    d_input: int | None = None
    norm: str = "rms"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    mlp_ratio: float = 0.0
    dropout: float = 0.0
    causal: bool | None = None
    backbone: Any = None
    serpent: SeRpEntOptions | None = None

    def __post_init__(self) -> None:
        try:
            self._check()
        except ValueError as exc:
            raise prefix_error("model", exc) from None

    def _check(self) -> None:
        if self.serpent == {} and not str(self.name).startswith("serpent-"):
            self.serpent = None  # an empty mapping sets nothing
        check_fields(self)
        if self.name not in MODEL_NAMES:
            raise ValueError(f"name: expected one of {', '.join(MODEL_NAMES)}, got {self.name!r}")
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {', '.join(HEADS)}, got {self.head!r}")
        check_minimums(
            self, "", {k: 1 for k in ("d_model", "n_layers", "n_classes", "vocab_size", "d_input")}
        )
        check_minimums(self, "", {"mlp_ratio": 0.0})
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps: expected a positive float, got {self.norm_eps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.head == "lm" and self.causal is False:
            raise ValueError("causal: expected true (or unset) for a language model (head 'lm'), got false")
        if self.serpent is not None and not self.name.startswith("serpent-"):
            raise ValueError(f"serpent: only for the serpent-* models, got it with name {self.name!r}")
        if self.serpent is None and self.name.startswith("serpent-"):
            self.serpent = SeRpEntOptions()
        if self.serpent is not None and self.serpent.layers is not None:
            if max(self.serpent.layers) >= self.n_layers:
                raise ValueError(
                    f"serpent.layers: expected layer indices below n_layers={self.n_layers}, "
                    f"got {list(self.serpent.layers)}"
                )
        try:
            self.backbone = backbone_options(backbone_name(self.name), self.backbone)
        except ValueError as exc:
            raise prefix_error("backbone", exc) from None

    def resolved(self) -> ModelConfig:
        """A copy with every default that depends on another field filled in: ``causal`` (by the
        head) and SeRpEnt's mode-dependent options (``restore``, ``include_full_branch``,
        ``bidirectional``, ``init``). Raises ValueError naming ``model.serpent.<key>`` on a conflict."""
        causal = self.causal if self.causal is not None else self.head == "lm"
        serpent = self.serpent
        if serpent is not None:
            try:
                serpent = resolve_options(serpent, causal)
            except ValueError as exc:
                raise prefix_error("model.serpent", exc) from None
        return dataclasses.replace(self, causal=causal, serpent=serpent)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly values (``format_version`` first), as ``config.json`` stores them."""
        return {"format_version": FORMAT_VERSION, **to_mapping(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """From ``to_dict``'s output or a YAML ``model:`` mapping (``format_version`` optional)."""
        d = dict(d)
        version = d.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"model.format_version: expected {FORMAT_VERSION!r} (older files go through migrate()), "
                f"got {version!r}"
            )
        return from_mapping(cls, d, "model")


def _migrate_0_1_0(record: dict[str, Any]) -> dict[str, Any]:
    """0.1.0 -> 0.2.0. In 0.1.0 ``serpent`` was ``{}`` for the backbone models; a language model
    was causal whatever its ``causal`` field said; and causal SeRpEnt models saved before the
    full branch became the causal default wrote only the options set by hand (so an absent
    ``include_full_branch`` meant the default of then, False)."""
    record = dict(record)
    name = record.get("name", "mamba")
    if not isinstance(name, str) or not name.startswith("serpent-"):
        if record.get("serpent") in ({}, None):
            record["serpent"] = None
    elif (serpent := _serpent_record(record)) is not None:
        serpent.setdefault("include_full_branch", False)
        record["serpent"] = serpent
    if record.get("head") == "lm":
        record["causal"] = True
    return record


def _migrate_0_2_0(record: dict[str, Any]) -> dict[str, Any]:
    """0.2.0 -> 0.3.0. ``share_backbone``, ``mix`` and ``cell_proj`` became mode-dependent (the
    lean shared mixer in non-causal mode); a 0.2.0 record that left them out meant the defaults of
    then: False, "dense", True."""
    record = dict(record)
    serpent = _serpent_record(record)
    if serpent is not None:
        for key in LEAN:
            if serpent.get(key) is None:
                serpent[key] = FIRST_DEFAULT_MIXER[key]
        record["serpent"] = serpent
    return record


def _migrate_0_3_0(record: dict[str, Any]) -> dict[str, Any]:
    """0.3.0 -> 0.4.0. The lean shared mixer became the causal default too (with ``init``
    "backbone" when causal with the full branch): a 0.3.0 record that left ``share_backbone``,
    ``mix``, ``cell_proj`` or ``init`` out meant the defaults of then: when causal False,
    "dense", True; when not, True, "gates", False; and ``init`` "identity" in both modes."""
    record = dict(record)
    serpent = _serpent_record(record)
    if serpent is not None:
        causal = record.get("causal")
        causal = record.get("head") == "lm" if causal is None else bool(causal)
        lean = {"share_backbone": True, "mix": "gates", "cell_proj": False, "init": "identity"}
        for key, value in (FIRST_DEFAULT_MIXER if causal else lean).items():
            if serpent.get(key) is None:
                serpent[key] = value
        record["serpent"] = serpent
    return record


def _serpent_record(record: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of a serpent-* record's ``serpent`` mapping (``{}`` where it was left out: the
    defaults of its version), or None for the other models and for values migrate cannot read
    (``from_dict`` reports those)."""
    name = record.get("name", "mamba")
    if not isinstance(name, str) or not name.startswith("serpent-"):
        return None
    serpent = record.get("serpent")
    if serpent is None:
        return {}
    return dict(serpent) if isinstance(serpent, dict) else None


_MIGRATIONS = {  # format -> (the next format, the step to it)
    "0.1.0": ("0.2.0", _migrate_0_1_0),
    "0.2.0": ("0.3.0", _migrate_0_2_0),
    "0.3.0": ("0.4.0", _migrate_0_3_0),
}


def unversioned_format(record: dict[str, Any]) -> str:
    """The format of a model record written without ``format_version`` by a run's ``config.json``
    (whose ``model`` section carries it since 0.4.0), told by its keys: no ``include_full_branch``
    in ``serpent``: 0.1.0; no ``share_backbone``: 0.2.0; one of ``share_backbone``, ``mix``,
    ``cell_proj`` null (mode-dependent then): 0.3.0; else today's (a record of any earlier format
    with these keys set reads the same today)."""
    serpent = record.get("serpent")
    if not isinstance(serpent, dict) or not str(record.get("name", "")).startswith("serpent-"):
        return FORMAT_VERSION
    if "include_full_branch" not in serpent:
        return "0.1.0"
    if "share_backbone" not in serpent:
        return "0.2.0"
    if any(serpent.get(k, "") is None for k in LEAN):
        return "0.3.0"
    return FORMAT_VERSION


def migrate(record: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` record of any released format as the current one (no ``format_version``
    key means 0.1.0, the first release)."""
    if not isinstance(record, dict):
        raise ValueError(f"config: expected a mapping, got {type(record).__name__}")
    record = dict(record)
    version = record.pop("format_version", "0.1.0")
    while version != FORMAT_VERSION:
        if version not in _MIGRATIONS:
            known = ", ".join([*_MIGRATIONS, FORMAT_VERSION])
            raise ValueError(f"format_version: expected one of {known}, got {version!r}")
        version, step = _MIGRATIONS[version]
        record = step(record)
    return {"format_version": FORMAT_VERSION, **record}
