"""The code's shape, checked: small modules, no import cycles, late imports only where they
keep torch out of a process (each with its reason), one door to Celery."""

import ast
from pathlib import Path

import pytest

GALLERY = Path(__file__).resolve().parent.parent / "gallery"
MAX_LINES = 450


def source_modules() -> dict[str, Path]:
    """gallery's modules by dotted name, migrations aside."""
    modules = {}
    for path in sorted(GALLERY.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(GALLERY.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def resolve(module: str, path: Path, node: ast.ImportFrom, known: set[str]) -> set[str]:
    """The modules an import-from statement runs: each submodule it names, and the module it
    takes other names from."""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1])
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    submodules = {f"{target}.{alias.name}" for alias in node.names} & known
    names_from_target = len(submodules) < len(node.names)
    return submodules | ({target} if names_from_target else set())


def top_level_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """gallery modules imported when `module` is imported (not inside functions or
    TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.update(resolve(module, path, node, known))
            elif isinstance(node, ast.If | ast.Try | ast.With):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return {name for name in found if name in known and name != module}


def late_imports(path: Path) -> list[tuple[int, str]]:
    """(line, text) of imports inside functions."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    late = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    late.append((node.lineno, lines[node.lineno - 1]))
    return late


def test_no_source_module_is_over_450_lines():
    long = {
        name: n
        for name, path in source_modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_there_is_no_import_cycle_at_module_level():
    modules = source_modules()
    known = set(modules)
    graph = {name: top_level_imports(name, path, known) for name, path in modules.items()}
    cycles = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == []


def test_late_imports_are_few_and_say_why():
    """Imports inside functions only keep torch (and the learning code) out of processes that
    do not embed, or wait for Django's app registry; each says so on its line."""
    undocumented = [
        f"{path.relative_to(GALLERY.parent)}:{line}: {text.strip()}"
        for path in source_modules().values()
        for line, text in late_imports(path)
        if "#" not in text
        and not text.rstrip().endswith("(")  # a multi-line import: its reason is on the first line
    ]
    assert undocumented == []


@pytest.mark.parametrize("call", [".delay(", ".apply_async(", ".send_task("])
def test_only_the_dispatcher_queues_tasks(call):
    senders = sorted(
        str(path.relative_to(GALLERY.parent))
        for path in source_modules().values()
        if call in path.read_text()
    )
    assert senders in ([], ["gallery/services/dispatch.py"])
