"""run.json provenance: the commit that holds the code that ran, as it was when the run started;
the versions of every package that decides numbers; the device used; a command line that reruns."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.api import registry, results
from harness.api.machine import machine_name
from harness.runs import evaluate, provenance
from tests.conftest import small_model

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


@needs_git
def test_git_commit_of_a_tracked_file_and_its_folder(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    assert provenance.git_commit(repo / "code.py") == {"commit": head, "dirty": False}
    (repo / "code.py").write_text("x = 2\n")
    dirty = provenance.git_commit(repo)
    assert (dirty["commit"], dirty["dirty"]) == (head, True) and re.fullmatch("[0-9a-f]{12}", dirty["diff"])


@needs_git
def test_uncommitted_edits_are_told_apart(repo: Path) -> None:
    """'dirty' alone named every uncommitted state of a commit alike: cells made before and after an
    uncommitted edit counted as one code, and a sweep's warning of mixed code stayed silent."""
    (repo / "code.py").write_text("x = 2\n")
    first = provenance.git_commit(repo)
    assert first["dirty"] and provenance.git_commit(repo) == first
    (repo / "code.py").write_text("x = 3\n")
    second = provenance.git_commit(repo)
    assert second["commit"] == first["commit"] and second["diff"] != first["diff"]
    from harness.runs.sweep import cell_commits

    counted = cell_commits([{"git": first}, {"git": second}, {"git": second}])
    assert sorted(counted.values()) == [1, 2] and all(name.startswith(first["commit"] + "+dirty:") for name in counted)


@needs_git
def test_git_commit_of_an_installed_copy_in_an_ignored_folder_is_unknown(repo: Path, monkeypatch) -> None:
    # lcbench installed (not editable) into the checkout's own .venv: the checkout's HEAD, clean,
    # is not the code that ran
    copy = repo / ".venv" / "site-packages" / "harness" / "runs" / "provenance.py"
    copy.parent.mkdir(parents=True)
    copy.write_text("x = 3\n")
    assert provenance.git_commit(copy) == {"commit": None, "dirty": None}
    monkeypatch.setattr(provenance, "__file__", str(copy))  # the default: this module's own file
    assert provenance.git_commit() == {"commit": None, "dirty": None}


@needs_git
def test_run_metadata_names_the_commit_of_this_checkout() -> None:
    here = Path(provenance.__file__).resolve()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here.parent, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("lcbench is not running from a git checkout")
    assert provenance.run_metadata(command="x")["git"]["commit"] == head.stdout.strip()


def test_every_kernel_and_evaluation_package_is_recorded() -> None:
    # the extras that run kernels (gpu, ref) or score with another harness (lm-eval) decide numbers:
    # each must land in run.json's versions when installed
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    wanted = {re.match(r"[A-Za-z0-9._-]+", req).group(0).lower() for extra in ("gpu", "ref", "lm-eval")
              for req in extras[extra]}
    assert wanted - set(provenance.PACKAGES) == set()



def test_lcbench_s_own_entry_points_are_recorded_as_lcbench_and_other_programs_as_run() -> None:
    assert provenance.invocation(["/x/.venv/bin/lcbench", "eval", "niah", "--out", "runs/a"]) == [
        "lcbench", "eval", "niah", "--out", "runs/a"]
    assert provenance.invocation(["/work/ps38/harness/cli.py", "table", "r"]) == ["lcbench", "table", "r"]
    assert provenance.invocation(["my_sweep.py", "--fast"]) == ["my_sweep.py", "--fast"]  # a script of one's own
    assert provenance.invocation(["-c", "x"]) == ["-c", "x"] and provenance.invocation([]) == []
    # a cli.py of one's own is no lcbench entry point: only harness/cli.py is
    assert provenance.invocation(["/home/u/tools/cli.py", "go"]) == ["/home/u/tools/cli.py", "go"]


