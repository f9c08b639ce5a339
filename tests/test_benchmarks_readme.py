"""The tables of benchmarks/README.md are written by the benchmark scripts (``--write-readme``):
``write_readme_section`` replaces exactly one marked block, under a header naming the command, the
commit and the machine, and refuses a README without the block; every block has a script that
writes it and every script's block exists. Nothing here runs a benchmark."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
README = BENCH / "README.md"
BLOCK = re.compile(r"^<!-- bench:(\S+) -->$", re.M)
HEADER = re.compile(
    r"^`python benchmarks/(?P<script>\w+\.py)( [^`]*)?` at commit (?P<commit>[0-9a-f]{7,}|unknown)(\+dirty)? "
    r"on (?P<machine>.+), (?P<date>\d{4}-\d\d-\d\d)\.$"
)


def _common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCH / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _common()

BEFORE = "# Title\r\n\nprose with `<!-- bench:NAME -->` quoted \u00d7\n\n"
AFTER = "\n\nmore prose\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n"
TABLE = "| a | b |\n|---|---|\n| 1 | 2 |"


def _readme(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "README.md"
    path.write_bytes(text.encode())
    return path


def test_writer_replaces_exactly_the_block(tmp_path):
    path = _readme(tmp_path, BEFORE + "<!-- bench:scan -->\nold\n| stale |\n<!-- /bench:scan -->" + AFTER)
    common.write_readme_section(
        "scan", "\n" + TABLE + "\n\n", readme=path, command="python benchmarks/scan.py -x"
    )
    text = path.read_bytes().decode()
    assert text.startswith(BEFORE + "<!-- bench:scan -->\n") and text.endswith("<!-- /bench:scan -->" + AFTER)
    inside = text[len(BEFORE + "<!-- bench:scan -->\n") : -len("<!-- /bench:scan -->" + AFTER)]
    header, blank, *table = inside.split("\n")
    assert blank == "" and "\n".join(table) == TABLE + "\n"
    head = HEADER.match(header)
    assert head and header.startswith("`python benchmarks/scan.py -x` at commit ")
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    assert head["commit"] == (sha.stdout.strip() if sha.returncode == 0 else "unknown")
    assert " cores, " in head["machine"] and " GiB RAM, " in head["machine"]
    assert f"torch {torch.__version__}" in head["machine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary file left


def test_writer_names_the_command_it_was_run_with(tmp_path, monkeypatch):
    path = _readme(tmp_path, "<!-- bench:lm_inference -->\n<!-- /bench:lm_inference -->\n")
    argv = [str(BENCH / "lm_inference.py"), "--prompts", "1024", "8192", "--write-readme"]
    monkeypatch.setattr(sys, "argv", argv)
    common.write_readme_section("lm_inference", TABLE, readme=path)
    header = path.read_text().splitlines()[1]
    assert header.startswith("`python benchmarks/lm_inference.py --prompts 1024 8192 --write-readme` at ")


@pytest.mark.parametrize(
    ("text", "marker", "found"),
    [
        ("no markers at all\n", "<!-- bench:scan -->", 0),
        ("<!-- bench:scanner -->\n<!-- /bench:scanner -->\n", "<!-- bench:scan -->", 0),
        ("<!-- bench:scan -->\na\n<!-- /bench:scan -->\n<!-- bench:scan -->\n", "<!-- bench:scan -->", 2),
        ("<!-- bench:scan -->\na\n", "<!-- /bench:scan -->", 0),
        ("<!-- bench:scan -->\n<!-- /bench:scan -->\n<!-- /bench:scan -->\n", "<!-- /bench:scan -->", 2),
    ],
    ids=["missing", "another name", "duplicate", "no end", "two ends"],
)
def test_writer_refuses_a_readme_without_one_block(tmp_path, text, marker, found):
    path = _readme(tmp_path, text)
    with pytest.raises(ValueError) as err:
        common.write_readme_section("scan", TABLE, readme=path, command="python benchmarks/scan.py")
    assert str(err.value) == f"readme: expected one '{marker}' block, found {found}"
    assert path.read_text() == text


def test_writer_refuses_an_end_before_the_start(tmp_path):
    path = _readme(tmp_path, "<!-- /bench:scan -->\n<!-- bench:scan -->\n")
    with pytest.raises(ValueError, match="comes before"):
        common.write_readme_section("scan", TABLE, readme=path, command="python benchmarks/scan.py")


def _written_sections() -> dict[str, list[re.Pattern]]:
    """Each script's ``write_readme_section`` names as patterns (an f-string's fields match a word),
    for the scripts that take ``--write-readme``."""
    found = {}
    for path in sorted(BENCH.glob("*.py")):
        if path.name == "_common.py":
            continue
        source = path.read_text()
        patterns = []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "write_readme_section":
                name = node.args[0]
                parts = name.values if isinstance(name, ast.JoinedStr) else [name]
                patterns.append(
                    re.compile(
                        "".join(
                            re.escape(p.value) if isinstance(p, ast.Constant) else r"[\w.-]+" for p in parts
                        )
                    )
                )
        assert bool(patterns) == ('"--write-readme"' in source), f"{path.name}: flag and writer go together"
        if patterns:
            found[path.name] = patterns
    return found


def test_every_block_has_its_script_and_every_script_its_block():
    text = README.read_text()
    blocks = BLOCK.findall(text)
    sections = _written_sections()
    assert sorted(sections) == ["lm_inference.py", "scan.py", "train_step.py"]
    bad = []
    for name in blocks:
        writers = [s for s, patterns in sections.items() if any(p.fullmatch(name) for p in patterns)]
        if len(writers) != 1:
            bad.append(f"bench:{name}: written by {writers or 'no script'}")
            continue
        if text.count(f"<!-- bench:{name} -->") != 1 or text.count(f"<!-- /bench:{name} -->") != 1:
            bad.append(f"bench:{name}: not one start and one end marker")
        header = text.split(f"<!-- bench:{name} -->\n", 1)[1].split("\n", 1)[0]
        head = HEADER.match(header)
        if not head or head["script"] != writers[0]:
            bad.append(f"bench:{name}: header {header!r} is not the writer's, naming {writers[0]}")
        if name.startswith("train_step:") and not (ROOT / "configs" / name.split(":", 1)[1]).is_dir():
            bad.append(f"bench:{name}: no such task in configs/")
    for script, patterns in sections.items():
        for pattern in patterns:
            if not any(pattern.fullmatch(name) for name in blocks):
                bad.append(
                    f"{script}: writes {pattern.pattern!r}, which has no block in benchmarks/README.md"
                )
    assert bad == []


def test_header_is_what_the_writer_writes():
    line = common.readme_header("python benchmarks/scan.py", "abc1234+dirty", "CPU, 2 cores", "2026-01-02")
    assert HEADER.match(line)["machine"] == "CPU, 2 cores"
