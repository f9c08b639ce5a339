"""Write configs/<task>/<model>.yaml: one run config per task x model, CPU-sized by default with a
``paper`` preset (GPU scale, not run here) beside it. SeRpEnt widths are chosen so that each
serpent-* config has within 10 % of its backbone config's parameters (tests/train/test_configs.py
checks it).

    python configs/generate.py        # rewrites the YAML files
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from serpent_ssm.models import ModelConfig, build_model, count_parameters

HERE = Path(__file__).parent
MODELS = ("mamba", "s4d", "serpent-mamba", "serpent-s4d")

# language modelling on the CPU: 16 windows of 512 bytes; score the first 200,000 bytes of val/test
LM_DATA = {"batch_size": 16, "eval_batch_size": 16, "seq_len": 512, "limit_eval": 200000}

# task -> data section, model inputs (for counting), CPU and paper (d_model, layers, steps)
TASKS = {
    "listops": {
        "data": {
            "task": "listops",
            "batch_size": 32,
            "generate": {
                "n_train": 20000,
                "n_val": 1000,
                "n_test": 1000,
                "min_len": 100,
                "max_len": 500,
                "seed": 0,
            },
        },
        "inputs": {"vocab_size": 18, "n_classes": 10},
        "cpu": (64, 4, 1500),
        "paper": (256, 6, 120000),
        "paper_data": {
            "batch_size": 50,
            "generate": {
                "n_train": 96000,
                "n_val": 2000,
                "n_test": 2000,
                "min_len": 500,
                "max_len": 2000,
                "seed": 0,
            },
        },
    },
    "pathfinder": {
        "data": {
            "task": "pathfinder",
            "size": 32,
            "difficulty": "hard",
            "batch_size": 32,
            "generate": {"n_train": 20000, "n_val": 1000, "n_test": 1000, "seed": 0},
        },
        "inputs": {"d_input": 1, "n_classes": 2},
        "cpu": (64, 4, 1500),
        "paper": (256, 6, 500000),
        "paper_data": {
            "batch_size": 64,
            "generate": {"n_train": 160000, "n_val": 20000, "n_test": 20000, "seed": 0},
        },
    },
    "fashion-mnist": {
        "data": {"task": "fashion-mnist", "batch_size": 32},
        "inputs": {"d_input": 1, "n_classes": 10},
        "cpu": (64, 4, 1500),
        "paper": (512, 6, 100000),
        "paper_data": {"batch_size": 50},
    },
    "imdb": {
        "data": {"task": "imdb", "batch_size": 16, "max_len": 1024},
        "inputs": {"vocab_size": 259, "n_classes": 2},
        "cpu": (64, 4, 1500),
        "paper": (256, 6, 50000),
        "paper_data": {"batch_size": 16, "max_len": 4096},
    },
    "aan": {
        "data": {"task": "aan", "batch_size": 16, "max_len": 1024},
        "inputs": {"vocab_size": 259, "n_classes": 2, "head": "retrieval"},
        "cpu": (64, 4, 1500),
        "paper": (256, 6, 50000),
        "paper_data": {"batch_size": 32, "max_len": 4000},
    },
    "english": {
        "data": {"task": "english", **LM_DATA},
        "inputs": {"vocab_size": 259, "n_classes": 259, "head": "lm", "causal": True},
        "cpu": (128, 4, 2000),
        "paper": (768, 24, 100000),
        "paper_data": {"batch_size": 32, "seq_len": 2048, "limit_eval": None},
    },
    "wikitext103": {
        "data": {"task": "wikitext103", **LM_DATA},
        "inputs": {"vocab_size": 259, "n_classes": 259, "head": "lm", "causal": True},
        "cpu": (128, 4, 2000),
        "paper": (768, 24, 100000),
        "paper_data": {"batch_size": 32, "seq_len": 2048, "limit_eval": None},
    },
    "cifar": {
        "data": {"task": "cifar", "batch_size": 32},
        "inputs": {"d_input": 1, "n_classes": 10},
        "cpu": (64, 4, 1500),
        "paper": (512, 6, 100000),
        "paper_data": {"batch_size": 50},
    },
    # known informative positions (the digits): where SeRpEnt's grid points land is measured by
    # `serpent analyze informative`; sized as the learning-parity benchmark (lr 2e-3)
    "sparse-digits": {
        "data": {
            "task": "sparse-digits",
            "batch_size": 32,
            "generate": {
                "n_train": 20000,
                "n_val": 1000,
                "n_test": 1000,
                "length": 1000,
                "n_digits": 10,
                "seed": 0,
            },
        },
        "inputs": {"vocab_size": 259, "n_classes": 10},
        "cpu": (32, 2, 1500),
        "optim": {"lr": 2.0e-3},
        "paper": (128, 4, 20000),
        "paper_data": {"batch_size": 64},
    },
}
# the optimiser of every CPU config; a task's "optim" overrides some of it
OPTIM = {"lr": 3.0e-3, "weight_decay": 0.05, "ssm_lr": 1.0e-3, "warmup_steps": 100}


def _params(name: str, d_model: int, layers: int, inputs: dict) -> int:
    mlp = 2.0 if name.endswith("s4d") else 0.0
    config = ModelConfig(name=name, d_model=d_model, n_layers=layers, mlp_ratio=mlp, **inputs)
    with torch.device("meta"):  # count without allocating (paper-size models are large)
        return count_parameters(build_model(config))


def matched_width(name: str, d_backbone: int, layers: int, inputs: dict) -> int:
    """The d_model (a multiple of 4) of ``name`` whose parameter count is closest to its backbone's."""
    target = _params(name.removeprefix("serpent-"), d_backbone, layers, inputs)
    lo, hi = 1, d_backbone // 4  # parameters grow with the width: bisect on d = 4k
    while lo < hi:
        mid = (lo + hi) // 2
        if _params(name, 4 * mid, layers, inputs) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = {4 * max(1, lo - 1), 4 * lo}
    return min(candidates, key=lambda d: abs(_params(name, d, layers, inputs) - target))


