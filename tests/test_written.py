"""What lcbench wrote into a figures or tables folder (:mod:`harness.report.written`): a rerun
removes the files of its own groups it no longer writes, and nothing else."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.report.written import MANIFEST, replace_written


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(name)
    return [folder / n for n in names]


def test_a_call_removes_its_own_groups_stale_files_and_keeps_the_others_on_record(tmp_path):
    a1, a2, b1 = touch(tmp_path, "a1.png", "a2.png", "b1.png")
    replace_written(tmp_path, {"a": [a1, a2], "b": [b1]})
    assert replace_written(tmp_path, {"a": [a1]}) == [a2]  # `plot --only a`: b's file is not a's to remove
    assert b1.is_file()
    assert replace_written(tmp_path, {"b": []}) == [b1]  # b's record outlived the call that did not touch it
    c1, c2 = touch(tmp_path, "c1.png", "c2.png")
    replace_written(tmp_path, {"c": [c1]})
    replace_written(tmp_path, {"c": [c1, c2]})  # a panel that appears, then goes again
    assert replace_written(tmp_path, {"c": [c1]}) == [c2] and c1.is_file()


def test_a_recorded_name_the_user_made_a_link_is_kept(tmp_path):
    a1, a2 = touch(tmp_path / "figs", "a1.png", "a2.png")
    replace_written(tmp_path / "figs", {"a": [a1, a2]})
    (mine,) = touch(tmp_path, "mine.png")
    a2.unlink()
    a2.symlink_to(mine)
    assert replace_written(tmp_path / "figs", {"a": [a1]}) == []
    assert a2.is_symlink() and mine.is_file()


def test_a_copied_folder_removes_its_own_files_not_the_originals(tmp_path):
    a1, a2 = touch(tmp_path / "run" / "figures", "a1.png", "a2.png")
    replace_written(a1.parent, {"a": [a1, a2]})
    copy = shutil.copytree(tmp_path / "run", tmp_path / "copy") / "figures"
    assert replace_written(copy, {"a": [copy / "a1.png"]}) == [copy / "a2.png"]
    assert a1.is_file() and a2.is_file()


def test_a_damaged_record_removes_nothing_and_is_replaced(tmp_path):
    a1, x, y = touch(tmp_path, "a1.png", "x", "y")
    for damaged in ("{not json", json.dumps(["a1.png"]), json.dumps({"a": 5, "b": "xy"})):
        (tmp_path / MANIFEST).write_text(damaged)
        assert replace_written(tmp_path, {"a": [a1], "b": []}) == []
        assert x.is_file() and y.is_file()
        assert json.loads((tmp_path / MANIFEST).read_text()) == {"a": ["a1.png"], "b": []}


def test_a_hand_edited_record_never_reaches_outside_the_folder(tmp_path):
    """The record lists bare names; one edited to ``../x``, an absolute path or a folder removed
    nothing outside, and no folder, before ``own_files`` filtered removals."""
    (outside,) = touch(tmp_path, "outside.png")
    (a1,) = touch(tmp_path / "figs", "a1.png")
    (tmp_path / "figs" / "sub").mkdir()
    names = ["a1.png", "../outside.png", str(outside), "sub", "."]
    (tmp_path / "figs" / MANIFEST).write_text(json.dumps({"a": names}))
    assert replace_written(tmp_path / "figs", {"a": []}) == [a1]
    assert outside.is_file() and (tmp_path / "figs" / "sub").is_dir()
