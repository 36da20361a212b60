"""The package's import graph: no cycles anywhere (lazy imports counted), and apps/ imports run one way:
cli -> {bench, review, demos} -> {scoring, runs} -> datasets / reports -> core."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"core": "adafocus.core", "datasets": "adafocus.datasets", "apps": "adafocus.apps",
            "reports": "adafocus.reports"}
# What each apps/ part may import from the other parts (itself always).
APPS_LAYERS = {
    "cli": {"bench", "review", "demos", "scoring", "runs"},
    "bench": {"scoring", "runs"},
    "review": {"scoring", "runs"},
    "demos": {"scoring", "runs"},
    "scoring": {"runs"},  # the run's own calibration split (apps/runs/agreement.py: --precision auto)
    "runs": set(),
}


def module_files() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every adafocus module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known and target != name}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def apps_part(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "apps" else None


def test_find_cycle_reports_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50
    assert find_cycle(graph) is None


def test_apps_imports_run_one_way_and_core_imports_nothing_above_it():
    graph = import_graph()
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            if module.startswith("adafocus.core") and not target.startswith("adafocus.core"):
                wrong.append(f"{module} -> {target}")
            source_part, target_part = apps_part(module), apps_part(target)
            if source_part and target_part and source_part != target_part \
                    and target_part not in APPS_LAYERS[source_part]:
                wrong.append(f"{module} -> {target}")
            if not module.startswith("adafocus.apps") and target.startswith("adafocus.apps"):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_apps_is_grouped_by_role():
    top_level = sorted(p.stem for p in (ROOT / "apps").glob("*.py"))
    assert top_level == ["__init__", "cli"]
    assert {p.name for p in (ROOT / "apps").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(APPS_LAYERS) - {"cli"}
