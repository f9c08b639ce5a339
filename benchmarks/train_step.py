"""Training-step time of a task's models, measured side by side: the per-step cost ratio that an
equal-wall-clock comparison needs (this machine's speed drifts by tens of percent between runs, so
the ratio of two runs' logged tokens/s is not a measurement of it).

    python benchmarks/train_step.py fashion-mnist                     # mamba and serpent-mamba
    python benchmarks/train_step.py english mamba serpent-mamba \\
        "first=serpent-mamba:model.serpent.share_backbone=false,model.serpent.mix=dense,model.serpent.cell_proj=true,model.serpent.init=identity,model.d_model=56"
    python benchmarks/train_step.py listops --write-readme  # and replace its table in benchmarks/README.md

Each model is ``configs/<task>/<model>.yaml`` (``NAME=MODEL:key=value,...`` adds ``--set``
overrides and a name). One step = what ``serpent train`` does: forward, cross-entropy, backward,
gradient clipping, AdamW update, on the task's real training batches (the same batch for every
model within a repeat). The models take turns within each repeat, so a change in the machine's
speed reaches all of them alike; the table gives each one's best step over the repeats, its ratio
to the first model's, and the step budget that takes the first model's time at the task's budget
(``--budget``, default the config's ``train.max_steps``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _common import best_time, markdown_head, markdown_row, write_readme_section


def _split_top_level(sets: str) -> list[str]:
    """Split ``k=v,k=[1, 2],k=v`` at the commas outside YAML brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(sets):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            parts.append(sets[start:i])
            start = i + 1
    parts.append(sets[start:])
    return [s for s in parts if s]


def _spec(text: str) -> tuple[str, str, list[str]]:
    """``NAME=MODEL:k=v,k=v`` | ``MODEL:k=v`` | ``MODEL`` -> (name, model, overrides); a value
    may be a YAML list or mapping (``model.serpent.layers=[1, 2]``)."""
    head, _, sets = text.partition(":")
    name, _, model = head.rpartition("=")
    return name or head, model, _split_top_level(sets)


def _load(task: str, model: str, overrides: list[str]):
    from serpent_ssm.models import count_parameters
    from serpent_ssm.train.config import load_run_config
    from serpent_ssm.train.loop import initial_model, make_optimizer

    cfg = load_run_config(f"configs/{task}/{model}.yaml", overrides=overrides)
    net = initial_model(cfg)
    return cfg, net, make_optimizer(net, cfg), count_parameters(net)


def _step(cfg, net, opt, batch, is_lm: bool) -> None:
    from serpent_ssm.train.batches import _forward  # the trainer's own call (pairs of inputs included)

    logits = net(batch["inputs"]) if is_lm else _forward(net, batch)
    loss = F.cross_entropy(logits.flatten(0, -2).float(), batch["labels"].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", help="a folder of configs/ (fashion-mnist, listops, english, ...)")
    parser.add_argument("models", nargs="*", default=["mamba", "serpent-mamba"])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model (default 5)")
    parser.add_argument("--budget", type=int, default=None, help="the first model's step budget")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every model (e.g. data.data_dir=...)")  # fmt: skip
    parser.add_argument("--write-readme", action="store_true",
                        help="write the table into benchmarks/README.md (bench:train_step:TASK)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from serpent_ssm.data.collate import lm_collate, pad_collate
    from serpent_ssm.train.batches import batch_indices
    from serpent_ssm.train.tasks import load_task

    specs = [_spec(m) for m in args.models]
    loaded = [(name, *_load(args.task, model, [*args.set, *sets])) for name, model, sets in specs]
    cfg0 = loaded[0][1]
    data = load_task(cfg0.data)
    is_lm = data.spec.is_lm
    indices = batch_indices(len(data.train), cfg0.data.batch_size, 0, 0)
    collate = lm_collate if is_lm else pad_collate
    times: dict[str, list[float]] = {name: [] for name, *_ in loaded}
    tokens = []
    for _ in range(args.repeats + 1):  # the first round warms up
        batch = collate([data.train[i] for i in next(indices)])
        tokens.append(batch["labels"].numel() if is_lm else int(batch["mask"].sum()))
        for name, cfg, net, opt, _ in loaded:
            times[name].append(best_time(lambda: _step(cfg, net, opt, batch, is_lm), 1))  # noqa: B023
    budget = args.budget or cfg0.train.max_steps
    first = min(times[loaded[0][0]][1:])
    lines = [
        f"{args.task}: one training step, best of {args.repeats} (models interleaved), "
        f"{args.threads} threads, batch {cfg0.data.batch_size}, {sum(tokens[1:]) / args.repeats:.0f} "
        "tokens a batch on average; "
        f"{time.strftime('%Y-%m-%d %H:%M')}\n",
        markdown_head(
            ["model", "parameters", "ms/step", f"× {loaded[0][0]}"]
            + [f"steps in {loaded[0][0]}'s time for {budget}"]
        ),
    ]
    for name, _, _, _, n_params in loaded:
        best = min(times[name][1:])
        steps = round(budget * first / best)
        lines.append(
            markdown_row([name, f"{n_params:,}", f"{best * 1e3:.0f}", f"{best / first:.2f}", f"{steps:,}"])
        )
    markdown = "\n".join(lines)
    print(markdown)
    if args.write_readme:
        write_readme_section(f"train_step:{args.task}", markdown)


if __name__ == "__main__":
    main()
