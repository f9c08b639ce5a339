"""Task name -> datasets and what the model needs to know about them.

Every task reads the official layout under ``data.data_dir`` (docs/data.md). ListOps and
Pathfinder are generated there first when absent and ``data.generate`` is set (the generator's
arguments), so a run needs no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset, Subset

from serpent_ssm.data.errors import DataFormatError
from serpent_ssm.train.config import DataConfig

__all__ = ["TaskData", "load_task"]


@dataclass
class TaskData:
    """Datasets of a task and the model facts they imply (for language modelling, ``train`` is
    a dataset of windows and ``val``/``test`` are whole byte streams, ``(T,)`` uint8)."""

    train: Dataset
    val: Dataset
    test: Dataset
    n_classes: int
    vocab_size: int | None  # token tasks
    d_input: int | None  # pixel tasks (1)
    head: str  # "classify" or "retrieval"
    vocab: dict | None  # saved with the run


def _limit(ds: Dataset, n: int | None) -> Dataset:
    return ds if n is None or n >= len(ds) else Subset(ds, range(n))


def _check_generated(folder: Path, generate: dict, defaults: dict) -> None:
    """Refuse to reuse a set generated with other arguments than ``generate`` (stats.json)."""
    stats_path = folder / "stats.json"
    if not generate or not stats_path.is_file():
        return  # official files, or nothing asked: use what is there
    import json

    stats = json.loads(stats_path.read_text())
    want = {**defaults, **generate}
    have = {k: stats.get(k) for k in ("seed", "min_len", "max_len") if k in want}
    have.update(
        {f"n_{s}": stats["splits"][s]["n"] for s in ("train", "val", "test") if s in stats.get("splits", {})}
    )
    diff = sorted(k for k in have if k in want and have[k] != want[k])
    if diff:
        k = diff[0]
        raise DataFormatError(
            stats_path,
            f"holds a set generated with {k}={have[k]}, the config asks for {k}={want[k]}; "
            "point data.data_dir elsewhere or delete the folder",
        )


def _ensure_listops(cfg: DataConfig) -> None:
    from serpent_ssm.data.listops import generate_listops

    folder = Path(cfg.data_dir) / "listops"
    if all((folder / f"basic_{s}.tsv").is_file() for s in ("train", "val", "test")):
        defaults = {
            "seed": 0,
            "min_len": 100,
            "max_len": 500,
            "n_train": 20_000,
            "n_val": 1_000,
            "n_test": 1_000,
        }
        _check_generated(folder, cfg.generate, defaults)
        return
    if not cfg.generate:
        raise DataFormatError(
            folder, "missing: expected basic_{train,val,test}.tsv (or set data.generate to generate them)"
        )
    generate_listops(cfg.data_dir, **cfg.generate)


def _ensure_pathfinder(cfg: DataConfig) -> None:
    from serpent_ssm.data.pathfinder import generate_pathfinder, pathfinder_root

    root = pathfinder_root(cfg.data_dir, cfg.size, cfg.difficulty)
    if (root / "metadata").is_dir():
        _check_generated(root, cfg.generate, {"seed": 0, "n_train": 20_000, "n_val": 1_000, "n_test": 1_000})
        return
    if not cfg.generate:
        raise DataFormatError(
            root, "missing: expected imgs/ and metadata/ (or set data.generate to generate them)"
        )
    generate_pathfinder(cfg.data_dir, size=cfg.size, difficulty=cfg.difficulty, **cfg.generate)


def load_task(cfg: DataConfig) -> TaskData:
    """Build the train/val/test datasets of ``cfg.task`` (generating ListOps/Pathfinder if asked)."""
    task = cfg.task
    if task == "listops":
        from serpent_ssm.data.listops import ListOpsDataset

        _ensure_listops(cfg)
        splits = [ListOpsDataset(cfg.data_dir, s, max_len=cfg.max_len) for s in ("train", "val", "test")]
        info = {"n_classes": 10, "vocab_size": ListOpsDataset.vocab.size, "d_input": None, "head": "classify"}
        vocab = ListOpsDataset.vocab.to_dict()
    elif task == "pathfinder":
        from serpent_ssm.data.pathfinder import PathfinderDataset

        _ensure_pathfinder(cfg)
        splits = [
            PathfinderDataset(cfg.data_dir, cfg.size, cfg.difficulty, s) for s in ("train", "val", "test")
        ]
        info = {"n_classes": 2, "vocab_size": None, "d_input": 1, "head": "classify"}
        vocab = None
    elif task == "fashion-mnist":
        from serpent_ssm.data.fetch import fetched_path, missing_message
        from serpent_ssm.data.images import FashionMnistDataset

        root = Path(cfg.data_dir) / "fashion-mnist"
        if not root.is_dir():
            root = fetched_path("fashion-mnist")
            if root is None:
                raise DataFormatError(Path(cfg.data_dir) / "fashion-mnist", missing_message("fashion-mnist"))
        splits = [FashionMnistDataset(root, s, pad_to=cfg.pad_to) for s in ("train", "val", "test")]
        info = {"n_classes": 10, "vocab_size": None, "d_input": 1, "head": "classify"}
        vocab = None
    elif task == "cifar":
        from serpent_ssm.data.images import Cifar10Dataset

        splits = [Cifar10Dataset(cfg.data_dir, s) for s in ("train", "val", "test")]
        info = {"n_classes": 10, "vocab_size": None, "d_input": 1, "head": "classify"}
        vocab = None
    elif task == "imdb":
        from serpent_ssm.data.text import ImdbDataset

        splits = [ImdbDataset(cfg.data_dir, s, max_len=cfg.max_len or 4096) for s in ("train", "val", "test")]
        info = {"n_classes": 2, "vocab_size": ImdbDataset.vocab.size, "d_input": None, "head": "classify"}
        vocab = ImdbDataset.vocab.to_dict()
    elif task == "aan":
        from serpent_ssm.data.text import AanDataset

        splits = [AanDataset(cfg.data_dir, s, max_len=cfg.max_len or 4000) for s in ("train", "val", "test")]
        info = {"n_classes": 2, "vocab_size": AanDataset.vocab.size, "d_input": None, "head": "retrieval"}
        vocab = AanDataset.vocab.to_dict()
    elif task in ("english", "wikitext103"):
        from serpent_ssm.data.corpus import LMWindows
        from serpent_ssm.data.vocab import BYTE_VOCAB

        if task == "english":
            from serpent_ssm.data.corpus import load_english_corpus

            corpus = load_english_corpus()
            streams = [corpus["train"], corpus["valid"], corpus["test"]]
        else:
            from serpent_ssm.data.text import read_wikitext103

            streams = [read_wikitext103(cfg.data_dir, s) for s in ("train", "valid", "test")]
        cut = cfg.limit_eval
        train = _limit(LMWindows(streams[0], cfg.seq_len), cfg.limit_train)
        return TaskData(
            train=train,
            val=streams[1][:cut] if cut else streams[1],
            test=streams[2][:cut] if cut else streams[2],
            n_classes=BYTE_VOCAB.size,
            vocab_size=BYTE_VOCAB.size,
            d_input=None,
            head="lm",
            vocab=BYTE_VOCAB.to_dict(),
        )
    else:  # unreachable: DataConfig checks the name
        raise ValueError(f"data.task: unknown task {task!r}")
    train, val, test = splits
    return TaskData(
        train=_limit(train, cfg.limit_train),
        val=_limit(val, cfg.limit_eval),
        test=_limit(test, cfg.limit_eval),
        vocab=vocab,
        **info,
    )
