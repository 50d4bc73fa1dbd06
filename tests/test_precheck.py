"""Cells bound to fail for what their spec shows are refused before any model trains (a sweep)
or runs (``lcbench eval``): a kernel backend that cannot run on the device, a NIAH context too
short for its prompts. They failed as error cells only after training."""
from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import harness.runs.evaluate as evaluate
import harness.runs.sweep as sweep_mod
from harness.api import kernels
from harness.api.errors import ConfigError
from harness.cli import EXIT_USER_ERROR, main
from harness.data.tokenizers import load_tokenizer
from harness.runs.sweep import load_spec, plan, run_sweep, start_sweep
from tasks import niah
from tests import probe_tasks  # noqa: F401 - registers test_refused_mid_bar

ROOT = Path(__file__).resolve().parent.parent
TINY = {"window": 8, "d_model": 32, "n_heads": 2, "mlp_hidden": 64}
TINY_FULL = {k: v for k, v in TINY.items() if k != "window"}  # full_attention has no window
TRAIN = {"steps": 1, "batch_size": 2, "seq_len": 32, "eval_batches": 1, "eval_every": 0}
NIAH_SMALL = {"samples": 1, "depths": [0.5], "haystacks": ["noise"]}


def spec_file(tmp_path: Path, models: list[dict], tasks: list[dict], **extra) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "pre", "train": TRAIN, "models": models, "tasks": tasks, **extra}))
    return path


def refused_lines(error: pytest.ExceptionInfo) -> list[str]:
    """The problems a refusal names, one a line."""
    header, _, problems = str(error.value).partition("would fail, so nothing ran:")
    return [line.strip() for line in problems.strip().splitlines()]


@pytest.fixture
def trainings(monkeypatch) -> list:
    """Every model training the sweep starts (none is run)."""
    started: list = []
    monkeypatch.setattr(sweep_mod, "train", lambda *a, **k: started.append(k["out_dir"]))
    return started


def test_a_sweep_refuses_a_niah_context_too_short_before_training(tmp_path, trainings):
    """A NIAH context shorter than its prompts' header, needles, question and answer start gave
    error cells after the model had trained; now the sweep names it and a length that fits."""
    spec = load_spec(spec_file(tmp_path, [{"arch": "swa", "set": TINY}, {"arch": "full_attention", "set": TINY_FULL}],
                               [{"task": "niah", "options": {**NIAH_SMALL, "variants": ["multikey"]},
                                 "grid": {"contexts": [[64], [1024]]}}], seeds=[0, 1]))
    with pytest.raises(ConfigError) as refused:
        run_sweep(spec, tmp_path / "out", progress=False)
    assert trainings == [] and not (tmp_path / "out").exists()
    lines = refused_lines(refused)
    assert len(lines) == 1, lines  # told once for both models and seeds; the 1024 cells are fine
    assert "'contexts': [64]" in lines[0] and "niah context 64 is too short: a multikey prompt takes" in lines[0]
    fits = int(lines[0].split("a context of ")[1].split()[0])
    options = niah.NIAHOptions(**NIAH_SMALL, variants=["multikey"], contexts=[fits])
    assert niah.NIAH().check_context(options, load_tokenizer(None), 0) == []


def test_the_niah_check_agrees_with_the_prompts_it_builds():
    """The check counts what building a prompt counts: a length it passes builds every prompt,
    one below the longest need fails to build that prompt."""
    tok = load_tokenizer(None)
    options = niah.NIAHOptions(samples=2, depths=[0.0, 1.0], contexts=[256])
    builder = niah.PromptBuilder(tok, torch.zeros(0, dtype=torch.int64), options, seed=3)
    need, variant = builder.need(256)
    assert need > 256 and niah.NIAH().check_context(options, tok, 3)
    with pytest.raises(niah.PromptTooLong):
        for depth in options.depths:
            for index in range(options.samples):
                for haystack in options.haystacks:
                    builder.build(variant, haystack, 256, depth, index)
    fine = niah.NIAHOptions(samples=2, depths=[0.0, 1.0], contexts=[need + 200])
    assert niah.NIAH().check_context(fine, tok, 3) == []


