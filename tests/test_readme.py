"""The README and docs/hf.md as a newcomer meets them: every Python block runs as written (in one
namespace per file, in order), every documented command exists, every relative link resolves, and
the README stays short, shows the `make demo` table next to the command and tells no history."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HF_DOC = ROOT / "docs" / "hf.md"
# files whose shell commands and links are checked (the README and the docs it sends a reader to)
COMMAND_DOCS = [README, HF_DOC, ROOT / "docs" / "training.md", ROOT / "benchmarks" / "README.md"]
OPTIONAL = {"transformers", "peft", "lm_eval", "accelerate"}  # not installed by the core or `train`
MAX_README_LINES = 250


def _blocks(path: Path, lang: str) -> list[tuple[int, str]]:
    """The fenced ``lang`` blocks of ``path``: (line of the opening fence, code)."""
    text = path.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)
    ]


def _optional_imports(code: str) -> list[str]:
    """The optional packages a block imports (``serpent_ssm.hf`` needs transformers)."""
    needed = []
    for node in ast.walk(ast.parse(code)):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        for name in names:
            top = "transformers" if name.startswith("serpent_ssm.hf") else name.split(".")[0]
            if top in OPTIONAL and top not in needed:
                needed.append(top)
    return needed


def _run_blocks(path: Path) -> tuple[dict, list[str]]:
    """Run the Python blocks of ``path`` in order in one namespace; a block that imports an optional
    package which is not installed is skipped (``pytest.importorskip``), the others still run."""
    blocks = _blocks(path, "python")
    assert blocks, f"{path.name} has no python examples"
    namespace: dict = {}
    skipped = []
    torch.manual_seed(0)
    for line, code in blocks:
        try:
            for name in _optional_imports(code):
                pytest.importorskip(name)
        except pytest.skip.Exception as exc:
            skipped.append(f"{path.name}:{line}: {exc.msg}")
            continue
        exec(compile(code, f"{path}:{line}", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace, skipped


def test_readme_python_examples_run():
    ns, skipped = _run_blocks(README)
    x = ns["x"]
    assert ns["y"].shape == (2, 64, 32) and ns["z"].shape == (2, 64, 32)
    assert ns["y_rest"].shape == (2, 63, 32)
    with torch.no_grad():  # what the comments promise: step() equals forward()
        torch.testing.assert_close(ns["y_t"], ns["lm_mixer"](x)[:, 0], atol=1e-5, rtol=1e-4)
    assert ns["ids"].shape == (13 + 16,) and ns["logits"].shape == (2, 10)
    assert ns["y_scan"].shape == (2, 32, 64)
    if skipped:
        pytest.skip("; ".join(skipped))
    assert len(ns["text"]) == 2


def test_hf_doc_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)  # the lm-evaluation-harness example names a task folder of the repository
    pytest.importorskip("transformers")
    ns, skipped = _run_blocks(HF_DOC)
    assert ns["beams"].shape[0] == 2 and ns["sampled"].shape[0] == 2
    assert type(ns["ours"]).__name__ == "SerpentForCausalLM"
    if skipped:
        pytest.skip("; ".join(skipped))
    assert type(ns["merged"]).__name__ == "SerpentForCausalLM"
    assert "serpent_choice" in ns["results"]["results"]


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md: {len(lines)} lines, at most {MAX_README_LINES}"


def test_readme_shows_the_demo_table_next_to_the_command():
    from serpent_ssm.train.report import report_table

    lines = README.read_text().splitlines()
    command = next(i for i, line in enumerate(lines) if line.startswith("make demo"))
    header = report_table([]).splitlines()[0]  # the table `make demo` prints starts with this line
    table = next(i for i, line in enumerate(lines) if line == header)
    rows = []
    for line in lines[table + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert 0 < table - command and table + 1 + len(rows) - command <= 20
    assert [r.split(" | ")[1] for r in rows] == ["mamba", "serpent-mamba"]


HISTORY = re.compile(
    r"\bmachine [A-Z]\b|\b20\d\d-\d\d-\d\d\b|\bsessions?\b|\b(earlier|first|old|previous) "
    r"(causal |non-causal )?defaults?\b|\bformat \d+\.\d+|\btoday's\b|\bdefault of then\b",
    re.IGNORECASE,
)


def test_readme_describes_only_what_is():
    hits = [
        f"README.md:{i}: {line}"
        for i, line in enumerate(README.read_text().splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert hits == []


def _commands(path: Path) -> list[tuple[int, list[str]]]:
    """Every command line of the ``bash`` blocks of ``path``, split like a shell (comments dropped,
    ``&&`` chains apart, a line ending in a backslash joined to the next)."""
    found = []
    for start, code in _blocks(path, "bash"):
        for offset, line in enumerate(code.replace("\\\n", " ").splitlines(), 1):
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                found.append((start + offset, words[:cut]))
                words = words[cut + 1 :]
    return found


@pytest.mark.parametrize("path", COMMAND_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_exist(path):
    """``serpent ...`` lines parse with the CLI's own parser (subcommands, options and choices), and
    ``make``, ``python``, ``bash`` and ``torchrun`` lines name targets and files that exist."""
    from serpent_ssm.cli.parser import build_parser

    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    bad = []
    for line, words in _commands(path):
        where = f"{path.name}:{line}: {' '.join(words)}"
        if words[0] == "torchrun":
            words = ["serpent", *words[words.index("serpent_ssm.cli") + 1 :]]
        if words[0] == "serpent":
            try:
                build_parser().parse_args(words[1:])
            except SystemExit:
                bad.append(where)
        elif words[0] == "make":
            bad += [where for target in words[1:] if target not in targets]
        elif words[0] in ("python", "bash"):
            bad += [where] if not (ROOT / words[1]).is_file() else []
        elif words[0] != "pip":
            bad.append(f"{where} (unknown command)")
        bad += [
            f"{where}: {w} missing" for w in words if w.startswith("configs/") and not (ROOT / w).is_file()
        ]
    assert bad == []


@pytest.mark.parametrize("path", COMMAND_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text())
    assert [link for link in links if not (path.parent / link).exists()] == []
