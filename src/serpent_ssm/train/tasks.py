"""The tasks: one registry entry per task name, with its loader and what the model needs to know.

``TASKS`` maps a name to its ``TaskSpec`` (loader, classes, vocabulary or input width, head,
whether it is language modelling); ``TASK_NAMES`` and ``LM_TASK_NAMES`` are its names, which the
run config checks ``data.task`` against. ``load_task(data_config)`` builds the datasets.

Every task reads the official layout under ``data.data_dir`` (docs/data.md). ListOps,
Pathfinder and sparse digits are generated there first when absent and ``data.generate`` is set
(the generator's arguments), so a run needs no download; a set generated with other arguments
is refused. The data modules are imported by the loaders only.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torch.utils.data import Dataset, Subset

if TYPE_CHECKING:
    from serpent_ssm.data.vocab import Vocab

__all__ = [
    "LM_TASK_NAMES",
    "TASKS",
    "TASK_NAMES",
    "DataSource",
    "TaskData",
    "TaskSpec",
    "load_task",
    "task_spec",
]

SPLITS = ("train", "val", "test")


class DataSource(Protocol):
    """What the loaders read of a data config (``serpent_ssm.train.config.DataConfig`` is one)."""

    task: str
    data_dir: str
    max_len: int | None
    size: int
    difficulty: str
    pad_to: int | None
    seq_len: int
    limit_train: int | None
    limit_eval: int | None
    generate: dict[str, Any]


Splits = tuple[Dataset, Dataset, Dataset]


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``load(data_config) -> (train, val, test)`` and the facts the model is built from.

    ``n_classes``: output classes (None for a language model: one per vocabulary id).
    ``vocabulary``: ``"listops"`` or ``"bytes"`` for token tasks (ids of ``serpent_ssm.data.vocab``),
    None for pixel tasks, whose inputs have ``d_input`` values per position. ``head``:
    ``"classify"``, ``"retrieval"`` (a pair of sequences) or ``"lm"`` (next-byte prediction).
    """

    name: str
    load: Callable[[DataSource], Splits]
    head: str
    n_classes: int | None = None
    vocabulary: str | None = None
    d_input: int | None = None

    @property
    def is_lm(self) -> bool:
        return self.head == "lm"

    @property
    def metric(self) -> str:
        """What selects the best model: ``accuracy`` (higher is better) or ``bits_per_byte``."""
        return "bits_per_byte" if self.is_lm else "accuracy"

    @property
    def worst(self) -> float:
        """A value of ``metric`` that any evaluation improves on."""
        return math.inf if self.is_lm else -1.0

    def improves(self, value: float, best: float) -> bool:
        """Whether ``value`` of ``metric`` is better than ``best``."""
        return value < best if self.is_lm else value > best

    def vocab(self) -> Vocab | None:
        """The token vocabulary (saved with a run as ``vocab.json``), None for pixel tasks."""
        if self.vocabulary is None:
            return None
        from serpent_ssm.data.vocab import BYTE_VOCAB, LISTOPS_VOCAB

        return {"bytes": BYTE_VOCAB, "listops": LISTOPS_VOCAB}[self.vocabulary]

    def model_facts(self) -> dict[str, Any]:
        """The model config's task fields: ``n_classes``, ``vocab_size``, ``d_input``, ``head``."""
        vocab = self.vocab()
        vocab_size = vocab.size if vocab is not None else None
        n_classes = vocab_size if self.n_classes is None else self.n_classes
        return {"n_classes": n_classes, "vocab_size": vocab_size, "d_input": self.d_input, "head": self.head}


@dataclass
class TaskData:
    """Datasets of a task and its ``spec``. For language modelling ``train`` is a dataset of
    windows and ``val``/``test`` are whole byte streams, ``(T,)`` uint8."""

    spec: TaskSpec
    train: Dataset
    val: Dataset
    test: Dataset

    @property
    def n_classes(self) -> int:
        return self.spec.model_facts()["n_classes"]

    @property
    def vocab_size(self) -> int | None:  # token tasks
        return self.spec.model_facts()["vocab_size"]

    @property
    def d_input(self) -> int | None:  # pixel tasks
        return self.spec.d_input

    @property
    def head(self) -> str:
        return self.spec.head

    @property
    def vocab(self) -> dict | None:
        """The vocabulary as saved with the run (``Vocab.to_dict``), None for pixel tasks."""
        vocab = self.spec.vocab()
        return vocab.to_dict() if vocab is not None else None


