"""The shape of the code (docs/architecture.md, "Layers"): imports point one way, functions stay short,
and the docs stand alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "serpent_ssm"
MAX_FUNCTION_LINES = 80
# what each layer may import from the package (besides itself)
LAYERS = {
    "utils": set(),
    "ops": {"utils"},
    "modules": {"ops", "utils"},
    "data": {"utils"},
    "models": {"modules", "ops", "utils"},
    "train": {"models", "modules", "ops", "data", "utils"},
    "analysis": {"train", "models", "modules", "ops", "data", "utils"},
    "hf": {"models", "modules", "ops", "data", "utils"},  # transformers classes over the models
    "cli": {"analysis", "hf", "train", "models", "modules", "ops", "data", "utils"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The package module ``name`` refers to (a module, or the package of an imported name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every serpent_ssm module that ``module`` imports, function-local imports included
    (``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("serpent_ssm"):
                target = _resolve(name)
                if target and target != module:
                    found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_counting_function_local_imports():
    package_inits = {m for m in MODULES if MODULES[m].name == "__init__.py"}
    # a package's __init__ re-exports its modules; importing it from inside the package is a cycle
    cycles = [c for c in _cycles() if not set(c) <= package_inits]
    assert cycles == []


def test_layers_import_only_the_layers_below():
    bad = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        if layer not in LAYERS:
            continue
        for target in targets:
            other = _layer(target)
            if other is not None and other != layer and other not in LAYERS[layer]:
                bad.append(f"{module} -> {target}")
    assert bad == []


def _long_functions() -> list[str]:
    found = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                before = lines[node.lineno - 2] if node.lineno > 1 else ""
                if length > MAX_FUNCTION_LINES and "long function:" not in before:
                    found.append(f"{module}.{node.name}: {length} lines")
    return found


def test_functions_are_short_or_say_why():
    """A function over 80 lines needs a ``# long function: <why>`` comment on the line above it."""
    assert _long_functions() == []


STANDALONE_PATHS = ["src", "docs", "README.md", "benchmarks", "configs"]
OUTSIDE_FILES = re.compile(r"\b(SPEC|DATA|DEVELOPERS|CONTEXT)\.md")  # case matters: docs/data.md is ours
UNFINISHED = re.compile(r"\bissue #?\d+|in progress|more to come|as they land", re.IGNORECASE)


@pytest.mark.parametrize("top", STANDALONE_PATHS)
def test_docs_stand_alone(top):
    """No reference to files outside the repository, to issue numbers, or to unfinished work."""
    root = ROOT / top
    files = (
        [root]
        if root.is_file()
        else [p for p in root.rglob("*") if p.suffix in {".py", ".md", ".yaml", ".cpp"}]
    )
    hits = []
    for path in files:
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE_FILES.search(line) or UNFINISHED.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


MAX_FILE_LINES = 500


def test_source_files_are_short_or_say_why():
    """A file in ``src/`` over 500 lines needs a ``# long file: <why>`` comment in its first 40 lines."""
    found = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_FILE_LINES and not any("# long file:" in line for line in lines[:40]):
            found.append(f"{module}: {len(lines)} lines")
    assert found == []


def _registered_names() -> set[str]:
    """The attribute names under which our modules register submodules, parameters and buffers
    (``in_proj``, ``A_log``, ``weight``, ...), read from built mixers of every kind."""
    from serpent_ssm.models.mixers import make_mixer_factory

    names = set()
    for name in ["mamba", "s4d", "serpent-mamba", "serpent-s4d"]:
        for causal in (True, False):
            for module in make_mixer_factory(name, 8, causal=causal)(0).modules():
                children = (module.named_children(), module.named_parameters(recurse=False))
                names |= {n for group in children for n, _ in group if not n.isdigit()}
                names |= {n for n, _ in module.named_buffers(recurse=False)}
    return names


def _ops_fields() -> dict[str, set[str]]:
    """Per class defined in ``ops/``, the fields it declares (annotations and ``self.x =``)."""
    fields: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        if not module.startswith("serpent_ssm.ops"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                own = fields.setdefault(node.name, set())
                for sub in ast.walk(node):
                    if isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                        own.add(sub.target.id)
                    if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                        own.add(sub.attr)
    return fields


def test_ops_read_no_module_attributes():
    """``ops/`` takes tensors and its own weight records, never a module: no attribute that our
    modules register (``in_proj``, ``conv1d``, ``A_log``, ``weight``, ...) is read there unless an
    ``ops`` class declares it as its own field (``MambaStepWeights.in_proj``), and the names that
    torch's layers also register (``weight``, ``bias``) only on ``self``; no ``nn.Module`` in
    ``ops``."""
    registered, own = _registered_names(), set().union(*_ops_fields().values())
    torch_layer_names = {"weight", "bias"}
    found = []
    for module, path in MODULES.items():
        if not module.startswith("serpent_ssm.ops"):
            continue
        source = path.read_text()
        if re.search(r"\bnn\.Module\b|from torch import nn\b", source):
            found.append(f"{module}: names nn.Module")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Attribute) or node.attr not in registered:
                continue
            on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            if node.attr not in own or (node.attr in torch_layer_names and not on_self):
                found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
