"""The layers of backend/ and the one direction their imports may point (issue #16).

Bottom to top: log -> base -> errors -> resilience -> services -> jobs -> monitoring -> the HTTP edge ->
blueprints -> the factory. A module may import its own layer or the ones below it; an import that points up
is a defect unless it is listed in KNOWN_UPWARD below, a list that only ever shrinks. Imports made only for
type checking (`if TYPE_CHECKING:`) are not arrows at run time and are not counted.
Inside the log layer the same holds for its modules in `LOG_ORDER`, and nothing there imports `backend.app`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BACKEND = ROOT / "backend"

LAYERS = ("log", "base", "errors", "resilience", "services", "jobs", "monitoring", "edge", "blueprints", "factory")

# The first dotted part under backend.app that names each layer; whatever is not listed is a blueprint.
_APP_LAYERS = {
    "extensions": "base",
    "models": "base",
    "signals": "base",
    "timeutil": "base",
    "ids": "base",
    "redis_client": "base",
    "sweeper": "base",
    "tracing": "base",
    "errors": "errors",
    "error_catalog": "errors",
    "db_errors": "errors",
    "error_handlers": "errors",
    "request_id": "errors",
    "resilience": "resilience",
    "utils": "resilience",  # the seed's path, re-exporting resilience.recovery
    "services": "services",
    "jobs": "jobs",
    "monitoring": "monitoring",
    "edge": "edge",
}

# backend/log/ bottom to top: each module may import only the ones before it, so the log layer has no circle inside.
LOG_ORDER = ("fields", "redaction", "context", "records", "formatting", "sinks", "batching", "setup", "events")

# Upward imports still in the code, as (importing module, imported module). Remove a line when its import goes;
# never add one: a new upward import is fixed by moving code down or by a signal (backend/app/signals.py).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def layer_of(module: str) -> str:
    """The layer a dotted module name under `backend` belongs to."""
    parts = module.split(".")
    if parts[:2] in (["backend", "log"], ["backend", "logging_config"]):
        return "log"
    if parts == ["backend", "app"]:
        return "factory"
    return _APP_LAYERS.get(parts[2], "blueprints") if parts[:2] == ["backend", "app"] else "base"


def module_name(path: Path) -> str:
    """`backend/app/jobs/worker.py` -> `backend.app.jobs.worker` (a package's `__init__` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The absolute modules an ImportFrom names (`from . import x` may import the submodule x)."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    if node.module is None:
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """Every `backend.*` module a file imports at run time (lazy imports included), with its line.

    `module` is the file's dotted name when it does not sit at its place in the tree (the checker's own tests).
    """
    tree = ast.parse(path.read_text(), str(path))
    module, is_package = module or module_name(path), path.name == "__init__.py"
    skip = _type_checking_lines(tree)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(target, node.lineno) for target in _resolve(module, is_package, node)]
    return [(target, line) for target, line in found if target == "backend" or target.startswith("backend.")]


def upward_imports() -> list[str]:
    """'importer -> imported (file:line)' for every import that points up the layers."""
    found = []
    for path in sorted(BACKEND.rglob("*.py")):
        source = module_name(path)
        for target, line in imports(path):
            if target in ("backend", "backend.app") and source != "backend.app":
                continue  # the package roots: `from .. import x` resolves to the submodule named in x
            upward = LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(source))
            if upward and (source, target) not in KNOWN_UPWARD:
                found.append(f"{source} -> {target} ({path.relative_to(ROOT)}:{line})")
    return found


def test_every_import_points_down_the_layers() -> None:
    assert upward_imports() == []


def test_the_known_upward_imports_are_still_there() -> None:
    # A stale entry would let the import come back unnoticed: the list shrinks with the code.
    present = set()
    for path in BACKEND.rglob("*.py"):
        present |= {(module_name(path), target) for target, _ in imports(path)}
    assert KNOWN_UPWARD - present == set()


def app_imports(path: Path, module: str | None = None) -> list[str]:
    """'file:line target' for every import of `backend.app` in a file (lazy and relative ones included)."""
    return [
        f"{path.name}:{line} {target}"
        for target, line in imports(path, module)
        if target == "backend.app" or target.startswith("backend.app.")
    ]


