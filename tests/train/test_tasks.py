"""The task registry: one entry per task, the facts the model is built from, no import cycle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serpent_ssm.train import config
from serpent_ssm.train.tasks import LM_TASK_NAMES, TASK_NAMES, TASKS, load_task, task_spec

# What each task gave the model before the registry (n_classes, vocab_size, d_input, head).
FACTS = {
    "listops": (10, 18, None, "classify"),
    "pathfinder": (2, None, 1, "classify"),
    "fashion-mnist": (10, None, 1, "classify"),
    "imdb": (2, 259, None, "classify"),
    "aan": (2, 259, None, "retrieval"),
    "cifar": (10, None, 1, "classify"),
    "sparse-digits": (10, 259, None, "classify"),
    "english": (259, 259, None, "lm"),
    "wikitext103": (259, 259, None, "lm"),
}


def test_names_in_order_and_the_config_checks_against_them():
    assert TASK_NAMES == tuple(FACTS) and tuple(TASKS) == TASK_NAMES
    assert LM_TASK_NAMES == ("english", "wikitext103")
    with pytest.raises(
        ValueError, match=r"^data\.task: expected one of listops, .*, wikitext103, got 'mnist'$"
    ):
        config.DataConfig(task="mnist")


@pytest.mark.parametrize("name", list(FACTS))
def test_model_facts(name):
    spec = task_spec(name)
    n_classes, vocab_size, d_input, head = FACTS[name]
    facts = spec.model_facts()
    assert facts == {"n_classes": n_classes, "vocab_size": vocab_size, "d_input": d_input, "head": head}
    assert spec.is_lm == (name in LM_TASK_NAMES)
    assert spec.metric == ("bits_per_byte" if spec.is_lm else "accuracy")
    assert spec.improves(0.5, spec.worst) and not spec.improves(spec.worst, 0.5)
    assert (spec.vocab() is None) == (vocab_size is None)


def test_unknown_task():
    with pytest.raises(ValueError, match=r"^data\.task: expected one of listops, .*, got 'nope'$"):
        task_spec("nope")


def test_load_task_limits_and_vocabulary(tmp_path):
    from serpent_ssm.data.listops import generate_listops
    from serpent_ssm.data.vocab import LISTOPS_VOCAB

    generate_listops(tmp_path, n_train=12, n_val=6, n_test=6, min_len=5, max_len=20, seed=0)
    cfg = config.DataConfig(task="listops", data_dir=str(tmp_path), limit_train=5, limit_eval=4)
    task = load_task(cfg)
    assert (len(task.train), len(task.val), len(task.test)) == (5, 4, 4)
    assert task.spec is TASKS["listops"] and task.vocab == LISTOPS_VOCAB.to_dict()
    assert (task.n_classes, task.vocab_size, task.d_input, task.head) == FACTS["listops"]


def test_sparse_digits_generated_when_absent_and_refused_when_generated_otherwise(tmp_path):
    import json
    import re

    from serpent_ssm.data.errors import DataFormatError
    from serpent_ssm.data.vocab import BYTE_VOCAB

    small = {"n_train": 6, "n_val": 3, "n_test": 2, "length": 30, "n_digits": 3}
    folder = tmp_path / "sparse-digits"
    with pytest.raises(DataFormatError, match="missing: expected {train,val,test}.tsv .or set data.generate"):
        load_task(config.DataConfig(task="sparse-digits", data_dir=str(tmp_path)))
    task = load_task(config.DataConfig(task="sparse-digits", data_dir=str(tmp_path), generate=small))
    assert (len(task.train), len(task.val), len(task.test)) == (6, 3, 2)
    assert task.vocab == BYTE_VOCAB.to_dict() and task.train[0][0].shape == (30,)
    assert json.loads((folder / "stats.json").read_text())["seed"] == 0  # the generator's default
    load_task(config.DataConfig(task="sparse-digits", data_dir=str(tmp_path), generate={**small, "seed": 0}))
    for key, value in (("length", 40), ("n_digits", 2), ("seed", 1), ("n_val", 4)):
        generate = {**small, key: value}
        had = small.get(key, 0)
        want = f"{folder / 'stats.json'}: holds a set generated with {key}={had}, the config asks for {key}="
        with pytest.raises(DataFormatError, match=f"^{re.escape(want)}{value}; "):
            load_task(config.DataConfig(task="sparse-digits", data_dir=str(tmp_path), generate=generate))
    with pytest.raises(
        DataFormatError, match="holds a set generated with length=30, the config asks for length=1000"
    ):
        load_task(config.DataConfig(task="sparse-digits", data_dir=str(tmp_path), generate={"seed": 0}))
    as_they_are = load_task(config.DataConfig(task="sparse-digits", data_dir=str(tmp_path), generate={}))
    assert len(as_they_are.train) == 6


def test_importing_the_registry_imports_neither_the_config_nor_the_data():
    code = (
        "import sys, serpent_ssm.train.tasks; "
        "print(sorted(m for m in sys.modules if m.startswith(('serpent_ssm.train.config', "
        "'serpent_ssm.data'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