def test_a_sweep_refuses_kernel_backends_that_cannot_run_on_its_device(tmp_path, trainings):
    """backend: flex on a CPU (and TTT-E2E's prefix_backend and inner_loss naming CUDA kernels)
    failed each cell when its model started training; now the sweep refuses them up front."""
    models = [{"arch": "swa", "set": {**TINY, "backend": "flex"}},
              {"arch": "ttt_e2e", "set": {**TINY, "mini_batch_size": 16, "prefix_backend": "flex",
                                          "inner_loss": "liger"}},
              {"arch": "full_attention", "set": TINY_FULL}]
    spec = load_spec(spec_file(tmp_path, models, [{"task": "test_sweep_probe"}], device="cpu"))
    with pytest.raises(ConfigError) as refused:
        run_sweep(spec, tmp_path / "out", progress=False)
    assert trainings == [] and not (tmp_path / "out").exists()
    lines = refused_lines(refused)
    assert len(lines) == 3, lines
    assert "'swa:" in lines[0] and "backend 'flex' is unavailable: it needs a CUDA device" in lines[0]
    assert "Use backend='sdpa'" in lines[0]
    assert "'ttt_e2e:" in lines[1] and "Use prefix_backend='sdpa'" in lines[1]
    assert "backend 'liger' is unavailable" in lines[2] and "Use inner_loss='chunked'" in lines[2]


def test_a_sweep_planned_for_other_machines_checks_only_what_their_device_kind_tells(monkeypatch):
    """A cluster's login node plans GPU jobs: kernels it cannot import may run on the nodes."""
    refusals = kernels.refusals
    broken = kernels.Kernel("mixer", "fast", lambda: 1 / 0, install="pip install fast", fallback="torch")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert refusals({"backend": "fast"}, [broken], cuda, imports=False) == []
    assert "importing it failed (ZeroDivisionError" in refusals({"backend": "fast"}, [broken], cuda)[0]
    assert "needs a CUDA device" in refusals({"backend": "fast"}, [broken], cpu, imports=False)[0]
    assert refusals({"backend": "auto", "other": "torch"}, [broken], cpu) == []


def test_every_committed_spec_plans_as_before_and_passes_the_checks(tmp_path, monkeypatch):
    """The checks refuse nothing of results/specs, and start_sweep plans the cells plan() does."""
    monkeypatch.setattr(sweep_mod, "prepare_output", lambda out, what: Path(out))  # no folder needed
    monkeypatch.setattr(sweep_mod, "record_spec", lambda spec, out: None)
    monkeypatch.setattr(sweep_mod.results, "atomic_write", lambda *a, **k: None)
    monkeypatch.setattr(sweep_mod, "unfinished", lambda cells, out, retry=False: cells)
    specs = sorted(glob.glob(str(ROOT / "results" / "specs" / "*.yaml")))
    assert len(specs) >= 7
    for path in specs:
        spec = load_spec(path)
        planned = plan(spec)
        _, cells, _ = start_sweep(spec, tmp_path / "out")
        assert [(c.key, c.task, c.options, c.seed) for c in cells] == [(c.key, c.task, c.options, c.seed)
                                                                       for c in planned], path
        sweep_mod.check_cells(planned)


def test_eval_refuses_a_short_niah_context_and_an_unrunnable_backend_before_the_task(monkeypatch):
    ran = []
    monkeypatch.setattr(niah.NIAH, "run", lambda self, model, options, ctx: ran.append(1) or [])
    with pytest.raises(ConfigError, match="niah context 100 is too short: a single prompt takes"):
        evaluate.run_eval("niah", "swa", None, {**NIAH_SMALL, "contexts": [100, 1024], "variants": ["single"]},
                          device="cpu", progress=False)
    with pytest.raises(ConfigError, match="backend 'flex' is unavailable: it needs a CUDA device.*Use backend='sdpa'"):
        evaluate.run_eval("niah", "swa", None, {**NIAH_SMALL, "contexts": [1024]}, device="cpu", backend="flex",
                          progress=False)
    assert ran == []


def test_an_error_starts_its_own_line_not_the_end_of_a_progress_bar(tmp_path):
    """The error of `lcbench eval --backend flex` on a CPU was printed on the end of the task's
    progress bar (a bar's line ends in a carriage return)."""
    result = CliRunner().invoke(main, ["eval", "test_refused_mid_bar", "--model", "swa", "--device", "cpu",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "probe" in result.output  # the bar was drawn
    before = result.output[:result.output.index("Error: the second step is refused")]
    assert before.endswith(("\n", "\r")), repr(before[-80:])