def test_command_line_is_recorded_so_that_it_splits_back_into_the_same_arguments() -> None:
    argv = ["lcbench", "eval", "repeat", "my runs/swa", "-o", "contexts=128,256", ""]
    command = provenance.run_metadata(command=argv)["command"]
    assert shlex.split(command) == argv
    assert provenance.run_metadata(command="lcbench quick")["command"] == "lcbench quick"  # a string as given


def test_a_cpu_run_on_a_machine_with_a_gpu_does_not_record_the_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name=f"GPU{i}", total_memory=1 << 30))
    assert "gpu" not in provenance.run_metadata(command="x", device="cpu")["device"]
    assert provenance.device_info("cuda:1")["gpu"] == "GPU1"
    assert provenance.device_info("cuda")["gpu"] == provenance.device_info(None)["gpu"] == "GPU0"


def test_the_machine_record_names_what_picks_the_cpu_kernels(monkeypatch) -> None:
    """AVX2 and AVX-512 kernels (torch's CPU capability) round and run differently, yet run.json
    named only the CPU model, core count and threads."""
    record = provenance.run_metadata(command="x", device="cpu")["device"]
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    assert record["mkl"] is torch.backends.mkl.is_available()
    assert record["onednn"] is torch.backends.mkldnn.is_available()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # switched off, oneDNN serves nothing
    assert provenance.device_info("cpu")["onednn"] is False
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)  # a build without MKL, oneDNN on
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    assert provenance.device_info("cpu")["mkl"] is False
    assert provenance.device_info("cpu")["onednn"] is torch.backends.mkldnn.is_available()


def test_run_eval_records_the_commit_the_run_started_from(monkeypatch) -> None:
    # a commit or an edit made while a long evaluation runs must not be credited with its numbers
    head = {"commit": "a" * 40, "dirty": False}
    for module in (provenance, evaluate):
        monkeypatch.setattr(module, "git_commit", lambda path=None: dict(head), raising=False)

    def commit_during_the_run(model):
        head.update(commit="b" * 40, dirty=True)
        return [results.make_row("loss", 1.0)]

    monkeypatch.setitem(registry._TASKS, "test_commit_during_run", commit_during_the_run)
    meta = evaluate.run_eval("test_commit_during_run", small_model("swa"), None, device="cpu", progress=False).meta
    assert meta["git"] == {"commit": "a" * 40, "dirty": False}


def test_a_sweep_records_the_commit_it_started_from_and_each_cell_its_own(monkeypatch, tmp_path) -> None:
    # a resumed sweep mixes cells of two commits: run.json says so, and each cell names its commit
    import yaml
    from harness.runs import sweep
    from harness.train import checkpoint

    head = {"commit": "a" * 40, "dirty": False}
    for module in (provenance, sweep):
        monkeypatch.setattr(module, "git_commit", lambda path=None: dict(head), raising=False)

    def commit_during_the_run(model, n: int = 0):
        head.update(commit="b" * 40, dirty=True)
        return [results.make_row("loss", float(n))]

    monkeypatch.setitem(registry._TASKS, "test_commit_during_sweep", commit_during_the_run)
    ckpt = checkpoint.save_checkpoint(tmp_path / "swa", small_model("swa"))
    spec_file = tmp_path / "spec.yaml"
    spec = {"name": "p", "models": [{"arch": "swa", "checkpoint": str(ckpt)}],
            "tasks": [{"task": "test_commit_during_sweep", "grid": {"n": [1]}}]}
    spec_file.write_text(yaml.safe_dump(spec))
    first = sweep.run_sweep(sweep.load_spec(spec_file), tmp_path / "out", progress=False)
    meta = provenance.read_run_json(first.out_dir)
    assert meta["git"] == {"commit": "a" * 40, "dirty": False}  # read before the work
    assert meta["cell_commits"] == {"a" * 40: 1}
    [record] = sweep.ResultStore(first.out_dir).finished().values()  # where the cell ran
    assert record["machine"] == provenance.device_record("cpu")
    assert meta["cell_machines"] == {machine_name(record["machine"]): 1}
    assert f"cpu ({provenance.cpu_name()}, " in machine_name(record["machine"])

    spec["tasks"][0]["grid"]["n"] = [1, 2]  # the resumed sweep runs one more cell, under commit b
    spec_file.write_text(yaml.safe_dump(spec))
    with pytest.warns(UserWarning, match=r"made by different code \(1 by aaaaaaaaaaaa, 1 by bbbbbbbbbbbb\+dirty\)"):
        sweep.run_sweep(sweep.load_spec(spec_file), tmp_path / "out", progress=False)
    meta = provenance.read_run_json(tmp_path / "out")
    assert meta["git"] == {"commit": "b" * 40, "dirty": True}
    assert meta["cell_commits"] == {"a" * 40: 1, "b" * 40 + "+dirty": 1}
    records = [r["git"]["commit"] for r in sweep.ResultStore(tmp_path / "out").finished().values()]
    assert sorted(records) == ["a" * 40, "b" * 40]