# ----------------------------------------------------------------------------- generated sets
def _check_generated(folder: Path, generate: dict, defaults: dict) -> None:
    """Refuse to reuse a set generated with other arguments than ``generate`` (stats.json).

    Compared: the split sizes (``n_train``, ...) and every argument that ``stats.json`` records
    at its top level (``seed``, ``min_len``, ``length``, ...), ``defaults`` filling in those
    that ``generate`` leaves out."""
    from serpent_ssm.data.errors import DataFormatError

    stats_path = folder / "stats.json"
    if not generate or not stats_path.is_file():
        return  # official files, or nothing asked: use what is there
    stats = json.loads(stats_path.read_text())
    want = {**defaults, **generate}
    have = {k: stats[k] for k in want if k in stats and k != "splits"}
    have.update({f"n_{s}": stats["splits"][s]["n"] for s in SPLITS if s in stats.get("splits", {})})
    diff = sorted(k for k in have if k in want and have[k] != want[k])
    if diff:
        k = diff[0]
        raise DataFormatError(
            stats_path,
            f"holds a set generated with {k}={have[k]}, the config asks for {k}={want[k]}; "
            "point data.data_dir elsewhere or delete the folder, or train on these files as they are "
            "with --set 'data.generate={}'",
        )


def _signature_defaults(fn: Callable) -> dict[str, Any]:
    """The keyword defaults of a generator: what a ``data.generate`` that leaves them out means."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _ensure_generated(
    folder: Path, present: bool, cfg: DataSource, defaults: dict, expected: str, generate: Callable[[], Any]
) -> None:
    """A set that is ``present`` is checked against ``cfg.generate`` (``_check_generated``); an
    absent one is generated by ``generate()`` when ``cfg.generate`` is set, else refused with a
    DataFormatError saying what ``folder`` should hold (``expected``)."""
    from serpent_ssm.data.errors import DataFormatError

    if present:
        _check_generated(folder, cfg.generate, defaults)
        return
    if not cfg.generate:
        raise DataFormatError(folder, f"missing: expected {expected} (or set data.generate to generate them)")
    generate()


def _ensure_split_files(cfg: DataSource, folder: Path, name: str, generator: Callable[..., Any]) -> None:
    """``_ensure_generated`` for a set of one file per split, ``name`` with ``{split}`` in it,
    written by ``generator(data_dir, **data.generate)``, whose defaults fill in ``data.generate``."""
    present = all((folder / name.format(split=s)).is_file() for s in SPLITS)
    expected = name.format(split="{train,val,test}")
    defaults = _signature_defaults(generator)
    _ensure_generated(
        folder, present, cfg, defaults, expected, lambda: generator(cfg.data_dir, **cfg.generate)
    )


def _ensure_listops(cfg: DataSource) -> None:
    from serpent_ssm.data.listops import generate_listops

    _ensure_split_files(cfg, Path(cfg.data_dir) / "listops", "basic_{split}.tsv", generate_listops)


def _ensure_sparse_digits(cfg: DataSource) -> None:
    from serpent_ssm.data.sparse_digits import FOLDER, generate_sparse_digits

    _ensure_split_files(cfg, Path(cfg.data_dir) / FOLDER, "{split}.tsv", generate_sparse_digits)


def _ensure_pathfinder(cfg: DataSource) -> None:
    from serpent_ssm.data.pathfinder import generate_pathfinder, pathfinder_root

    root = pathfinder_root(cfg.data_dir, cfg.size, cfg.difficulty)
    defaults = {"seed": 0, "n_train": 20_000, "n_val": 1_000, "n_test": 1_000}  # size, difficulty: cfg's
    _ensure_generated(
        root,
        (root / "metadata").is_dir(),
        cfg,
        defaults,
        "imgs/ and metadata/",
        lambda: generate_pathfinder(cfg.data_dir, size=cfg.size, difficulty=cfg.difficulty, **cfg.generate),
    )


# ----------------------------------------------------------------------------- loaders
def _load_listops(cfg: DataSource) -> Splits:
    from serpent_ssm.data.listops import ListOpsDataset

    _ensure_listops(cfg)
    return tuple(ListOpsDataset(cfg.data_dir, s, max_len=cfg.max_len) for s in SPLITS)


def _load_sparse_digits(cfg: DataSource) -> Splits:
    from serpent_ssm.data.sparse_digits import SparseDigitsDataset

    _ensure_sparse_digits(cfg)
    return tuple(SparseDigitsDataset(cfg.data_dir, s) for s in SPLITS)


def _load_pathfinder(cfg: DataSource) -> Splits:
    from serpent_ssm.data.pathfinder import PathfinderDataset

    _ensure_pathfinder(cfg)
    return tuple(PathfinderDataset(cfg.data_dir, cfg.size, cfg.difficulty, s) for s in SPLITS)


def _load_fashion_mnist(cfg: DataSource) -> Splits:
    from serpent_ssm.data.errors import DataFormatError
    from serpent_ssm.data.fetch import fetched_path, missing_message
    from serpent_ssm.data.images import FashionMnistDataset

    root = Path(cfg.data_dir) / "fashion-mnist"
    if not root.is_dir():
        root = fetched_path("fashion-mnist")
        if root is None:
            raise DataFormatError(Path(cfg.data_dir) / "fashion-mnist", missing_message("fashion-mnist"))
    return tuple(FashionMnistDataset(root, s, pad_to=cfg.pad_to) for s in SPLITS)


def _load_cifar(cfg: DataSource) -> Splits:
    from serpent_ssm.data.images import Cifar10Dataset

    return tuple(Cifar10Dataset(cfg.data_dir, s) for s in SPLITS)


def _load_imdb(cfg: DataSource) -> Splits:
    from serpent_ssm.data.text import ImdbDataset

    return tuple(ImdbDataset(cfg.data_dir, s, max_len=cfg.max_len or 4096) for s in SPLITS)


def _load_aan(cfg: DataSource) -> Splits:
    from serpent_ssm.data.text import AanDataset

    return tuple(AanDataset(cfg.data_dir, s, max_len=cfg.max_len or 4000) for s in SPLITS)


def _load_english(cfg: DataSource) -> Splits:
    from serpent_ssm.data.corpus import LMWindows, load_english_corpus

    corpus = load_english_corpus()
    return LMWindows(corpus["train"], cfg.seq_len), corpus["valid"], corpus["test"]


def _load_wikitext103(cfg: DataSource) -> Splits:
    from serpent_ssm.data.corpus import LMWindows
    from serpent_ssm.data.text import read_wikitext103

    train, val, test = (read_wikitext103(cfg.data_dir, s) for s in ("train", "valid", "test"))
    return LMWindows(train, cfg.seq_len), val, test


# ----------------------------------------------------------------------------- the registry
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("listops", _load_listops, "classify", n_classes=10, vocabulary="listops"),
        TaskSpec("pathfinder", _load_pathfinder, "classify", n_classes=2, d_input=1),
        TaskSpec("fashion-mnist", _load_fashion_mnist, "classify", n_classes=10, d_input=1),
        TaskSpec("imdb", _load_imdb, "classify", n_classes=2, vocabulary="bytes"),
        TaskSpec("aan", _load_aan, "retrieval", n_classes=2, vocabulary="bytes"),
        TaskSpec("cifar", _load_cifar, "classify", n_classes=10, d_input=1),
        TaskSpec("sparse-digits", _load_sparse_digits, "classify", n_classes=10, vocabulary="bytes"),
        TaskSpec("english", _load_english, "lm", vocabulary="bytes"),
        TaskSpec("wikitext103", _load_wikitext103, "lm", vocabulary="bytes"),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
LM_TASK_NAMES: tuple[str, ...] = tuple(name for name, spec in TASKS.items() if spec.is_lm)


def task_spec(name: str) -> TaskSpec:
    """The registry entry of task ``name``; ValueError naming ``data.task`` for an unknown one."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"data.task: expected one of {', '.join(TASK_NAMES)}, got {name!r}") from None