def test_the_log_package_imports_nothing_of_the_app() -> None:
    # Importing backend.app runs the factory's package, which configures logging: a circle at start.
    log_files = sorted((BACKEND / "log").glob("*.py"))
    assert {path.stem for path in log_files} == {"__init__", *LOG_ORDER}  # a new module is placed in LOG_ORDER
    offenders = [offender for path in [BACKEND / "logging_config.py", *log_files] for offender in app_imports(path)]
    assert offenders == []


def test_an_import_of_the_app_in_the_log_package_is_found(tmp_path: Path) -> None:
    # The check above can fail: a lazy relative import, an absolute one and `from .. import app` are all reported.
    source = tmp_path / "events.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import backend.app.signals\n"
        "from .. import app\n"
        "if TYPE_CHECKING:\n"
        "    from ..app.extensions import db\n"
        "def late():\n"
        "    from ..app.errors import APIError\n"
    )
    assert app_imports(source, "backend.log.events") == [
        "events.py:2 backend.app.signals",
        "events.py:3 backend.app",
        "events.py:7 backend.app.errors",
    ]


def test_each_log_module_imports_only_the_ones_before_it() -> None:
    found = []
    for index, name in enumerate(LOG_ORDER):
        for target, line in imports(BACKEND / "log" / f"{name}.py"):
            parts = target.split(".")
            if parts[:2] == ["backend", "log"] and (len(parts) < 3 or parts[2] not in LOG_ORDER[:index]):
                found.append(f"backend/log/{name}.py:{line} {target}")
    assert found == []


def test_the_layer_map_knows_every_folder_of_the_app() -> None:
    # A new top-level module or package must be placed in a layer on purpose, not fall into "blueprints".
    blueprints = {"auth", "api", "admin", "renders", "payments", "downloads", "static"}
    names = {p.stem if p.suffix == ".py" else p.name for p in (BACKEND / "app").iterdir() if not p.name.startswith("_")}
    assert names - set(_APP_LAYERS) - blueprints == set()


def test_an_upward_import_is_found() -> None:
    # The checker itself can fail: a services module importing a blueprint is reported.
    assert LAYERS.index(layer_of("backend.app.payments.routes")) > LAYERS.index(layer_of("backend.app.services.x"))
    assert layer_of("backend.app.resilience.breaker") == "resilience"
    assert layer_of("backend.logging_config") == "log"


def _package_of(module: str) -> str | None:
    """The package under backend/app a module lives in (None for the app's loose modules)."""
    parts = module.split(".")
    if parts[:2] != ["backend", "app"] or len(parts) < 3 or not (BACKEND / "app" / parts[2]).is_dir():
        return None
    return parts[2]


def package_circles() -> list[list[str]]:
    """Every set of backend/app packages that import each other round in a circle (runtime imports)."""
    graph: dict[str, set[str]] = {}
    for path in BACKEND.rglob("*.py"):
        source = _package_of(module_name(path))
        for target, _ in imports(path):
            imported = _package_of(target)
            if source and imported and source != imported:
                graph.setdefault(source, set()).add(imported)

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        stack = [start]
        while stack:
            for nxt in graph.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    reachable = {node: reach(node) for node in graph}
    circles = {frozenset({n, *(m for m in r if n in reachable.get(m, ()))}) for n, r in reachable.items() if n in r}
    return sorted(sorted(circle) for circle in circles)


def test_no_import_circle_between_packages() -> None:
    assert package_circles() == []


def test_each_package_says_its_layer() -> None:
    """Each package's docstring names the layer this file puts it in, so a reader knows what it may import."""
    wrong = []
    for path in sorted(BACKEND.rglob("__init__.py")):
        if path.parent == BACKEND:
            continue  # `backend` itself is only the root of the two trees
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if f"Layer: {layer_of(module_name(path))}" not in doc:
            wrong.append(f"{path.relative_to(ROOT)}: no 'Layer: {layer_of(module_name(path))}'")
    assert wrong == []


def test_no_test_module_imports_another() -> None:
    """Shared test helpers live in tests/harness/; a test module importing another runs its module-level set-up."""
    tests = ROOT / "tests"
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert found == []


def test_the_edge_imports_no_monitoring_and_no_blueprint() -> None:
    """edge/ says it hears nothing from monitoring and knows no blueprint: held here, stricter than its place."""
    found = [
        f"{path.relative_to(ROOT)}:{line} {target}"
        for path in sorted((BACKEND / "app" / "edge").glob("*.py"))
        for target, line in imports(path)
        if layer_of(target) in ("monitoring", "blueprints", "factory")
    ]
    assert found == []
