"""Output folders: what a save killed with kill -9 leaves is cleared by the next save or run (never
what a live process is writing), and an unwritable output fails before any work, even as root."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from harness.api import results
from harness.api.errors import ConfigError
from harness.api.staging import clear_stale, ensure_writable, prepare_output
from harness.cli import EXIT_USER_ERROR, main
from harness.runs.sweep import load_spec, run_sweep
from harness.train import checkpoint
from harness.train.trainer import check_out_dir
from tests.conftest import small_model
from tests.test_cli_errors import TRAIN, one_line_error

ROOT = Path(__file__).resolve().parent.parent

# Starts a save that stops half-way (the weights written, then the writer hangs) and says so.
HANGING_SAVE = textwrap.dedent("""
    import sys, time
    import safetensors.torch
    from harness.api import results
    from harness.train import checkpoint
    from tests.conftest import small_model

    def hang(*args, **kwargs):
        print("saving", flush=True)
        time.sleep(600)

    target = sys.argv[2]
    if sys.argv[1] == "checkpoint":
        real = safetensors.torch.save_model
        safetensors.torch.save_model = lambda *a, **k: (real(*a, **k), hang())
        checkpoint.save_checkpoint(target, small_model("swa"))
    elif sys.argv[1] == "between_renames":  # replacing a checkpoint: the old one moved aside, the new not yet in
        import os
        checkpoint.save_checkpoint(target, small_model("swa", seed=0))
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if str(src) == target:
                hang()
        os.replace = replace
        checkpoint.save_checkpoint(target, small_model("swa", seed=1))
    else:
        results.atomic_write(target, lambda f: (f.write("half"), f.flush(), hang()))
""")


def start_hanging_saves(kind: str, *targets: Path) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", HANGING_SAVE, kind, str(target)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for target in targets]
    for proc in procs:
        assert proc.stdout.readline().strip() == "saving"
    return procs


def staged(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_checkpoint_save_killed_mid_way_is_cleared_by_the_next_save(tmp_path):
    target = tmp_path / "ck"
    [proc] = start_hanging_saves("checkpoint", target)
    kill_9(proc)
    left = staged(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".ck.tmp-{proc.pid}@")  # the fault: a half-written folder
    checkpoint.save_checkpoint(tmp_path / "other", small_model("swa"))  # any save in the folder clears it
    assert staged(tmp_path) == [] and checkpoint.is_checkpoint(tmp_path / "other") and not target.exists()


@pytest.mark.parametrize("then", ["save", "resume"])
def test_a_checkpoint_replace_killed_between_its_renames_is_put_back(tmp_path, then):
    """Replacing a checkpoint renames the old folder aside, then the complete new one into place: a
    kill between the two left no checkpoint (nothing to --resume), and the next save cleared both
    copies as stale."""
    target = tmp_path / "ck"
    [proc] = start_hanging_saves("between_renames", target)
    kill_9(proc)
    assert not target.exists() and len(staged(tmp_path)) == 2  # the new folder and the old one aside
    if then == "save":
        checkpoint.save_checkpoint(tmp_path / "other", small_model("swa"))
    else:
        check_out_dir(target, resume=True)  # what train(..., resume=True) checks first
    assert staged(tmp_path) == [] and checkpoint.is_checkpoint(target)
    assert checkpoint.load_model(target).state_dict().keys() == small_model("swa").state_dict().keys()
    new = small_model("swa", seed=1).state_dict()
    assert all(torch.equal(t, new[k]) for k, t in checkpoint.load_model(target).state_dict().items())


def test_a_live_processs_save_is_never_cleared(tmp_path):
    [proc] = start_hanging_saves("checkpoint", tmp_path / "ck")
    try:
        left = staged(tmp_path)
        assert clear_stale(tmp_path) == [] and staged(tmp_path) == left and len(left) == 1
        checkpoint.save_checkpoint(tmp_path / "other", small_model("swa"))
        assert staged(tmp_path) == left
    finally:
        kill_9(proc)
    assert clear_stale(tmp_path) == [tmp_path / left[0]]


def test_a_sweep_run_clears_table_writes_killed_mid_way(tmp_path):
    out = tmp_path / "out"
    (out / "cells").mkdir(parents=True)
    for proc in start_hanging_saves("file", out / results.TABLE_PARQUET, out / "cells" / "abc.parquet"):
        kill_9(proc)
    assert len(staged(out)) == 1 and len(staged(out / "cells")) == 1
    spec = {"name": "k", "models": [{"arch": "swa", "untrained": True, "set": {"window": 8, "d_model": 32,
                                                                               "n_heads": 2}}],
            "tasks": [{"task": "test_sweep_probe"}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    run_sweep(load_spec(tmp_path / "s.yaml"), out, progress=False)
    assert staged(out) == [] and staged(out / "cells") == []


def test_other_hidden_files_are_left_alone(tmp_path):
    keep = [".notes.tmp-12@elsewhere-abcdefgh", ".x.tmp-1@host-short", ".lcbench.lock", ".cache"]
    for name in keep:
        (tmp_path / name).write_text("")
    prepare_output(tmp_path)  # another host's, a name that is not ours, other hidden files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


@pytest.fixture
def unwritable(tmp_path) -> list[Path]:
    """Outputs no one can write, root included: below a regular file, and in sysfs."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    return [blocker / "out", Path("/sys/lcbench-out")]