def _limit(ds: Dataset, n: int | None) -> Dataset:
    """The first ``n`` samples of ``ds`` (all of them when ``n`` is None)."""
    return ds if n is None or n >= len(ds) else Subset(ds, range(n))


def load_task(cfg: DataSource) -> TaskData:
    """Build the train/val/test datasets of ``cfg.task`` (generating ListOps, Pathfinder or sparse
    digits if asked).

    ``cfg.limit_train`` caps the training samples (windows for a language model);
    ``cfg.limit_eval`` the validation/test samples, or a language model's bytes of them.
    """
    spec = task_spec(cfg.task)
    _check_data_dir(Path(cfg.data_dir))
    train, val, test = spec.load(cfg)
    if spec.is_lm:
        cut = cfg.limit_eval
        val, test = (val[:cut], test[:cut]) if cut else (val, test)
    else:
        val, test = _limit(val, cfg.limit_eval), _limit(test, cfg.limit_eval)
    data = TaskData(spec=spec, train=_limit(train, cfg.limit_train), val=val, test=test)
    for split, least in (("train", 1), ("val", 2 if spec.is_lm else 1), ("test", 2 if spec.is_lm else 1)):
        n = len(getattr(data, split))
        if n < least:
            what = "bytes" if spec.is_lm and split != "train" else "samples"
            raise ValueError(
                f"data: the {split} split of {cfg.task} (under {cfg.data_dir}) holds {n} {what}; "
                f"expected at least {least}"
            )
    return data


def _check_data_dir(path: Path) -> None:
    """``data.data_dir`` must be a directory (or not exist yet): fail before anything is generated."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"data.data_dir: expected a directory, got a file: {path}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"data.data_dir: expected a directory, but {parent} is a file")
            break
