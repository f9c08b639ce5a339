"""Tables and learning-curve figures of the long-budget runs (results/long/, made by results/long.sh).

    python results/summarize_long.py            # prints the tables
    python results/summarize_long.py --write    # puts them into results/README.md between the
                                                # markers and draws results/long/<task>.png

Every finished run found is reported (stopped runs, whose folders end in ``-stopped``, are in the
run log results/long/README.md). Per task and run name: the test metric over the seeds present
(mean ± sample standard deviation), per seed, the best validation value, wall time, training
tokens/s, peak memory and the pinned commit the run came from. The verdict column applies the
issue's rule against the task's backbone run (``mamba-curve``): a model beats it when its mean
minus its standard deviation clears the backbone's mean plus its standard deviation (in the
metric's better direction), loses in the mirror case, and ties otherwise, over three seeds; with
two, the column says what the rule gives so far; with one there is no standard deviation and no
verdict.

The validation curves are drawn against steps and against seconds: the logged ``elapsed_s``
(training seconds, validation passes included) where a run's log has it, else, for runs from
commits before it was logged, ``s × wall time / steps``, the run's mean pace.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from summarize import fmt, write_between

from serpent_ssm.train.tasks import task_spec

HERE = Path(__file__).resolve().parent
LONG = HERE / "long"
BACKBONE = "mamba-curve"
TITLES = {  # config task of each long-budget task, and its title
    "listops-short": ("listops", "ListOps, 50–200 tokens, 20,000 training expressions (3,000 steps)"),
    "fashion-mnist": ("fashion-mnist", "Sequential Fashion-MNIST, 784 pixels (1,000 steps)"),
    "english": ("english", "Byte-level English, offline corpus (2,000 steps)"),
    "sparse-digits": ("sparse-digits", "Sparse digits, 1,000 tokens, 10 informative (2,000 steps)"),
}
WHAT = {  # run name -> what it is (the flags are in each run's config.json)
    "mamba-curve": "backbone, the task's config",
    "serpent-mamba": "SeRpEnt at today's defaults, width matched to the backbone's parameters",
    "shared-d56": "`share_backbone=true`, d_model 56",
    "shared-d52-backbone-init": "`share_backbone=true`, full branch, `init=backbone`, d_model 52",
    "shared-d56-backbone-intervals": "`share_backbone=true`, `interval_source=backbone`, d_model 56",
    "mean-intervals": "`interval_bounds=mean` (the causal-collapse remedy)",
    "lean-d64": "lean shared: `share_backbone`, `mix=gates`, `cell_proj=false`, d_model 64 (the backbone's)",
    "lean-d32": "lean shared: `share_backbone`, `mix=gates`, `cell_proj=false`, d_model 32 (the backbone's)",
    "lean-d128-full": "lean shared with the full branch, `init=backbone`, d_model 128 (the backbone's)",
}


def finished_runs(task: str) -> dict[str, list[dict]]:
    """``name -> [run, ...]`` (one per seed, in seed order) of the finished runs of ``task``."""
    found: dict[str, list[dict]] = defaultdict(list)
    for folder in sorted((LONG / task).glob("*-seed*")):
        if not (folder / "eval_test.json").is_file():
            continue
        name, seed = folder.name.rsplit("-seed", 1)
        run = {k: json.loads((folder / f"{k}.json").read_text()) for k in ("summary", "config")}
        run["test"] = json.loads((folder / "eval_test.json").read_text())
        run["seed"] = int(seed)
        run["curve"] = [
            json.loads(line)
            for line in (folder / "metrics.jsonl").read_text().splitlines()
            if '"split": "val"' in line
        ]
        found[name].append(run)
    return {n: sorted(rs, key=lambda r: r["seed"]) for n, rs in found.items()}


def _rule(mine: list[float], base: list[float], higher_is_better: bool) -> str:
    sign = 1.0 if higher_is_better else -1.0
    lo = sign * statistics.mean(mine) - statistics.stdev(mine)
    hi = sign * statistics.mean(mine) + statistics.stdev(mine)
    base_lo = sign * statistics.mean(base) - statistics.stdev(base)
    base_hi = sign * statistics.mean(base) + statistics.stdev(base)
    return "beats" if lo > base_hi else "loses" if hi < base_lo else "tie"


def verdict(mine: list[float], base: list[float], higher_is_better: bool) -> str:
    """The rule over three seeds or more; with two on both sides, what it says so far."""
    seeds = min(len(mine), len(base))
    if seeds < 2:
        return "no verdict (1 seed)"
    if seeds < 3:
        return f"no verdict (2 seeds; so far: {_rule(mine, base, higher_is_better)})"
    return _rule(mine, base, higher_is_better)


def table(task: str) -> str:
    config_task, title = TITLES[task]
    key = task_spec(config_task).metric
    pct, higher = key == "accuracy", key == "accuracy"
    runs = finished_runs(task)
    base = [r["test"][key] for r in runs.get(BACKBONE, [])]
    base_params = runs[BACKBONE][0]["summary"]["parameters"] if BACKBONE in runs else None
    lines = [
        f"### {title}",
        "",
        f"| run | what | params (× backbone) | test {key.replace('_', ' ')} | per seed | best val | "
        "verdict vs backbone | wall s | tokens/s | peak MB | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    for name, rs in sorted(runs.items(), key=lambda kv: (kv[0] != BACKBONE, kv[0])):
        s0 = rs[0]["summary"]
        tests = [r["test"][key] for r in rs]
        ratio = f" ({s0['parameters'] / base_params:.2f}×)" if base_params else ""
        per_seed = ", ".join(f"s{r['seed']}: {r['test'][key] * scale:.{digits}f}" for r in rs)
        vals = [r["summary"]["best_val"] for r in rs]
        wall = statistics.mean(r["summary"]["wall_time_s"] for r in rs)
        tok = statistics.mean(r["summary"]["tokens_per_s"] for r in rs)
        mem = max(r["summary"]["peak_memory_mb"] for r in rs)
        commits = sorted({str(r["config"].get("code_commit", "?"))[:7] for r in rs})
        judged = "—" if name == BACKBONE else verdict(tests, base, higher)
        lines.append(
            f"| {name} | {WHAT.get(name, 'see its config.json')} | {s0['parameters']:,}{ratio} | "
            f"{fmt(tests, pct)} | {per_seed} | {fmt(vals, pct)} | {judged} | {wall:.0f} | {tok:,.0f} | "
            f"{mem:,.0f} | {', '.join(commits)} |"
        )
    return "\n".join(lines)


def seconds(rs: list[dict], steps: list[int]) -> list[float]:
    """Training seconds at the validation steps, the mean over the seeds: the logged ``elapsed_s``
    where the runs have it, else ``step × wall time / steps`` (the run's mean pace)."""
    per_run = []
    for r in rs:
        if all("elapsed_s" in p for p in r["curve"]):
            per_run.append([p["elapsed_s"] for p in r["curve"]])
        else:
            pace = r["summary"]["wall_time_s"] / r["summary"]["steps"]
            per_run.append([s * pace for s in steps])
    return [statistics.mean(col) for col in zip(*per_run, strict=True)]


def plot(task: str) -> Path | None:
    """``results/long/<task>.png``: validation metric against steps and against seconds, the mean
    over seeds and the band between the lowest and highest seed, one colour per run name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config_task, title = TITLES[task]
    key = task_spec(config_task).metric
    runs = finished_runs(task)
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, rs in sorted(runs.items()):
        steps = [p["step"] for p in rs[0]["curve"]]
        values = [[p[key] for p in r["curve"]] for r in rs]
        if any(len(v) != len(steps) for v in values):
            continue
        cols = list(zip(*values, strict=True))
        mean, lo, hi = [statistics.mean(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]
        for ax, xs in ((axes[0], steps), (axes[1], seconds(rs, steps))):
            label = f"{name} ({len(rs)} seed{'s' * (len(rs) > 1)})"
            (line,) = ax.plot(xs, mean, marker="o", ms=3, label=label)
            if len(rs) > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
    for ax, xlabel in zip(axes, ("training step", "training seconds"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation {key.replace('_', ' ')}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = LONG / f"{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tables() -> str:
    return (
        "\n\n".join(table(task) for task in TITLES if (LONG / task).is_dir() and finished_runs(task)) + "\n"
    )


def main() -> None:
    text = tables()
    if "--write" not in sys.argv[1:]:
        print(text)
        return
    for task in TITLES:
        if (LONG / task).is_dir():
            plot(task)
    start = "<!-- long tables: python results/summarize_long.py --write -->"
    write_between(HERE / "README.md", start, "<!-- end of long tables -->", text)


if __name__ == "__main__":
    main()
