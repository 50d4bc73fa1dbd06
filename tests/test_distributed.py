"""Data-parallel training on CPU: 2 gloo processes launched by torchrun against 1 process.

What 2 ranks compute differs from what 1 process computes only in the order of floating-point
sums (each rank averages its half of the batch, then the halves are averaged across ranks). The
one-process run with the same rows split into two accumulation micro-batches makes exactly that
reordering inside one process, so its distance from the plain one-process run is the measured
size of the reordering; the 2-process run must lie within a few times it. Measured (2-core CPU,
torch 2.13): after 4 steps at lr 1e-2 the reordering moves weights by 1.5e-5 (mamba2) to 3.7e-4
(gated_deltanet) and losses by 1e-6 to 1e-5, and every 2-process run (FSDP2 and DDP) lies at
1.0-1.1 times that distance.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.api import registry
from harness.train import checkpoint
from harness.train.trainer import TrainConfig, train
from tests.conftest import small_config

REPO = Path(__file__).resolve().parent.parent
STEPS = 4
# b rows per rank on 2 ranks = 2b rows in one process; short sequences keep each step cheap
TRAIN = dict(steps=STEPS, batch_size=4, seq_len=32, eval_every=2, eval_batches=2, lr=1e-2, warmup_frac=0.25)
# the measured reordering noise grows through the steps; weights that differ by more than this
# many times it are a real difference (a wrong shard, a missing all-reduce, a doubled gradient)
NOISE_FACTOR = 8.0
# float32 losses of the same rows summed in another order differ in their last bits; a distance
# below this is equality (it only matters where the measured reordering is exactly zero)
FLOAT32_FLOOR = 1e-6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("corpus")
    for name in ("json", "csv", "textwrap", "string"):  # real text, a few KB each
        source = Path(__import__(name).__file__)
        (folder / f"{name}.txt").write_text(source.read_text()[:6000])
    return str(folder)


def worker_env() -> dict[str, str]:
    """The ranks' environment: this checkout first on the path, then the caller's (the GPU kit's
    installed lcbench, whose entry points register the architectures, and its kernel packages)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def torchrun(nproc: int, jobs: list[dict], tmp: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    jobs_file = tmp / f"jobs-{len(list(tmp.glob('jobs-*')))}.json"
    jobs_file.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(REPO / "tests" / "distributed_worker.py"), str(jobs_file)]
    return subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=timeout, cwd=tmp)


