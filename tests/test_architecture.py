"""The package's layers: every import (module level or inside a function) points down.

Layers from the bottom (docs/architecture.md): the shared base modules, model, sim, physics,
envs, rollout, rl, control, then hier and sim2real side by side, deploy, the evaluation
modules, bench, cli. A module may import its own package and anything on a lower layer;
nothing on its own layer in another package, nothing above. The test reads the source (``ast``),
so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ds_robot"

# unit -> layer. A unit is a subpackage of ds_robot or one of its top-level modules.
LAYERS = {
    "errors": 0,
    "paths": 1, "yamlio": 1, "stats": 1,
    "model": 2,
    "sim": 3,
    "physics": 4,
    "envs": 5,
    "rollout": 6,
    "rl": 7,
    "control": 8,
    "hier": 9, "sim2real": 9,
    "deploy": 10,
    "evaluate": 11, "render": 12,
    "bench": 13,
    "cli": 14,
}
# The package root only registers the Gymnasium ids by entry-point string; anything may import
# it (a rollout worker process does, to have the ids), and it imports no unit.
ROOT = "__init__"


def _unit(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "ds_robot", module
    return parts[1] if len(parts) > 1 else ROOT


def _imports() -> list[tuple[str, str, int]]:
    """(importing file, imported ds_robot module, line) for every import in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        here = ".".join(rel.parts)
        if here.endswith(".__init__"):
            here = here[: -len(".__init__")]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative imports are not used in this package
                    names = [f"<relative level {node.level}>"]
                else:
                    names = [node.module or ""]
                    # `from ds_robot import x` names a unit in the alias
                    if node.module == "ds_robot":
                        names = [f"ds_robot.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("ds_robot") or name.startswith("<relative"):
                    found.append((here, name, node.lineno))
    return found


IMPORTS = _imports()


def test_the_import_reader_sees_imports_inside_functions():
    inner = [(f, m) for f, m, _ in IMPORTS if f == "ds_robot.cli.main" and m.startswith("ds_robot.bench")]
    assert inner, "cli imports the benchmarks inside its commands; the reader must see those"


def test_every_unit_has_a_layer():
    units = {_unit(f) for f, _, _ in IMPORTS} | {_unit(m) for _, m, _ in IMPORTS if m.startswith("ds_robot")}
    missing = sorted(units - set(LAYERS) - {ROOT})
    assert not missing, f"give these a layer in tests/test_architecture.py and docs/architecture.md: {missing}"


def test_no_relative_imports():
    assert not [(f, line) for f, m, line in IMPORTS if m.startswith("<relative")]


def test_imports_only_point_down():
    bad = []
    for importer, imported, line in IMPORTS:
        src, dst = _unit(importer), _unit(imported)
        if src == dst or dst == ROOT:
            continue
        if src == ROOT:
            bad.append(f"{importer}:{line} the package root imports {imported}")
            continue
        if LAYERS[dst] >= LAYERS[src]:
            bad.append(f"{importer}:{line} ({src}, layer {LAYERS[src]}) imports {imported} "
                       f"({dst}, layer {LAYERS[dst]})")
    assert not bad, "imports that run up or across the layers:\n" + "\n".join(bad)


def test_no_two_units_import_each_other():
    edges = {(_unit(f), _unit(m)) for f, m, _ in IMPORTS if _unit(f) != _unit(m)}
    loops = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
    assert not loops, f"packages that import each other: {loops}"


ROBOT_PATH = ("ds_robot.deploy.core", "ds_robot.hier.controller", "ds_robot.hier.policy", "ds_robot.control.scripted",
              "ds_robot.sim2real.correction")


def _module_level_imports(module: str) -> set[str]:
    """Modules that importing ``module`` imports itself (statements outside functions and classes)."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    out: set[str] = set()
    if not path.is_file():  # a namespace package: importing it runs nothing
        return out
    for node in ast.parse(path.read_text()).body:
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(inner, ast.Import):
                out |= {a.name for a in inner.names}
            elif isinstance(inner, ast.ImportFrom) and inner.module:
                out.add(inner.module)
    return out


def _closure(module: str) -> dict[str, set[str]]:
    """Every ds_robot module importing ``module`` loads (parent packages included), with what each imports."""
    seen: dict[str, set[str]] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            part = ".".join(parts[:k])
            if part in seen:
                continue
            path = PACKAGE.parent.joinpath(*part.split("."))
            if not (path.is_dir() or path.with_suffix(".py").is_file()):
                continue  # `from ds_robot.x import name`: name is not a module
            seen[part] = _module_level_imports(part)
            todo += [m for m in seen[part] if m.startswith("ds_robot")]
    return seen


@pytest.mark.parametrize("module", ROBOT_PATH)
def test_the_robot_path_modules_import_neither_torch_nor_gymnasium(module):
    """What runs on the robot PC is NumPy + MuJoCo. (The package root registers the Gymnasium
    ids, so the gymnasium module itself is loaded; no robot-path module uses it. That torch is
    not loaded at run time: tests/test_deploy.py.)"""
    heavy = {name: sorted(m for m in imports if m.split(".")[0] in ("torch", "gymnasium"))
             for name, imports in _closure(module).items() if name != "ds_robot"}
    heavy = {k: v for k, v in heavy.items() if v}
    assert not heavy, f"importing {module} loads modules that import torch or gymnasium: {heavy}"


def test_the_closure_reader_finds_a_heavy_import():
    assert any("torch" in i for i in _closure("ds_robot.hier.train").values() for i in i)


# Each benchmark module names its own environment, goals and rows with these.
PER_BENCHMARK = {"ENV_ID", "GOALS", "VARIANTS"}


def test_one_name_one_meaning_for_module_constants():
    """A module-level constant (N_ARM_JOINTS, ACTION_SIZE, ...) is defined in one module only."""
    where: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper() and len(target.id) > 1:
                    where.setdefault(target.id, []).append(str(path.relative_to(PACKAGE)))
    twice = {name: files for name, files in where.items() if len(files) > 1
             and not (name in PER_BENCHMARK and all(f.startswith("bench/") for f in files))}
    assert not twice, f"constants defined in more than one module: {twice}"