def test_an_unwritable_output_is_one_clear_error_even_as_root(unwritable):
    for folder in unwritable:
        with pytest.raises(ConfigError, match="cannot write the sweep folder") as caught:
            ensure_writable(folder, "sweep folder")
        assert str(folder) in str(caught.value) and "\n" not in str(caught.value)


def test_every_command_refuses_an_unwritable_out_before_work(tmp_path, unwritable):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "u", "models": [{"arch": "swa", "untrained": True}],
                                    "tasks": [{"task": "test_sweep_probe"}]}))
    run_dir = tmp_path / "run"
    results.write_table(run_dir, [results.make_row("loss", 1.0, run="r", model="m", arch="swa", task="t")])
    for out in map(str, unwritable):
        for args in ([*TRAIN, "--out", f"{out}/ck"], ["sweep", str(spec), "--out", out],
                     ["eval", "test_sweep_probe", "--model", "swa", "--out", out],
                     ["table", str(run_dir), "--out", out], ["plot", str(run_dir), "--out", out],
                     ["report", str(run_dir), "--out", f"{out}/r.html"]):
            one_line_error(CliRunner().invoke(main, args), EXIT_USER_ERROR, "cannot write")


def test_a_folder_that_exists_but_takes_no_file_is_refused():
    """The write is real, not a permission check: sysfs exists and is a folder, yet takes no file
    even from root (a read-only or full file system fails the same way)."""
    with pytest.raises(ConfigError, match="cannot write the output folder '/sys': "):
        ensure_writable("/sys")


def staged_name(target: str, pid: int, old: bool = False) -> str:
    from harness.api.staging import _HOST

    return f".{target}.tmp-{pid}@{_HOST}-abcd_123" + (".old" if old else "")


def test_a_live_process_of_another_user_is_alive(tmp_path, monkeypatch):
    """``kill(pid, 0)`` on another user's live process raises PermissionError: that save is live."""
    from harness.api import staging

    def not_permitted(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(staging.os, "kill", not_permitted)
    (tmp_path / staged_name("ck", 4242)).mkdir()
    assert clear_stale(tmp_path) == [] and (tmp_path / staged_name("ck", 4242)).is_dir()


def test_a_stale_old_copy_beside_a_folder_in_place_is_removed(tmp_path, monkeypatch):
    """A replace killed after its second rename left only the old copy aside: the folder is in
    place, so nothing is put back and the old copy goes."""
    from harness.api import staging

    monkeypatch.setattr(staging, "_alive", lambda pid: False)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "new.txt").write_text("new")
    old = tmp_path / staged_name("ck", 4242, old=True)
    old.mkdir()
    (old / "old.txt").write_text("old")
    assert clear_stale(tmp_path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"] and (tmp_path / "ck" / "new.txt").is_file()


def test_folders_made_for_results_go_again_when_the_work_is_interrupted(tmp_path):
    """Ctrl-C (KeyboardInterrupt, not an Exception) during the work left the empty folders made for it."""
    from harness.api.staging import made_for_results

    with pytest.raises(KeyboardInterrupt), made_for_results(tmp_path / "runs" / "r"):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_stale_link_goes_and_what_it_points_to_stays(tmp_path, monkeypatch):
    from harness.api import staging

    monkeypatch.setattr(staging, "_alive", lambda pid: False)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("mine")
    link = tmp_path / "out" / staged_name("ck", 4242)
    link.parent.mkdir()
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert clear_stale(tmp_path / "out") == [link]
    assert not os.path.lexists(link) and (tmp_path / "elsewhere" / "keep.txt").read_text() == "mine"
