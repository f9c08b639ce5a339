"""Tables and learning-curve figures of the long-budget runs (results/long/, made by results/long.sh).

    python results/summarize_long.py            # prints the tables
    python results/summarize_long.py --write    # puts them into results/README.md between the
                                                # markers and draws results/long/<task>.png

Every finished run found is reported (stopped runs, whose folders end in ``-stopped``, are in the
run log results/long/README.md). First an overview, one row per task: the backbone and the issue's
three comparisons — matched parameters (``serpent-mamba``, ``serpent-s4d`` against ``s4d-curve``),
same width (``same-width``), equal wall-clock (``equal-time``) — each with its verdict against the
backbone, and the best variant so far. Then every variant (any other run name) against today's
default by the issue's decision rule: it beats the default when the means over three seeds are apart
by more than the larger standard deviation, in its favour. Then one table per task, per run name:
the test metric over the seeds present (mean ± sample standard deviation), per seed, the best
validation value, wall time, training tokens/s, peak memory and the pinned commit the run came from.
The verdict column applies the issue's rule against the run's backbone (``mamba-curve``;
``s4d-curve`` for ``serpent-s4d``): a model beats it when its mean minus its standard deviation
clears the backbone's mean plus its standard deviation (in the metric's better direction), loses in
the mirror case, and ties otherwise, over three seeds; with two, the column says what the rule gives
so far; with one there is no standard deviation and no verdict.

The validation curves are drawn against steps and against seconds: the logged ``elapsed_s``
(training seconds, validation passes included) where a run's log has it, else, for runs from
commits before it was logged, ``s × wall time / steps``, the run's mean pace.
"""

from __future__ import annotations

import functools
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
DEFAULT = "serpent-mamba"  # the SeRpEnt default the variants were judged against (run at d0b0c3c/87ec91a)
TODAY = {  # task -> the run of today's shipped default at matched parameters: the lean shared mixer,
    "listops-short": "lean-d64",  # the non-causal default by the decision rule (format 0.3.0), and
    "fashion-mnist": "lean-d64",  # with the full branch, started as its backbone, the causal
    "sparse-digits": "lean-d32",  # default (format 0.4.0)
    "english": "lean-d128-full",
}
# today's defaults run at their backbone's width (the same-width comparison) and are not cheaper per
# step than it (no equal-wall-clock run applies)
SAME_WIDTH = "= today's default (at the backbone's width)"
EQUAL_TIME = "its curve against seconds (not cheaper per step)"
CAUSAL_TASKS = ("english",)  # the causal mode's tasks: there the rule's "two tasks" reads as all of them
BACKBONE_OF = {"serpent-s4d": "s4d-curve", "s4d-curve": None, BACKBONE: None}  # else: BACKBONE
COMPARISON = {  # run name -> the comparison it belongs to; any other SeRpEnt run is a variant
    DEFAULT: "matched parameters",
    "serpent-s4d": "matched parameters",
    "same-width": "same width",
    "equal-time": "equal wall-clock",
}
TITLES = {  # config task of each long-budget task, and its title
    "listops-short": ("listops", "ListOps, 50–200 tokens, 20,000 training expressions (3,000 steps)"),
    "fashion-mnist": ("fashion-mnist", "Sequential Fashion-MNIST, 784 pixels (1,000 steps)"),
    "english": ("english", "Byte-level English, offline corpus (2,000 steps)"),
    "sparse-digits": ("sparse-digits", "Sparse digits, 1,000 tokens, 10 informative (2,000 steps)"),
}
WHAT = {  # run name -> what it is (the flags are in each run's config.json)
    "mamba-curve": "backbone, the task's config",
    "serpent-mamba": "SeRpEnt's first default (the run's commit), width matched to the backbone's "
    "parameters: three backbones and a dense merge at half the backbone's width (with the full branch "
    "when causal), the default of both modes before the lean shared mixer",
    "shared-d56": "`share_backbone=true`, d_model 56",
    "shared-d52-backbone-init": "`share_backbone=true`, full branch, `init=backbone`, d_model 52",
    "shared-d56-backbone-intervals": "`share_backbone=true`, `interval_source=backbone`, d_model 56",
    "mean-intervals": "`interval_bounds=mean` (the causal-collapse remedy)",
    "lean-d64": "lean shared: `share_backbone`, `mix=gates`, `cell_proj=false`, d_model 64 (the backbone's; "
    "today's non-causal default)",
    "lean-d32": "lean shared: `share_backbone`, `mix=gates`, `cell_proj=false`, d_model 32 (the backbone's; "
    "today's non-causal default)",
    "lean-d128-full": "lean shared with the full branch, `init=backbone`, d_model 128 (the backbone's; "
    "today's causal default)",
    "same-width": "SeRpEnt at today's defaults, at the backbone's d_model (more parameters)",
    "equal-time": "SeRpEnt at today's defaults, trained for the backbone's wall time (more steps)",
    "lean-d128-mean": "`lean-d128-full` with `interval_bounds=mean` (the causal-collapse remedy on the "
    "variant that starts as its backbone)",
    "lean-d128-bi": "`lean-d128-full` with `interval_source=backbone` (the intervals from the shared "
    "backbone's Δ)",
    "backbone-intervals": "today's default with `interval_source=backbone` (the intervals from the "
    "backbone's own selective Δ, no score network)",
    "middle-layers": "today's default with `serpent.layers=[1, 2]` (SeRpEnt in the middle two layers, "
    "Mamba at both ends)",
    "s4d-curve": "S4D backbone, the task's config",
    "serpent-s4d": "SeRpEnt over S4D at today's defaults, matched parameters",
}


