"""Old module paths of the flat ``harness/`` (before the floors), kept working for one release.

``import harness.registry`` (or ``from harness.task import Task``) still works: a finder on
``sys.meta_path`` answers each old path with the module that now holds its code, the very same
module object (so state, ``isinstance`` and monkeypatching behave as before), and warns with a
``DeprecationWarning`` naming the new path. Python shows that warning where the import is in
``__main__`` or under pytest, and stays quiet otherwise; nothing in this repository uses the old
paths. ``python -m harness.lm_eval_adapter`` runs the moved module's command line.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType

MOVED = {
    "harness.errors": "harness.api.errors",
    "harness.interface": "harness.api.interface",
    "harness.registry": "harness.api.registry",
    "harness.task": "harness.api.task",
    "harness.results": "harness.api.results",
    "harness.stats": "harness.api.stats",
    "harness.timing": "harness.api.timing",
    "harness.retrieval": "harness.data.retrieval",
    "harness.checkpoint": "harness.train.checkpoint",
    "harness.evaluate": "harness.runs.evaluate",
    "harness.sweep": "harness.runs.sweep",
    "harness.quick": "harness.runs.quick",
    "harness.check": "harness.runs.check",
    "harness.plots": "harness.report.plots",
    "harness.tables": "harness.report.tables",
    "harness.summary": "harness.report.presets",
    "harness.lm_eval_adapter": "harness.adapters.lm_eval",
    "harness.hf_tokenizer": "harness.adapters.hf_tokenizer",
    "harness.importers": "harness.adapters.importers",
    "harness.importers.common": "harness.adapters.importers.common",
    "harness.importers.hf": "harness.adapters.importers.hf",
    "harness.importers.ttt_e2e": "harness.adapters.importers.ttt_e2e",
}


def new_path(old: str) -> str:
    return MOVED[old]


class _MovedLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder; exec_module puts the moved module in its place

    def exec_module(self, module: ModuleType) -> None:
        new = new_path(module.__name__)
        warnings.warn(f"{module.__name__} moved to {new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=2)
        # The import system returns whatever sys.modules holds for the name after exec_module.
        sys.modules[module.__name__] = importlib.import_module(new)

    def get_code(self, fullname: str) -> CodeType:
        """For ``python -m <old path>``: warn, then run the moved module as ``__main__``."""
        new = new_path(fullname)
        source = (f"import runpy, warnings\n"
                  f"warnings.warn({f'python -m {fullname} is now python -m {new}'!r}, DeprecationWarning)\n"
                  f"runpy.run_module({new!r}, run_name='__main__', alter_sys=True)\n")
        return compile(source, fullname, "exec")


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedLoader())


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
