"""The layout: imports run one way down harness's floors (parsed from every module, function-level
and type-checking imports included), the old flat module paths still import, and the installed
top-level packages are this repository's."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from harness import moved

ROOT = Path(__file__).resolve().parent.parent
# floor -> the floors it may import besides itself (the README's Layout section states the same rule)
ALLOWED = {
    "harness.api": set(),
    "harness.data": {"harness.api"},
    "harness.train": {"harness.data", "harness.api"},
    "harness.runs": {"harness.train", "harness.data", "harness.api"},
    "harness.report": {"harness.api"},
    "harness.adapters": {"harness.runs", "harness.train", "harness.data", "harness.api"},
    "harness.cli": {"harness.api", "harness.data", "harness.train", "harness.runs", "harness.report", "harness.adapters"},
    "harness.moved": set(),
    "harness": {"harness.moved"},
    "baselines": {"harness.api"},
    "tasks": {"harness.api", "harness.data", "harness.report"},
}
OURS = ("harness", "baselines", "tasks")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> str:
    """The floor a module belongs to: ``harness.api.task`` -> ``harness.api``; ``tasks.niah`` -> ``tasks``."""
    parts = module.split(".")
    if parts[0] != "harness" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import of one of our packages in ``source``, wherever it sits
    (inside functions and ``if TYPE_CHECKING:`` too), in line order."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # ``from harness import data`` imports the submodule harness.data
            found += [(node.lineno, f"{base}.{alias.name}" if base in OURS else base) for alias in node.names]
    return sorted((line, name) for line, name in found if name.split(".")[0] in OURS)


def wrong_imports(module: str, imports: list[tuple[int, str]]) -> list[str]:
    """The imports of ``module`` that break the floor rule, as ``line: why``."""
    floor = floor_of(module)
    assert floor in ALLOWED, f"{module}: no floor rule for {floor!r}; add it to ALLOWED and the README"
    broken = []
    for line, target in imports:
        target_floor = floor_of(target)
        if target_floor == floor:
            if floor == "tasks" and target not in ("tasks", module):
                broken.append(f"{line}: {module} imports another task, {target}")
        elif target_floor not in ALLOWED[floor]:
            broken.append(f"{line}: {module} ({floor}) imports {target} ({target_floor})")
    return broken


def library_files() -> list[Path]:
    return sorted(p for package in OURS for p in (ROOT / package).rglob("*.py"))


def test_every_module_imports_only_the_floors_below_it():
    broken = []
    for path in library_files():
        module = module_name(path)
        imports = imported_modules(path.read_text(), module, path.name == "__init__.py")
        broken += [f"{path.relative_to(ROOT)}:{why}" for why in wrong_imports(module, imports)]
    assert len(library_files()) > 40
    assert not broken, "imports that run the wrong way:\n" + "\n".join(broken)


def test_the_rule_sees_late_relative_and_package_imports():
    """A check that sees nothing passes everything: these must all be seen, and the wrong ones named."""
    source = ("from __future__ import annotations\n"
              "from harness import data, report\n"
              "from .errors import ConfigError\n"
              "def f():\n    from harness.runs import sweep\n    import tasks.niah\n")
    imports = imported_modules(source, "harness.api.probe")
    assert [name for _, name in imports] == ["harness.data", "harness.report", "harness.api.errors", "harness.runs",
                                             "tasks.niah"]
    assert [why.split(":")[0] for why in wrong_imports("harness.api.probe", imports)] == ["2", "2", "5", "6"]
    assert wrong_imports("tasks.niah", [(1, "tasks.loss_scaling")]) == ["1: tasks.niah imports another task, tasks.loss_scaling"]
    assert wrong_imports("harness.train.trainer", [(1, "harness.data"), (2, "harness.api.registry")]) == []


def test_every_folder_of_modules_is_a_package():
    """setuptools packs only folders with an __init__.py: a folder without one would be missing
    from a wheel while every test run from the checkout still passed."""
    folders = {p.parent for p in library_files()}
    assert not [str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()]


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_old_module_paths_import_the_moved_modules(old):
    new = importlib.import_module(moved.MOVED[old])
    alias = sys.modules.pop(old, None)  # the alias only; the moved module stays loaded
    try:
        with pytest.warns(DeprecationWarning, match=rf"{old} moved to {moved.MOVED[old]}"):
            assert importlib.import_module(old) is new
    finally:
        if alias is not None:
            sys.modules[old] = alias


def test_old_plugin_imports_still_work():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from harness.interface import LCModel
        from harness.registry import register_model, register_task
        from harness.task import DataOptions, Task, check_positive, option, stream_token_losses
    from harness.api import interface, registry, task

    assert (LCModel, register_model, register_task) == (interface.LCModel, registry.register_model, registry.register_task)
    assert (Task, DataOptions, option, check_positive, stream_token_losses) == (
        task.Task, task.DataOptions, task.option, task.check_positive, task.stream_token_losses)


def test_python_m_of_the_old_lm_eval_path_runs_the_moved_module():
    pytest.importorskip("lm_eval")
    done = subprocess.run([sys.executable, "-m", "harness.lm_eval_adapter", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "lm-eval" in done.stdout and "python -m harness.adapters.lm_eval" in done.stderr


@pytest.mark.parametrize("package", OURS)
def test_installed_top_level_packages_are_this_repository(package):
    spec = importlib.util.find_spec(package)
    where = Path(spec.origin).resolve().parent if spec and spec.origin else None
    assert where == ROOT / package, (
        f"`import {package}` finds {where}, not {ROOT / package}: another distribution installs a top-level "
        f"{package!r} package; lcbench cannot share an environment with it (see the README's Layout section)")