ON_TODAY = {  # variants of today's default (TODAY), judged against it rather than against DEFAULT
    "backbone-intervals",
    "middle-layers",
}
BUILT_ON = {  # variants of another variant, judged against it (queued before it became the causal default)
    "lean-d128-mean": "lean-d128-full",
    "lean-d128-bi": "lean-d128-full",
}
FAMILY = {  # run names that are one variant at each task's backbone width (the rule counts tasks per family)
    "lean-d64": "lean shared (non-causal)",
    "lean-d32": "lean shared (non-causal)",
}


EARLIER = "the machine of every run before 2026-12-02 10:50 UTC (2 cores; its processor was not recorded)"
SHARED_CPU = "shared_cpu.txt"  # in a run folder: the run shared the CPU (why); see finished_runs


def machine_of(folder: Path, summary: dict) -> str:
    """The machine a run ran on, in words: from its ``summary.json`` (commits after 22d453b) or the
    ``machine.json`` that results/long.sh writes beside it, else ``EARLIER``."""
    m = summary.get("machine")
    if m is None and (folder / "machine.json").is_file():
        m = json.loads((folder / "machine.json").read_text())
    if m is None:
        return EARLIER
    return f"{m['cpu']}, {'/'.join(m['simd']) or 'no AVX'}, {m['cores']} cores, torch {m['torch']}"


@functools.lru_cache(maxsize=1)
def machine_labels() -> dict[str, str]:
    """Machine -> its letter in the tables (A: ``EARLIER``, then the others by name)."""
    seen = {
        r["machine"]
        for task in TITLES
        if (LONG / task).is_dir()
        for rs in finished_runs(task).values()
        for r in rs
    }
    ordered = sorted(seen - {EARLIER})
    return {m: chr(ord("A") + i) for i, m in enumerate([EARLIER, *ordered])}


def by_machine(rs: list[dict]) -> dict[str, list[dict]]:
    """The timed runs (see ``finished_runs``) grouped by machine, in the order of ``machine_labels``."""
    order = machine_labels()
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rs:
        if r["timed"]:
            groups[r["machine"]].append(r)
    return dict(sorted(groups.items(), key=lambda kv: order[kv[0]]))


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
        run["machine"] = machine_of(folder, run["summary"])
        # a run that shared the CPU (its folder holds shared_cpu.txt, why) keeps its scores; its
        # seconds and tokens/s say nothing of its model's speed and stay out of those columns
        run["timed"] = not (folder / SHARED_CPU).is_file()
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


def against_default(mine: list[float], default: list[float], higher_is_better: bool) -> str:
    """The issue's decision rule for a variant: it beats the default when the means are apart by
    more than the larger standard deviation, in its favour (behind: the mirror case; else level),
    over three seeds each."""
    seeds = min(len(mine), len(default))
    if seeds < 3:
        return f"no verdict ({seeds} seed{'s' * (seeds != 1)})"
    sign = 1.0 if higher_is_better else -1.0
    gap = sign * (statistics.mean(mine) - statistics.mean(default))
    spread = max(statistics.stdev(mine), statistics.stdev(default))
    return "beats the default" if gap > spread else "behind the default" if gap < -spread else "level"


def is_variant(name: str) -> bool:
    """A SeRpEnt-over-Mamba run that is none of the issue's three comparisons."""
    return name != BACKBONE and name not in COMPARISON and BACKBONE_OF.get(name, BACKBONE) == BACKBONE


def _metric(task: str) -> tuple[str, bool]:
    key = task_spec(TITLES[task][0]).metric
    return key, key == "accuracy"