def main() -> None:
    for task, spec in TASKS.items():
        folder = HERE / task
        folder.mkdir(exist_ok=True)
        for name in MODELS:
            d_cpu, layers_cpu, steps_cpu = spec["cpu"]
            d_paper, layers_paper, steps_paper = spec["paper"]
            if name.startswith("serpent-"):
                d_cpu = matched_width(name, d_cpu, layers_cpu, spec["inputs"])
                d_paper = matched_width(name, d_paper, layers_paper, spec["inputs"])
            model = {
                **({"causal": True} if spec["inputs"].get("head") == "lm" else {}),
                "name": name,
                "d_model": d_cpu,
                "n_layers": layers_cpu,
                "mlp_ratio": 2.0 if name.endswith("s4d") else 0.0,
                "dropout": 0.0,
            }
            config = {
                "model": model,
                "data": spec["data"],
                "optim": {**OPTIM, **spec.get("optim", {})},
                "train": {
                    "max_steps": steps_cpu,
                    "eval_every": 250,
                    "log_every": 25,
                    "checkpoint_every": 250,
                },
                "presets": {
                    "paper": {
                        "model": {"d_model": d_paper, "n_layers": layers_paper, "dropout": 0.1},
                        "data": spec["paper_data"],
                        "optim": {"lr": 1.0e-3, "warmup_steps": 1000},
                        "train": {
                            "max_steps": steps_paper,
                            "eval_every": 2000,
                            "checkpoint_every": 2000,
                            "device": "cuda",
                            "bf16": True,
                        },
                    }
                },
            }
            header = (
                f"# {task} x {name}: CPU-sized by default (2 cores, minutes); `--preset paper` is GPU scale\n"
                "# (not run here). Written by configs/generate.py; serpent-* widths match the backbone's\n"
                "# parameter count within 10 %.\n"
            )
            (folder / f"{name}.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))


if __name__ == "__main__":
    main()
