"""Turn the runs copied under results/runs/ into the markdown tables of results/README.md.

    python results/summarize.py            # prints the tables (main, ablations, scale run)
    python results/summarize.py --write    # puts them into results/README.md between the markers

Every run found is reported; the main table averages the seeds present (mean ± sample std).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from serpent_ssm.train.tasks import task_spec

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
TITLES = {  # the tasks with results, in table order, and the settings their runs used
    "listops": "ListOps (generated, 100–500 tokens)",
    "pathfinder": "Pathfinder-32 (generated, hard)",
    "fashion-mnist": "Sequential Fashion-MNIST (784 pixels)",
    "english": "Byte-level LM, offline English corpus",
}
MODELS = ("mamba", "serpent-mamba", "s4d", "serpent-s4d")
SEEDS = range(3)
LINEAR_K1 = "model.serpent.aggregate=linear model.serpent.window=1"
ABLATIONS = {  # name -> (what differs from the default serpent-mamba, the --set flags)
    "serpent-mamba": (
        "library defaults: aggregate cell, rates (0.5, 0.3, 0.2), ours bounds; the full branch when causal",
        "",
    ),
    "abl-no-full-branch": ("no full branch: the causal default before these ablations", ""),
    "abl-linear-k3": ("aggregate linear (paper's figure), K = 3", "model.serpent.aggregate=linear"),
    "abl-linear-k1": ("aggregate linear, K = 1", LINEAR_K1),
    "abl-linear-k5": ("aggregate linear, K = 5", "model.serpent.aggregate=linear model.serpent.window=5"),
    "abl-kernel-k3": ("aggregate kernel, K = 3", "model.serpent.aggregate=kernel"),
    "abl-rates-0.5": ("rates (0.5,)", "model.serpent.rates=[0.5]"),
    "abl-rates-1-0.5-0.25": ("rates (1.0, 0.5, 0.25)", "model.serpent.rates=[1.0, 0.5, 0.25]"),
    "abl-restore-hold": ("restore hold", "model.serpent.restore=hold"),
    "abl-restore-scatter": ("restore scatter", "model.serpent.restore=scatter"),
    "abl-bounds-paper": ("interval bounds paper (Δ ∈ [κ, 1])", "model.serpent.interval_bounds=paper"),
    "abl-full-branch": ("with the full (κ = 1) branch", "model.serpent.include_full_branch=true"),
    "abl-full-branch-linear-k1": (
        "full branch, aggregate linear, K = 1",
        f"model.serpent.include_full_branch=true {LINEAR_K1}",
    ),
    "abl-gate": ("per-position output gate 2σ(W_g x)", "model.serpent.gate=true"),
    "abl-gate-linear-k1": ("gate, aggregate linear, K = 1", f"model.serpent.gate=true {LINEAR_K1}"),
    "abl-mlp2": ("an MLP (ratio 2) in every block", "model.mlp_ratio=2.0"),
    "abl-s4d-no-full-branch": ("`serpent-s4d` without the full branch", ""),
    "abl-s4d-linear-k1": ("`serpent-s4d` with aggregate linear, K = 1", LINEAR_K1),
    "ref-mamba-d64": ("reference: `mamba` alone at SeRpEnt's width (d_model 64)", "model.d_model=64"),
}


def flags_for(task: str, name: str, flags: str, run: dict) -> str:
    """The ``--set`` flags of an ablation ``run``; the English ones vary the causal configuration
    before the full branch became its default: the width the run had, and no full branch."""
    if task != "english" or not name.startswith("abl-"):
        return flags
    base = f"model.d_model={run['config']['model']['d_model']}"
    if "include_full_branch" not in flags:
        base += " model.serpent.include_full_branch=false"
    return f"{base} {flags}".strip()


def load(task: str, name: str, seed: int) -> dict | None:
    folder = RUNS / task / f"{name}-seed{seed}"
    if not (folder / "summary.json").is_file():
        return None
    summary = json.loads((folder / "summary.json").read_text())
    test = json.loads((folder / "eval_test.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    return {"summary": summary, "test": test, "config": config}


def runs_of(task: str, name: str) -> list[dict]:
    """The runs of ``name`` on ``task`` over the seeds present."""
    return [r for r in (load(task, name, seed) for seed in SEEDS) if r is not None]


def over_seeds(runs: list[dict], key: str, pct: bool) -> tuple[list[float], str, float, float]:
    """Test values, their per-seed text, mean wall seconds and mean training tokens/s."""
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    tests = [r["test"][key] for r in runs]
    per_seed = ", ".join(f"{v * scale:.{digits}f}" for v in tests)
    wall = statistics.mean(r["summary"]["wall_time_s"] for r in runs)
    tok = statistics.mean(r["summary"]["tokens_per_s"] for r in runs)
    return tests, per_seed, wall, tok


def table_facts(task: str) -> tuple[str, str, str, bool]:
    """Title, metric column name, metric key and whether it is shown in percent (accuracy)."""
    key = task_spec(task).metric
    return TITLES[task], f"test {key.replace('_', ' ')}", key, key == "accuracy"


def fmt(values: list[float], pct: bool) -> str:
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    vals = [v * scale for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f} (1 seed)"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def main_table(task: str) -> str:
    title, metric_name, key, pct = table_facts(task)
    lines = [
        f"### {title}",
        "",
        f"| model | params | steps | {metric_name} | best val | per seed (test) | wall s | tokens/s "
        "| peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        runs = runs_of(task, name)
        if not runs:
            lines.append(f"| {name} | not run | | | | | | | |")
            continue
        s0 = runs[0]["summary"]
        tests, per_seed, wall, tok = over_seeds(runs, key, pct)
        vals = [r["summary"]["best_val"] for r in runs]
        mem = max(r["summary"]["peak_memory_mb"] for r in runs)
        lines.append(
            f"| {name} | {s0['parameters']:,} | {s0['steps']} | {fmt(tests, pct)} | {fmt(vals, pct)} | "
            f"{per_seed} | {wall:.0f} | {tok:,.0f} | {mem:,.0f} |"
        )
    return "\n".join(lines)


def ablation_table(task: str) -> str:
    title, metric_name, key, pct = table_facts(task)
    lines = [
        f"### {title}: SeRpEnt ablations (serpent-mamba unless named; seed 0 unless more are shown)",
        "",
        f"| variant | differs from the default | `--set` | params | {metric_name} | best val | wall s "
        "| tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (what, flags) in ABLATIONS.items():
        runs = runs_of(task, name)
        if not runs:
            continue
        flags = flags_for(task, name, flags, runs[0])
        s = runs[0]["summary"]
        scale, digits = (100.0, 1) if pct else (1.0, 3)
        tests, per_seed, wall, tok = over_seeds(runs, key, pct)
        test = per_seed if len(runs) == 1 else f"{fmt(tests, pct)} ({len(runs)} seeds: {per_seed})"
        best_val = statistics.mean(r["summary"]["best_val"] for r in runs)
        lines.append(
            f"| {name} | {what} | {flags and '`' + flags + '`'} | {s['parameters']:,} | {test} | "
            f"{best_val * scale:.{digits}f} | {wall:.0f} | {tok:,.0f} |"
        )
    return "\n".join(lines)


def tables() -> str:
    parts = [main_table(task) for task in TITLES]
    parts += [ablation_table(task) for task in TITLES if any((RUNS / task).glob("abl-*-seed0"))]
    known = {f"{n}-seed{s}" for n in (*MODELS, *ABLATIONS) for s in SEEDS}
    known.add("pathx128-serpent-mamba-seed0")
    unknown = sorted(str(p.relative_to(RUNS)) for p in RUNS.glob("*/*") if p.name not in known)
    if unknown:  # every run is reported: one that no table knows is at least named
        parts.append("Other runs (not in a table): " + ", ".join(unknown) + ".")
    r = load("pathfinder", "pathx128-serpent-mamba", 0)
    if r is not None:
        s, acc = r["summary"], r["test"]["accuracy"]
        parts.append(
            f"Path-X-size run (16,384 pixels): serpent-mamba, {s['parameters']:,} parameters, "
            f"{s['steps']} steps, best val accuracy {100 * s['best_val']:.1f} %, test {100 * acc:.1f} %, "
            f"{s['wall_time_s']:.0f} s, {s['tokens_per_s']:,.0f} tokens/s, "
            f"peak {s['peak_memory_mb']:,.0f} MB."
        )
    return "\n\n".join(parts) + "\n"


def main() -> None:
    text = tables()
    if "--write" not in sys.argv[1:]:
        print(text)
        return
    write_between(
        HERE / "README.md",
        "<!-- tables: python results/summarize.py --write -->",
        "<!-- end of tables -->",
        text,
    )


def write_between(readme: Path, start: str, end: str, text: str) -> None:
    """Replace what ``readme`` holds between the marker lines ``start`` and ``end`` by ``text``."""
    body = readme.read_text()
    head, rest = body.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{start}\n\n{text}\n{end}{tail}")


if __name__ == "__main__":
    main()