def test_a_sweep_whose_cells_ran_on_different_machines_says_so(monkeypatch, tmp_path) -> None:
    """run.json counted the machines, but a sweep resumed elsewhere (a CPU run continued on a GPU
    node, another GPU model) put their timings side by side without a word, where mixed code is
    warned of."""
    from harness.runs import sweep

    machine = {"name": "cuda", "gpu": "NVIDIA A100"}
    monkeypatch.setattr(sweep, "device_record", lambda device: dict(machine))
    sweep.run_sweep(sweep.load_spec(_probe_spec(tmp_path, "m", [4])), tmp_path / "out", progress=False)
    machine["gpu"] = "NVIDIA H100"
    with pytest.warns(UserWarning, match=r"ran on different machines \(1 on cuda \(NVIDIA A100\), 1 on cuda \(NVIDIA H100\)\)"):
        sweep.run_sweep(sweep.load_spec(_probe_spec(tmp_path, "m", [4, 8])), tmp_path / "out", progress=False)


def test_a_sweep_whose_cells_ran_on_other_cpu_kernels_says_so_and_older_records_are_not_another_machine(
        monkeypatch, tmp_path) -> None:
    """AVX2 and AVX-512 kernels (torch's CPU capability) time differently: cells of both are two
    machines. A cell recorded before records named the capability is one machine with the newer
    cells of its CPU, not a second one (a sweep resumed by a newer lcbench would warn wrongly)."""
    from harness.runs import sweep

    older = {"name": "cpu", "cpu": "AMD EPYC", "cpu_count": 2}
    machine = dict(older)
    monkeypatch.setattr(sweep, "device_record", lambda device: dict(machine))
    sweep.run_sweep(sweep.load_spec(_probe_spec(tmp_path, "c", [4])), tmp_path / "out", progress=False)
    machine["cpu_capability"] = "AVX2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sweep.run_sweep(sweep.load_spec(_probe_spec(tmp_path, "c", [4, 8])), tmp_path / "out", progress=False)
    assert provenance.read_run_json(tmp_path / "out")["cell_machines"] == {"cpu (AMD EPYC, 2 cores, ATen AVX2)": 2}
    machine["cpu_capability"] = "AVX512"
    with pytest.warns(UserWarning, match=r"ran on different machines \(1 on cpu \(AMD EPYC, 2 cores\), 1 on cpu "
                                         r"\(AMD EPYC, 2 cores, ATen AVX2\), 1 on cpu \(AMD EPYC, 2 cores, ATen AVX512\)\)"):
        sweep.run_sweep(sweep.load_spec(_probe_spec(tmp_path, "c", [4, 8, 16])), tmp_path / "out", progress=False)


def _probe_spec(tmp_path, name: str, contexts: list[int]):
    """A spec file: one untrained tiny SWA model measured by the probe task at ``contexts``."""
    import yaml
    from tests import probe_tasks  # noqa: F401 - registers test_sweep_probe

    spec = {"name": name, "models": [{"arch": "swa", "untrained": True, "set": {"window": 8, "d_model": 32, "n_heads": 2,
                                                                                "mlp_hidden": 64}}],
            "tasks": [{"task": "test_sweep_probe", "grid": {"contexts": contexts}}]}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    return spec_file