def test_ranks_keep_the_callers_python_path(monkeypatch):
    """The GPU kit installs lcbench into a folder of its own on PYTHONPATH: ranks that lost it
    found no entry points, so no architecture ('swa' is not a registered architecture)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/kit/site", "/more"]))
    assert worker_env()["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/kit/site", "/more"]


def job(arch: str, corpus: str, out: Path, parallel: str = "fsdp", **train_fields) -> dict:
    return {"config": small_config(arch).to_dict(), "train": {**TRAIN, "corpus": corpus, **train_fields},
            "out": str(out), "parallel": parallel, "report": str(out) + ".json"}


def one_process(arch: str, corpus: str, **train_fields):
    return train(small_config(arch), TrainConfig(**{**TRAIN, "corpus": corpus, **train_fields}), progress=False,
                 parallel="none")


def reordered(arch: str, corpus: str, **train_fields):
    """The one-process run with each step's rows in two accumulation micro-batches (validation
    in batches of the same size: twice as many, so the same rows)."""
    return one_process(arch, corpus, **{**train_fields, "batch_size": TRAIN["batch_size"] // 2, "grad_accum": 2,
                                        "eval_batches": 2 * TRAIN["eval_batches"]})


def weight_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def loss_distance(a: list[dict], b: list[dict]) -> float:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    keys = ("loss", "val_loss")
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys if k in x)


def check_matches(report: Path, ckpt: Path, single, reordered_run) -> None:
    """The 2-process run (report + sharded checkpoint) against the 1-process run."""
    assert checkpoint.is_sharded(ckpt)
    dist_history = json.loads(report.read_text())["history"]
    dist_weights = checkpoint.load_model(ckpt).state_dict()  # a sharded checkpoint, loaded in one process
    single_weights = single.model.state_dict()
    weight_noise = max(weight_distance(reordered_run.model.state_dict(), single_weights), FLOAT32_FLOOR)
    loss_noise = max(loss_distance(reordered_run.history, single.history), FLOAT32_FLOOR)
    assert weight_distance(dist_weights, single_weights) <= NOISE_FACTOR * weight_noise
    assert loss_distance(dist_history, single.history) <= NOISE_FACTOR * loss_noise


KILLED_STEPS = 6  # the killed run: checkpoints every 2 steps, rank 1 dies at step 5
DDP_ARCH = "swa"


@pytest.fixture(scope="module")
def killed_run(corpus, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("killed")
    killed = job("swa", corpus, tmp / "run", steps=KILLED_STEPS, save_every=2)
    killed["kill"] = [1, 4]
    return torchrun(2, [killed], tmp), tmp / "run"


@pytest.fixture(scope="module")
def two_rank_runs(corpus, killed_run, tmp_path_factory) -> Path:
    """One torchrun launch (start-up dominates on CPU) for every 2-process run the slow tests read:
    each architecture with FSDP2, DDP, and the killed run resumed (accumulation: quick_runs)."""
    tmp = tmp_path_factory.mktemp("two-ranks")
    jobs = [job(arch, corpus, tmp / f"{arch}-fsdp") for arch in registry.model_names()]
    jobs.append(job(DDP_ARCH, corpus, tmp / f"{DDP_ARCH}-ddp", "ddp"))
    shutil.copytree(killed_run[1], tmp / "resumed")
    jobs.append({**job("swa", corpus, tmp / "resumed", steps=KILLED_STEPS, save_every=2), "resume": True})
    done = torchrun(2, jobs, tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("arch", registry.model_names())
def test_two_processes_train_like_one(arch, corpus, two_rank_runs):
    single = one_process(arch, corpus)
    reordering = reordered(arch, corpus)
    for parallel in ("fsdp", "ddp") if arch == DDP_ARCH else ("fsdp",):
        out = two_rank_runs / f"{arch}-{parallel}"
        check_matches(Path(str(out) + ".json"), out, single, reordering)


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_run_with_the_last_checkpoint_intact(killed_run):
    done, out = killed_run
    assert done.returncode != 0
    # torchrun's report names the failed rank and its exit code (-9: SIGKILL)
    assert "rank      : 1" in done.stderr and "exitcode  : -9" in done.stderr, done.stderr[-3000:]
    state, _ = checkpoint.load_trainer_state(out)
    assert state["step"] == 4 and state["world_size"] == 2 and checkpoint.is_sharded(out)
    assert not list(out.parent.glob(".run.tmp-*"))  # no save was under way


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_two_and_on_one(corpus, killed_run, two_rank_runs):
    single = one_process("swa", corpus, steps=KILLED_STEPS)
    reordering = reordered("swa", corpus, steps=KILLED_STEPS)
    check_matches(two_rank_runs / "resumed.json", two_rank_runs / "resumed", single, reordering)
    # in one plain process (no torchrun): DCP reshards the 2 ranks' state into one
    on_one = two_rank_runs / "on-one"
    shutil.copytree(killed_run[1], on_one)
    result = train(small_config("swa"), TrainConfig(**{**TRAIN, "corpus": corpus, "steps": KILLED_STEPS}),
                   out_dir=on_one, resume=True, progress=False, parallel="none")
    assert [r["step"] for r in result.history] == list(range(1, KILLED_STEPS + 1))
    weight_noise = max(weight_distance(reordering.model.state_dict(), single.model.state_dict()), FLOAT32_FLOOR)
    assert weight_distance(result.model.state_dict(), single.model.state_dict()) <= NOISE_FACTOR * weight_noise
    loss_noise = max(loss_distance(reordering.history, single.history), FLOAT32_FLOOR)
    assert loss_distance(result.history, single.history) <= NOISE_FACTOR * loss_noise


def test_parallel_training_outside_torchrun_is_a_clear_error(monkeypatch):
    from harness.api.errors import ConfigError
    from harness.train.distributed import start

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        start("fsdp", "cpu")
    assert start("auto", "cpu").world_size == 1
    with pytest.raises(Exception, match="Did you mean 'fsdp'"):
        start("fsd", "cpu")


@pytest.mark.slow
def test_a_sharded_checkpoint_is_checksummed_and_hashed_by_content(killed_run, tmp_path):
    _, out = killed_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    recorded = json.loads((copy / checkpoint.CHECKSUMS_FILE).read_text())
    shards = sorted(p.relative_to(copy).as_posix() for p in (copy / checkpoint.SHARDED_DIR).iterdir())
    assert sorted(recorded) == shards and len(shards) >= 3  # metadata and one file per rank
    assert checkpoint.content_hash(copy) == checkpoint.content_hash(out)  # the content, not the folder
    rank_file = copy / next(name for name in shards if name.endswith(".distcp"))
    data = bytearray(rank_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rank_file.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="does not match the checksum"):
        checkpoint.load_model(copy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["swa", "ttt_e2e"])
def test_fsdp2_on_one_gpu_with_bf16_autocast_trains_like_the_plain_trainer(arch, corpus, tmp_path):
    """NCCL, FSDP2 and bf16 autocast (fp32 parameters) under torchrun on one GPU: the same rows as
    the plain one-process trainer, so the same losses within a few times the rounding noise that
    reordering the sums makes (measured here on the GPU, as on CPU above), and a sharded
    checkpoint that loads in one process. Runs in the GPU kit's ``pytest -m gpu`` step."""
    gpu = {"device": "cuda", "dtype": "bf16"}
    done = torchrun(1, [job(arch, corpus, tmp_path / "run", "fsdp", **gpu)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = one_process(arch, corpus, **gpu)
    fsdp_history = json.loads((tmp_path / "run.json").read_text())["history"]
    assert checkpoint.is_sharded(tmp_path / "run")
    loaded = checkpoint.load_model(tmp_path / "run").state_dict()
    assert all(torch.isfinite(t.float()).all() for t in loaded.values())
    noise = max(loss_distance(reordered(arch, corpus, **gpu).history, plain.history), FLOAT32_FLOOR)
    assert loss_distance(fsdp_history, plain.history) <= NOISE_FACTOR * noise


def test_auto_shards_only_over_more_than_one_process(monkeypatch):
    """torchrun with one process is a plain run: FSDP2 over one rank would only add its overhead."""
    from harness.train.distributed import resolve_parallel

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_parallel("auto") == "none"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_parallel("auto") == "fsdp" and resolve_parallel("ddp") == "ddp"
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_parallel("auto") == "none"


# Not slow: one torchrun launch of 2 gloo ranks, swa only, 2 steps of 2 accumulation micro-batches
# of 1 row per rank on 16 tokens, with FSDP2 and with DDP, against one process. The slow tests above
# are left out of a plain test run, so without this one a rank's rows dropped or read twice,
# gradients left unsynchronised (or synchronised before the last micro-batch only), the training or
# validation loss reported from one rank or summed over ranks, a different initialisation or batch
# per rank, or a checkpoint not sharded passed every test CI runs (the fourth mutation audit).
QUICK = dict(steps=2, batch_size=2, grad_accum=2, seq_len=16, eval_every=1, eval_batches=2)


@pytest.fixture(scope="module")
def quick_runs(corpus, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("quick")
    done = torchrun(2, [job("swa", corpus, tmp / parallel, parallel, **QUICK) for parallel in ("fsdp", "ddp")], tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_ranks_with_accumulation_train_and_report_like_one_process(parallel, corpus, quick_runs):
    # one process: each step's 4 rows in one micro-batch (plain) and in two (the reordering noise)
    single = one_process("swa", corpus, **{**QUICK, "batch_size": 4, "grad_accum": 1, "eval_batches": 1})
    check_matches(quick_runs / f"{parallel}.json", quick_runs / parallel, single, one_process("swa", corpus, **QUICK))


def test_only_global_rank_0_reports(monkeypatch):
    """``lcbench train`` under torchrun prints its result on rank 0 alone: on a second node the
    first local rank is global rank 2, and must stay quiet."""
    from harness.train.distributed import is_main_process

    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.delenv("RANK")
    assert is_main_process()  # a plain process reports