def _cell(runs: dict[str, list[dict]], name: str, key: str, pct: bool, judge: bool = True) -> str:
    if name not in runs:
        return "not run yet"
    tests = [r["test"][key] for r in runs[name]]
    text = fmt(tests, pct).replace(" (1 seed)", "")
    text += f" ({len(tests)} seed{'s' * (len(tests) > 1)})"
    backbone = BACKBONE_OF.get(name, BACKBONE)
    if judge and backbone in runs:
        ruled = verdict(tests, [r["test"][key] for r in runs[backbone]], key == "accuracy")
        text += f": **{ruled}**" if ruled in ("beats", "loses", "tie") else ""
    if name == "equal-time":
        text += f", {runs[name][0]['summary']['steps']:,} steps"
    return text


def overview() -> str:
    """One row per task: the backbone, and each of the issue's three comparisons with its verdict
    against the backbone (over three seeds; none with fewer), and the best variant so far."""
    lines = [
        "### The comparisons at a glance (test metric, mean ± sd over seeds; verdict against the backbone)",
        "",
        "| task | metric | Mamba | today's default, matched parameters | earlier default | same width "
        "| equal wall-clock | best other variant (seeds) | S4D | SeRpEnt-S4D |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in TITLES:
        runs = finished_runs(task) if (LONG / task).is_dir() else {}
        if not runs:
            continue
        key, higher = _metric(task)
        today = TODAY[task]
        variants = [n for n in runs if is_variant(n) and n != today]
        sign = 1.0 if higher else -1.0
        best = max(
            variants, key=lambda n: sign * statistics.mean(r["test"][key] for r in runs[n]), default=None
        )
        lines.append(
            f"| {task} | {'accuracy %' if higher else key.replace('_', ' ')} | "
            f"{_cell(runs, BACKBONE, key, higher, False)} | {_cell(runs, today, key, higher)} | "
            f"{_cell(runs, DEFAULT, key, higher)} | {SAME_WIDTH} | {EQUAL_TIME} | "
            f"{f'`{best}` ' + _cell(runs, best, key, higher) if best else 'none'} | "
            f"{_cell(runs, 's4d-curve', key, higher, False)} | {_cell(runs, 'serpent-s4d', key, higher)} |"
        )
    return "\n".join(lines)


def judged_against(name: str, task: str) -> str:
    """The default a variant is judged against on ``task``: today's (``TODAY``) for the variants built
    on it (``ON_TODAY``), the variant it builds on (``BUILT_ON``), else the one the first variants
    were run against (``DEFAULT``)."""
    if name in BUILT_ON:
        return BUILT_ON[name]
    return TODAY.get(task, DEFAULT) if name in ON_TODAY else DEFAULT


def variants_table() -> str:
    """Every variant against the default it was judged against (``judged_against``) on each task it
    ran, by the issue's decision rule (a variant becomes the default of its mode when it beats it on
    two tasks)."""
    lines = [
        "### Variants against the default they were judged against, `serpent-mamba`, today's, or the "
        "variant they build on (decision rule: means apart by more than the larger sd, 3 seeds)",
        "",
        "| variant | what | task | variant's test | default's test | against the default | "
        "against the backbone |",
        "|---|---|---|---|---|---|---|",
    ]
    wins: dict[str, list[tuple[str, str]]] = {}  # variant family -> [(task, ruling against the default)]
    for task in TITLES:
        runs = finished_runs(task) if (LONG / task).is_dir() else {}
        key, higher = _metric(task)
        for name in sorted(runs):
            if not is_variant(name):
                continue
            mine = [r["test"][key] for r in runs[name]]
            ref = judged_against(name, task)
            default = [r["test"][key] for r in runs.get(ref, [])]
            base = [r["test"][key] for r in runs.get(BACKBONE, [])]
            lines.append(
                f"| `{name}` | {WHAT.get(name, 'see its config.json')} | {task} | "
                f"{_cell(runs, name, key, higher, False)} | "
                f"`{ref}` {_cell(runs, ref, key, higher, False)} | "
                f"{against_default(mine, default, higher) if default else 'no default run'} | "
                f"{verdict(mine, base, higher) if base else 'no backbone run'} |"
            )
            ruled = against_default(mine, default, higher) if default else ""
            wins.setdefault(FAMILY.get(name, f"`{name}`"), []).append((task, ruled))
    lines.append("")
    for family, results in wins.items():
        beaten = [task for task, ruled in results if ruled == "beats the default"]
        decided = sum(not ruled.startswith("no ") and ruled != "" for _, ruled in results)
        causal = all(task in CAUSAL_TASKS for task, _ in results)
        needed = min(2, len(CAUSAL_TASKS) if causal else len(TITLES) - len(CAUSAL_TASKS))
        status = "**the new default of its mode**" if len(beaten) >= needed else "not a new default"
        lines.append(
            f"- {family}: beats the default on {len(beaten)} task{'s' * (len(beaten) != 1)}"
            f"{' (' + ', '.join(beaten) + ')' if beaten else ''} of {decided} decided "
            f"(ran on {len(results)}); {status}"
        )
    return "\n".join(lines)


def table(task: str) -> str:
    title = TITLES[task][1]
    key, higher = _metric(task)
    pct = higher
    runs = finished_runs(task)
    base_params = runs[BACKBONE][0]["summary"]["parameters"] if BACKBONE in runs else None
    lines = [
        f"### {title}",
        "",
        f"| run | what | params (× backbone) | test {key.replace('_', ' ')} | per seed | best val | "
        "verdict vs backbone | wall s (machine) | tokens/s (machine) | peak MB | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    labels = machine_labels()
    for name, rs in sorted(runs.items(), key=lambda kv: (kv[0] != BACKBONE, kv[0])):
        s0 = rs[0]["summary"]
        tests = [r["test"][key] for r in rs]
        ratio = f" ({s0['parameters'] / base_params:.2f}×)" if base_params else ""
        per_seed = ", ".join(f"s{r['seed']}: {r['test'][key] * scale:.{digits}f}" for r in rs)
        vals = [r["summary"]["best_val"] for r in rs]
        groups = list(by_machine(rs).items())  # tokens/s and seconds compare only on one machine
        untimed = ", ".join(f"s{r['seed']}" for r in rs if not r["timed"])
        wall, tok = (
            "; ".join(
                [f"{statistics.mean(r['summary'][k] for r in g):,.0f} ({labels[m]})" for m, g in groups]
                + ([f"not {untimed} (shared the CPU)"] if untimed else [])
            )
            for k in ("wall_time_s", "tokens_per_s")
        )
        mem = max(r["summary"]["peak_memory_mb"] for r in rs)
        commits = sorted({str(r["config"].get("code_commit", "?"))[:7] for r in rs})
        own = BACKBONE_OF.get(name, BACKBONE)
        if own is None:
            judged = "—"
        else:
            base = [r["test"][key] for r in runs.get(own, [])]
            judged = verdict(tests, base, higher) if base else "no backbone run"
        lines.append(
            f"| {name} | {WHAT.get(name, 'see its config.json')} | {s0['parameters']:,}{ratio} | "
            f"{fmt(tests, pct)} | {per_seed} | {fmt(vals, pct)} | {judged} | {wall} | {tok} | "
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
    """``results/long/<task>.png``: validation metric against steps (the mean over seeds and the band
    between the lowest and highest seed) and against seconds (the mean over the seeds run on one
    machine, the first in ``machine_labels``' order), one colour per run name."""
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
        label = f"{name} ({len(rs)} seed{'s' * (len(rs) > 1)})"
        (line,) = axes[0].plot(steps, mean, marker="o", ms=3, label=label)
        if len(rs) > 1:
            axes[0].fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
        # seconds only compare on one machine: the seeds run on the first (A before the others)
        groups = by_machine(rs)
        if not groups:  # no timed run
            continue
        machine, same = next(iter(groups.items()))
        on_it = {id(r) for r in same}  # the runs themselves: dict equality would compare every field
        timed_values = [v for r, v in zip(rs, values, strict=True) if id(r) in on_it]
        mean_curve = [statistics.mean(c) for c in zip(*timed_values, strict=True)]
        tag = "" if len(same) == len(rs) else f", the {len(same)} on machine {machine_labels()[machine]}"
        axes[1].plot(
            seconds(same, steps), mean_curve, marker="o", ms=3,
            color=line.get_color(), label=f"{name}{tag}",
        )  # fmt: skip
    for ax, xlabel in zip(axes, ("training step", "training seconds"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation {key.replace('_', ' ')}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if any(len(by_machine(rs)) > 1 for rs in runs.values()):
        axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = LONG / f"{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machines_legend() -> str:
    """The machines of the tables' letters. Wall time and tokens/s are means over the seeds run on
    one machine: the same code ran at very different speeds on different machines."""
    names = "; ".join(f"**{k}** = {m}" for m, k in machine_labels().items())
    return (
        "Machines (wall s and tokens/s are means over the seeds run on one machine, without the runs "
        f"that shared the CPU; compare them only within one machine): {names}."
    )


def tables() -> str:
    per_task = [table(task) for task in TITLES if (LONG / task).is_dir() and finished_runs(task)]
    return "\n\n".join([overview(), variants_table(), *per_task, machines_legend()]) + "\n"


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