def test_a_sweep_whose_cells_were_made_with_other_packages_says_so(monkeypatch, tmp_path) -> None:
    """run.json named the packages of the last run only: cells finished earlier with another torch
    (or kernel package) were shown beside new ones as if made alike."""
    from harness.runs import sweep

    packages = {"python": "3.11.7", "torch": "2.12.0"}
    monkeypatch.setattr(sweep, "package_versions", lambda: dict(packages))
    sweep.run_sweep(sweep.load_spec(_probe_spec(tmp_path, "k", [4])), tmp_path / "out", progress=False)
    assert provenance.read_run_json(tmp_path / "out")["cell_packages"] == {}
    packages.update(torch="2.13.0", triton="3.9.0")
    spec_file = _probe_spec(tmp_path, "k", [4, 8])
    with pytest.warns(UserWarning, match=r"different package versions \(torch 2\.12\.0 \(1 cells\), 2\.13\.0 \(1 cells\); "
                                         r"triton 3\.9\.0 \(1 cells\), absent \(1 cells\)\)"):
        sweep.run_sweep(sweep.load_spec(spec_file), tmp_path / "out", progress=False)
    assert provenance.read_run_json(tmp_path / "out")["cell_packages"] == {
        "torch": {"2.12.0": 1, "2.13.0": 1}, "triton": {"3.9.0": 1, "absent": 1}}


def test_cpu_count_is_the_cpus_the_run_may_use_not_the_hosts(monkeypatch) -> None:
    """A cluster job pinned to 2 of a host's 64 cores recorded "64 cores" under its claims."""
    monkeypatch.setattr(provenance.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(provenance, "own_cpus", lambda: frozenset({3, 7}))
    assert provenance.device_info("cpu")["cpu_count"] == 2
    monkeypatch.setattr(provenance, "own_cpus", lambda: None)  # the OS does not say (macOS)
    assert provenance.device_info("cpu")["cpu_count"] == 64


def test_the_config_hash_tells_seeds_and_settings_apart():
    def config_hash(seed, **settings):
        return provenance.run_metadata(seed=seed, command="x", git={}, **settings)["config_hash"]

    assert config_hash(0, task="latency") == config_hash(0, task="latency")
    assert config_hash(0, task="latency") != config_hash(1, task="latency")
    assert config_hash(0, task="latency") != config_hash(0, task="niah")


def test_a_record_without_a_cpu_capability_takes_it_only_from_records_of_the_same_cpu_and_cores() -> None:
    """An older record (no capability) is named as the newer records of its machine name it, but
    a record of another CPU model or another core count is another machine: its capability says
    nothing of the older record's (named so, cells of two machines would read as one)."""
    from harness.api.machine import machine_names

    older = {"name": "cpu", "cpu": "AMD EPYC", "cpu_count": 2}
    other_cores = {**older, "cpu_count": 4, "cpu_capability": "AVX2"}
    other_cpu = {**older, "cpu": "Intel Xeon", "cpu_capability": "AVX512"}
    assert machine_names([older, other_cores, other_cpu]) == [
        "cpu (AMD EPYC, 2 cores)", "cpu (AMD EPYC, 4 cores, ATen AVX2)", "cpu (Intel Xeon, 2 cores, ATen AVX512)"]
    same = {**older, "cpu_capability": "AVX512"}
    assert machine_names([older, other_cores, other_cpu, same])[0] == "cpu (AMD EPYC, 2 cores, ATen AVX512)"


def test_run_json_records_this_process_s_command_as_lcbench(monkeypatch) -> None:
    """Seventh mutation audit: run_metadata's default command is the invocation, not the raw argv."""
    monkeypatch.setattr(provenance.sys, "argv", ["/work/ps38/harness/cli.py", "eval", "my dir/x"])
    assert provenance.run_metadata(seed=0)["command"] == "lcbench eval 'my dir/x'"
