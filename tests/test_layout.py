"""The layout shows the architecture (docs/design.md): one package per stage of a build, lowest first; no import
circle, no import from a lower stage up to a higher one, no private name imported across modules, a small root."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "edgekit"
# the stages, lowest first: a module may import its own stage and the ones before it, never one after it
STAGES = ("errors", "standalone", "config", "utils", "runners", "inputs", "cache", "transform", "measure", "routes",
          "emulator", "bundle", "pipeline", "build_matrix", "api", "cli")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> list[tuple[str, str, str | None]]:
    """(importer, imported edgekit module, imported name or None), every import statement, inside functions too."""
    edges = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges += [(name, alias.name, None) for alias in node.names if alias.name.startswith("edgekit")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package, one level up per extra dot
                    parents = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parents, base]).strip(".")
                if base.startswith("edgekit"):
                    for alias in node.names:
                        full = f"{base}.{alias.name}"
                        edges.append((name, full, None) if full in modules else (name, base, alias.name))
    return edges


def _stage(module: str) -> int:
    parts = module.split(".")
    return len(STAGES) if len(parts) == 1 else STAGES.index(parts[1])


def test_no_import_runs_up_a_stage_or_borrows_a_private_name():
    modules = _modules()
    upward, private = [], []
    for importer, imported, name in _imports(modules):
        if imported != "edgekit" and _stage(imported) > _stage(importer):
            upward.append(f"{importer} -> {imported}")
        if name and name.startswith("_") and not name.startswith("__") and imported != importer:
            private.append(f"{importer} takes {imported}.{name}")
    assert upward == [] and private == []


def test_no_import_circle():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for importer, imported, _ in _imports(modules):
        graph[importer].add(imported)
    # a route's registry loads its route by name at run time (importlib): that is not an import statement
    done, circles = set(), []

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            circles.append([*path[path.index(node):], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    assert circles == []


def test_the_root_is_small_and_each_route_lives_in_one_folder():
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 8, root_modules
    assert not (PACKAGE / "backends").exists() and not (PACKAGE / "steps").exists()
    routes = sorted(p.name for p in (PACKAGE / "routes").iterdir() if (p / "route.py").is_file())
    assert routes == ["executorch", "litert", "onnxruntime", "openvino", "tensorrt"]
    # nothing outside routes/<name>/ is named after one route alone
    stray = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "routes" not in p.parts
             and any(word in p.stem for word in ("litert", "tflite", "onnx2tf", "tensorrt", "openvino", "executorch"))]
    assert stray == []


def test_the_tests_mirror_the_packages():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    mirrored = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and any(p.rglob("test_*.py"))}
    assert mirrored - {"conformance"} <= packages, mirrored - packages
