"""What lcbench wrote into a figures or tables folder, so that a rerun removes what it no longer
writes: a figure or table the results stopped giving (a task dropped from a sweep, a figure now
skipped) would otherwise stay beside the new ones and look current.

Files are grouped (a figure's name: its PNG and PDF, every panel it yields; all tables as one
group). A call records the files of the groups it produced and removes the files an earlier call
recorded for those groups and did not write again. Files lcbench never recorded (a user's own, or
a group this call did not touch, e.g. the other figures of ``lcbench plot --only``) are kept.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.api import results
from harness.api.staging import own_files

log = logging.getLogger(__name__)

MANIFEST = ".lcbench-written.json"


def _recorded(folder: Path) -> dict[str, list[str]]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): [str(n) for n in v] for k, v in data.items() if isinstance(v, list)}


def replace_written(folder: str | Path, written: Mapping[str, Sequence[Path]]) -> list[Path]:
    """Record ``written`` (group -> files in ``folder``) and remove the files recorded before for
    those groups that this call did not write; returns the removed files."""
    folder = Path(folder)
    before = _recorded(folder)
    now = {group: sorted(Path(p).name for p in paths) for group, paths in written.items()}
    removed = []
    for group, names in now.items():
        for path in own_files(folder, sorted(set(before.get(group, ())) - set(names))):
            path.unlink()
            removed.append(path)
    if removed:
        log.info("removed %d file(s) an earlier run wrote and this one did not: %s", len(removed),
                 ", ".join(p.name for p in removed))
    merged = {**before, **now}
    results.atomic_write(folder / MANIFEST, lambda f: f.write(json.dumps(merged, indent=1, sort_keys=True) + "\n"))
    return removed
