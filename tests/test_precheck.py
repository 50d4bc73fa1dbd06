"""Cells bound to fail for what their spec shows are refused before any model trains (a sweep)
or runs (``lcbench eval``): a kernel backend that cannot run on the device, a NIAH context too
short for its prompts. They failed as error cells only after training."""
from __future__ import annotations

import dataclasses
import glob
import itertools
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import harness.runs.evaluate as evaluate
import harness.runs.sweep as sweep_mod
from harness.api import kernels, registry
from harness.api.errors import ConfigError
from harness.cli import EXIT_USER_ERROR, main
from harness.data.tokenizers import load_tokenizer
from harness.runs.sweep import load_spec, plan, run_sweep, start_sweep
from harness.train import checkpoint
from tasks import niah
from tests.conftest import ARCHS, small_model
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


def refused_sweep(tmp_path: Path, trainings: list, models: list[dict], tasks: list[dict], **extra) -> list[str]:
    """The problems a sweep of ``models`` and ``tasks`` is refused for, having trained nothing."""
    with pytest.raises(ConfigError) as refused:
        run_sweep(load_spec(spec_file(tmp_path, models, tasks, **extra)), tmp_path / "out", progress=False)
    assert trainings == [] and not (tmp_path / "out").exists()
    return refused_lines(refused)


@pytest.fixture
def trainings(monkeypatch) -> list:
    """Every model training the sweep starts (none is run)."""
    started: list = []
    monkeypatch.setattr(sweep_mod, "train", lambda *a, **k: started.append(k["out_dir"]))
    return started


def test_a_sweep_refuses_a_niah_context_too_short_before_training(tmp_path, trainings):
    """A NIAH context shorter than its prompts' header, needles, question and answer start gave
    error cells after the model had trained; now the sweep names it and a length that fits."""
    lines = refused_sweep(tmp_path, trainings, [{"arch": "swa", "set": TINY}, {"arch": "full_attention", "set": TINY_FULL}],
                          [{"task": "niah", "options": {**NIAH_SMALL, "variants": ["multikey"]},
                            "grid": {"contexts": [[64], [1024]]}}], seeds=[0, 1])
    assert len(lines) == 1, lines  # told once for both models and seeds; the 1024 cells are fine
    assert "'contexts': [64]" in lines[0] and "niah context 64 is too short: a multikey prompt takes" in lines[0]
    options = niah.NIAHOptions(**NIAH_SMALL, variants=["multikey"], contexts=[suggested(lines[0])])
    assert niah.NIAH().check_context(options, load_tokenizer(None), [0, 1]) == []  # both seeds' prompts fit


def suggested(line: str) -> int:
    """The context a niah refusal suggests."""
    return int(line.split("the shortest context that fits every prompt drawn at it is ")[1].split()[0])


@pytest.mark.parametrize("options", [
    {**NIAH_SMALL, "variants": ["multikey"]},
    {"samples": 2, "depths": [0.0, 1.0], "variants": ["multiquery"]},
    {"samples": 2, "depths": [0.0, 0.5, 1.0], "variants": ["single", "multivalue"]},
    {"samples": 1, "depths": [0.5], "variants": ["multikey"], "value_kind": "word"},
])
def test_the_niah_refusal_suggests_the_shortest_context_that_fits_every_seed(options):
    """Prompts are drawn anew for each length and seed, so the context the refusal suggested (the
    first fixed point of "the longest need at this length") could be longer than needed (360 where
    348 fits, multikey) or fail for the sweep's other seeds (357 for seed 1 was too short for seeds
    0 and 2). It is the shortest context whose prompts fit, for every seed: every length below fails."""
    tok, seeds = load_tokenizer(None), [0, 1, 2]
    check = niah.NIAH().check_context
    fits = suggested(check(niah.NIAHOptions(**options, contexts=[64]), tok, seeds)[0])
    assert check(niah.NIAHOptions(**options, contexts=[fits]), tok, seeds) == []
    assert check(niah.NIAHOptions(**options, contexts=[fits - 1]), tok, seeds)
    builders = [niah.PromptBuilder(tok, torch.zeros(0, dtype=torch.int64), niah.NIAHOptions(**options), s) for s in seeds]
    assert all(any(b.fixed_tokens(v, h, length, d, i) > length for b in builders for v, h, d, i in b.prompts())
               for length in range(1, fits))


def test_the_niah_check_agrees_with_the_prompts_it_builds():
    """The check counts what building a prompt counts: a length it passes builds every prompt,
    one below the longest need fails to build that prompt."""
    tok = load_tokenizer(None)
    options = niah.NIAHOptions(samples=2, depths=[0.0, 1.0], contexts=[256])
    builder = niah.PromptBuilder(tok, torch.zeros(0, dtype=torch.int64), options, seed=3)
    need, variant = builder.need(256)
    assert need > 256 and niah.NIAH().check_context(options, tok, [3])
    with pytest.raises(niah.PromptTooLong):
        for depth in options.depths:
            for index in range(options.samples):
                for haystack in options.haystacks:
                    builder.build(variant, haystack, 256, depth, index)
    fine = niah.NIAHOptions(samples=2, depths=[0.0, 1.0], contexts=[need + 200])
    assert niah.NIAH().check_context(fine, tok, [3]) == []


def test_a_sweep_refuses_kernel_backends_that_cannot_run_on_its_device(tmp_path, trainings):
    """backend: flex on a CPU (and TTT-E2E's prefix_backend and inner_loss naming CUDA kernels)
    failed each cell when its model started training; now the sweep refuses them up front."""
    models = [{"arch": "swa", "set": {**TINY, "backend": "flex"}},
              {"arch": "ttt_e2e", "set": {**TINY, "mini_batch_size": 16, "prefix_backend": "flex",
                                          "inner_loss": "liger"}},
              {"arch": "full_attention", "set": TINY_FULL}]
    lines = refused_sweep(tmp_path, trainings, models, [{"task": "test_sweep_probe"}], device="cpu")
    assert len(lines) == 3, lines
    assert "'swa:" in lines[0] and "backend 'flex' is unavailable: it needs a CUDA device" in lines[0]
    assert "Use backend='sdpa'" in lines[0]
    assert "'ttt_e2e:" in lines[1] and "Use prefix_backend='sdpa'" in lines[1]
    assert "backend 'liger' is unavailable" in lines[2] and "Use inner_loss='chunked'" in lines[2]


TTT_TINY = {**TINY, "mini_batch_size": 16}


def test_a_cuda_graph_inner_step_on_a_cpu_is_refused_before_any_training(tmp_path, trainings):
    """TTT-E2E's inner_step 'cudagraph' on a CPU failed each cell at its first steady inner step,
    after the model had trained: it was no declared kernel, so the sweep's check passed it."""
    models = [{"arch": "ttt_e2e", "name": "graph", "set": {**TTT_TINY, "inner_step": "cudagraph"}},
              {"arch": "ttt_e2e", "name": "compiled_graph", "set": {**TTT_TINY, "inner_step": "compile+cudagraph"}}]
    lines = refused_sweep(tmp_path, trainings, models, [{"task": "test_sweep_probe"}], device="cpu")
    assert len(lines) == 2, lines
    assert "'graph'" in lines[0] and "inner_step backend 'cudagraph' is unavailable: it needs a CUDA device" in lines[0]
    assert "Use inner_step='eager' (runs anywhere); on cpu, inner_step takes eager, compile" in lines[0]
    assert "'compiled_graph'" in lines[1] and "Use inner_step='compile'" in lines[1]


def test_eval_refuses_a_checkpoint_with_a_cuda_graph_inner_step_on_a_cpu(tmp_path, monkeypatch):
    """`lcbench eval` of a TTT-E2E checkpoint saved with inner_step 'cudagraph' (as a GPU run
    saves it) on a CPU: refused before the task runs, exit 2."""
    ran = []
    monkeypatch.setattr(niah.NIAH, "run", lambda self, model, options, ctx: ran.append(1) or [])
    folder = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("ttt_e2e", inner_step="cudagraph"))
    result = CliRunner().invoke(main, ["eval", "niah", "--model", str(folder), "--device", "cpu", "-o", "contexts=1024",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "inner_step backend 'cudagraph' is unavailable: it needs a CUDA device" in result.output
    assert "Use inner_step='eager'" in result.output and ran == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_an_architecture_declares_is_a_value_of_a_setting_it_checks(arch):
    """A kernel no checked setting can name is never refused up front (TTT-E2E's CUDA-graph inner
    steps were no declared kernel); every checked setting says the values it takes."""
    model_class = registry.get_model_class(arch)
    choices = model_class.kernel_choices(registry.make_config(arch))
    assert all(choice.takes and choice.value in choice.takes for choice in choices.values()), choices
    named = {value for choice in choices.values() for value in choice.takes}
    assert {kernel.name for kernel in model_class.kernels} <= named


def test_a_sweep_planned_for_other_machines_checks_only_what_their_device_kind_tells(monkeypatch):
    """A cluster's login node plans GPU jobs: kernels it cannot import may run on the nodes."""
    refusals = kernels.refusals
    broken = kernels.Kernel("mixer", "fast", lambda: 1 / 0, install="pip install fast", fallback="torch")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    fast = {"backend": kernels.KernelChoice("fast", ("auto", "torch", "fast"))}
    assert refusals(fast, [broken], cuda, imports=False) == []
    assert "importing it failed (ZeroDivisionError" in refusals(fast, [broken], cuda)[0]
    assert "on cuda, backend takes auto, torch" in refusals(fast, [broken], cuda)[0]
    assert "needs a CUDA device" in refusals(fast, [broken], cpu, imports=False)[0]
    others = {"backend": kernels.KernelChoice("auto"), "other": kernels.KernelChoice("torch")}
    assert refusals(others, [broken], cpu) == []


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


def test_a_refusal_names_the_setting_s_values_that_run_there():
    """The values listed are those that run on the device: a kernel that runs there is one (so it
    is listed), one that cannot is not; where the setting's values are not said, a refusal offers
    'auto' and lists none; where they lack 'auto', it offers none. imports=False lists a kernel
    this machine cannot import (another machine may)."""
    cpu = torch.device("cpu")
    gpu = kernels.Kernel("mixer", "gpu", lambda: 1, install="pip install gpu", fallback="torch")
    here = kernels.Kernel("mixer", "here", lambda: 1, install="pip install here", fallback="torch", needs_cuda=False)
    broken = kernels.Kernel("mixer", "broken", lambda: 1 / 0, install="pip install broken", fallback="torch",
                            needs_cuda=False)
    every = [gpu, here, broken]
    [line] = kernels.refusals({"backend": kernels.KernelChoice("gpu", ("auto", "torch", "here", "broken", "gpu"))},
                              every, cpu)
    assert line.endswith("Use backend='torch' (runs anywhere) or 'auto' (the fastest backend that runs here); "
                         "on cpu, backend takes auto, torch, here"), line
    [planned] = kernels.refusals({"backend": kernels.KernelChoice("gpu", ("auto", "torch", "here", "broken", "gpu"))},
                                 every, cpu, imports=False)
    assert planned.endswith("on cpu, backend takes auto, torch, here, broken"), planned
    [unsaid] = kernels.refusals({"backend": kernels.KernelChoice("gpu")}, every, cpu)
    assert unsaid.endswith("Use backend='torch' (runs anywhere) or 'auto' (the fastest backend that runs here)"), unsaid
    [no_auto] = kernels.refusals({"step": kernels.KernelChoice("gpu", ("torch", "gpu"))}, every, cpu)
    assert no_auto.endswith("Use step='torch' (runs anywhere); on cpu, step takes torch"), no_auto


def test_the_niah_refusal_names_the_seeds_it_drew_prompts_for():
    tok, options = load_tokenizer(None), niah.NIAHOptions(**NIAH_SMALL, variants=["multikey"], contexts=[64])
    [one] = niah.NIAH().check_context(options, tok, [3])
    [two] = niah.NIAH().check_context(options, tok, [0, 2])
    assert one.endswith("(prompts are drawn anew for each length and seed; seed 3)"), one
    assert two.endswith("(prompts are drawn anew for each length and seed; seeds 0, 2)"), two


def test_a_niah_context_is_checked_for_each_tokenizer_its_models_read_with(tmp_path):
    """Two models trained with different tokenizers read one NIAH cell's prompts in different
    token counts: each is checked with its own and named, the bytes' one without a name."""
    from tests.test_own_data import write_bpe, write_corpus

    file = tmp_path / "tok" / "tokenizer.json"
    write_bpe(file)
    corpus = write_corpus(tmp_path / "books")
    spec = sweep_mod.SweepSpec.from_dict({
        "name": "tok", "train": {**TRAIN, "corpus": corpus},
        "models": [{"arch": "swa", "set": TINY}, {"arch": "swa", "name": "bpe", "set": TINY, "train": {"tokenizer": str(file)}}],
        "tasks": [{"task": "niah", "options": {**NIAH_SMALL, "variants": ["multikey"], "contexts": [64]}}]})
    with pytest.raises(ConfigError) as refused:
        sweep_mod.check_cells(plan(spec))
    lines = refused_lines(refused)
    assert len(lines) == 2, lines
    assert ": niah context 64 is too short" in lines[0]
    assert f" (tokenizer {str(file)!r}): niah context 64 is too short" in lines[1]
    assert suggested(lines[0]) != suggested(lines[1])


def test_every_prompt_of_every_seed_builds_at_the_context_the_niah_refusal_suggests():
    """Every sample of every depth and seed, built as the run builds it, fits the context
    suggested (not only the first sample's prompts)."""
    tok, seeds = load_tokenizer(None), [0, 1]
    options = niah.NIAHOptions(samples=4, depths=[0.0, 1.0], haystacks=["noise"], variants=["multikey", "single"])
    fits = suggested(niah.NIAH().check_context(dataclasses.replace(options, contexts=[64]), tok, seeds)[0])
    for seed in seeds:
        builder = niah.PromptBuilder(tok, torch.zeros(0, dtype=torch.int64), options, seed)
        for variant, depth, index in itertools.product(options.variants, options.depths, range(options.samples)):
            builder.build(variant, "noise", fits, depth, index)
# Seventh mutation audit: what the checks read (tokenizer, seed, devices, checkpoint config) and how they say it.

SINGLE = {**NIAH_SMALL, "variants": ["single"]}


def niah_bpe(path: Path) -> str:
    """A BPE tokenizer trained on NIAH's own prompt texts: a single prompt takes ~72 of its tokens
    before any haystack where it takes ~220 bytes, so a context of 128 fits it and not bytes."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    byte = load_tokenizer(None)
    options = niah.NIAHOptions(samples=4, depths=[0.0, 0.5, 1.0], haystacks=["noise"], variants=["single", "multikey"])
    texts = []
    for seed in range(3):
        builder = niah.PromptBuilder(byte, torch.zeros(0, dtype=torch.int64), options, seed)
        for variant in options.variants:
            for depth in options.depths:
                for index in range(options.samples):
                    *_, fixed, needles = builder.draw(variant, "noise", 1024, depth, index)
                    texts += [byte.decode(ids) for ids in fixed + needles]
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts * 5, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(str(path))
    bpe = load_tokenizer(str(path))
    one = niah.NIAHOptions(**SINGLE)
    assert niah.PromptBuilder(bpe, torch.zeros(0, dtype=torch.int64), one, 0).need(128)[0] <= 128
    assert niah.PromptBuilder(byte, torch.zeros(0, dtype=torch.int64), one, 0).need(128)[0] > 128
    return str(path)


def test_a_sweep_checks_niah_contexts_with_the_tokenizer_its_cells_read_with(tmp_path):
    """The model's training tokenizer, or the task's own tokenizer option, reads the prompts: a
    context that fits them is not refused for what bytes would take, and a refusal names the
    tokenizer it counted with."""
    bpe = niah_bpe(tmp_path / "tok.json")
    trained = {"arch": "swa", "set": TINY, "train": {"tokenizer": bpe}}
    fits = load_spec(spec_file(tmp_path, [trained], [{"task": "niah", "options": {**SINGLE, "contexts": [128]}}]))
    sweep_mod.check_cells(plan(fits))  # bytes need ~220 tokens at 128
    short = load_spec(spec_file(tmp_path, [trained], [{"task": "niah", "options": {**SINGLE, "contexts": [40]}}]))
    with pytest.raises(ConfigError) as refused:
        sweep_mod.check_cells(plan(short))
    assert f"(tokenizer {bpe!r}): niah context 40 is too short" in refused_lines(refused)[0]
    own = load_spec(spec_file(tmp_path, [{"arch": "swa", "set": TINY}],
                              [{"task": "niah", "options": {**SINGLE, "contexts": [128], "tokenizer": bpe}}]))
    sweep_mod.check_cells(plan(own))


def test_eval_checks_niah_contexts_with_its_tokenizer_option(tmp_path, monkeypatch):
    bpe = niah_bpe(tmp_path / "tok.json")
    ran = []
    monkeypatch.setattr(niah.NIAH, "run", lambda self, model, options, ctx: ran.append(1) or [])
    from tests.conftest import small_model
    evaluate.run_eval("niah", small_model("swa", vocab_size=512), None, {**SINGLE, "contexts": [128], "tokenizer": bpe},
                      device="cpu", progress=False)
    assert ran == [1]


def test_the_niah_check_draws_the_prompts_of_the_runs_seed(tmp_path, monkeypatch):
    """Prompts are drawn from the run's seed: at 348 tokens every multikey prompt of seed 0 fits
    and one of seed 1 does not, so eval and a sweep refuse seed 1 only."""
    ran = []
    monkeypatch.setattr(niah.NIAH, "run", lambda self, model, options, ctx: ran.append(1) or [])
    options = {**NIAH_SMALL, "variants": ["multikey"], "contexts": [348]}
    evaluate.run_eval("niah", "swa", None, options, device="cpu", seed=0, progress=False)
    assert ran == [1]
    with pytest.raises(ConfigError, match="niah context 348 is too short"):
        evaluate.run_eval("niah", "swa", None, options, device="cpu", seed=1, progress=False)
    for seeds, refused in (([0], False), ([1], True)):
        spec = load_spec(spec_file(tmp_path, [{"arch": "swa", "set": TINY}], [{"task": "niah", "options": options}],
                                   seeds=seeds))
        if refused:
            with pytest.raises(ConfigError, match="niah context 348 is too short"):
                sweep_mod.check_cells(plan(spec))
        else:
            sweep_mod.check_cells(plan(spec))


def test_eval_names_every_problem_it_found_one_a_line():
    with pytest.raises(ConfigError) as refused:
        evaluate.run_eval("niah", "swa", None, {**SINGLE, "contexts": [100]}, device="cpu", backend="flex",
                          progress=False)
    lines = refused_lines(refused)
    assert len(lines) == 2, lines
    assert "backend 'flex' is unavailable" in lines[0] and "niah context 100 is too short" in lines[1]


def test_a_checkpoints_own_config_is_checked_for_its_kernels(tmp_path):
    from harness.train import checkpoint
    from tests.conftest import small_model
    path = checkpoint.save_checkpoint(tmp_path / "ckpt", small_model("swa", backend="flex"))
    spec = load_spec(spec_file(tmp_path, [{"arch": "swa", "checkpoint": str(path)}], [{"task": "test_sweep_probe"}],
                               device="cpu"))
    with pytest.raises(ConfigError, match="backend 'flex' is unavailable: it needs a CUDA device"):
        sweep_mod.check_cells(plan(spec))


def test_kernels_are_checked_on_the_training_device_of_a_model_that_trains(tmp_path):
    """Evaluated on a GPU and trained on the CPU: flex cannot train; an untrained model only runs
    where it is evaluated."""
    flex = {**TINY, "backend": "flex"}
    tasks = [{"task": "test_sweep_probe"}]
    trained = load_spec(spec_file(tmp_path, [{"arch": "swa", "set": flex}], tasks,
                                  train={**TRAIN, "device": "cpu"}))
    with pytest.raises(ConfigError, match="backend 'flex' is unavailable: it needs a CUDA device .the device is cpu"):
        sweep_mod.check_cells(plan(trained, auto_device="cuda"))
    untrained = load_spec(spec_file(tmp_path, [{"arch": "swa", "set": flex, "untrained": True}], tasks,
                                    train={**TRAIN, "device": "cpu"}))
    sweep_mod.check_cells(plan(untrained, auto_device="cuda"))


def test_start_sweep_checks_imports_only_for_this_machines_own_sweep(tmp_path, monkeypatch):
    """A kernel that fails to import here is refused for a sweep run here, not for one planned for
    a cluster's machines (auto_device given)."""
    from baselines.attention import FLEX
    monkeypatch.setattr(FLEX, "_imported", (None, "ImportError: no triton"))
    monkeypatch.setattr(FLEX, "needs_cuda", False)
    spec = load_spec(spec_file(tmp_path, [{"arch": "swa", "set": {**TINY, "backend": "flex"}}],
                               [{"task": "test_sweep_probe"}]))
    start_sweep(spec, tmp_path / "cluster", auto_device="cuda")
    with pytest.raises(ConfigError, match="importing it failed .ImportError: no triton"):
        start_sweep(spec, tmp_path / "here")


def test_a_long_refusal_shows_twenty_problems_and_counts_the_rest(tmp_path):
    """Cells are checked whatever order their options come in (a context that fits first)."""
    grid = [[1024]] + [[n] for n in range(100, 122)]
    spec = load_spec(spec_file(tmp_path, [{"arch": "swa", "set": TINY}],
                               [{"task": "niah", "options": SINGLE, "grid": {"contexts": grid}}]))
    with pytest.raises(ConfigError) as refused:
        sweep_mod.check_cells(plan(spec))
    lines = refused_lines(refused)
    assert len(lines) == sweep_mod.MAX_PROBLEMS_SHOWN + 1 == 21, lines
    assert "niah context 100 is too short" in lines[0] and lines[-1] == "... and 2 more"


def niah_builder(seed: int = 0, **options) -> tuple[niah.NIAHOptions, niah.PromptBuilder]:
    parsed = niah.NIAHOptions(**{**NIAH_SMALL, **options})
    return parsed, niah.PromptBuilder(load_tokenizer(None), torch.zeros(0, dtype=torch.int64), parsed, seed)


def test_the_niah_check_counts_every_sample_and_names_what_the_longest_prompt_takes():
    """At 348 tokens the first multikey sample fits and the second does not."""
    one, _ = niah_builder(samples=1, variants=["multikey"], contexts=[348])
    assert niah.NIAH().check_context(one, load_tokenizer(None), [0]) == []
    two, builder = niah_builder(samples=2, variants=["multikey"], contexts=[348])
    [line] = niah.NIAH().check_context(two, load_tokenizer(None), [0])
    assert f"a multikey prompt takes {builder.need(348)[0]} tokens before any haystack" in line


def test_a_niah_context_its_prompts_fill_exactly_passes_and_builds():
    """Two single prompts at 217 tokens: the longer takes all 217 before any haystack."""
    options, builder = niah_builder(samples=2, variants=["single"], contexts=[217])
    assert builder.need(217)[0] == 217
    assert niah.NIAH().check_context(options, load_tokenizer(None), [0]) == []
    for index in range(2):
        builder.build("single", "noise", 217, 0.5, index)


def test_a_prompt_too_long_names_what_it_takes_without_haystack():
    _, builder = niah_builder(variants=["single"])
    need = builder.fixed_tokens("single", "noise", 100, 0.5, 0)
    with pytest.raises(niah.PromptTooLong, match=f"100 tokens is too short for a single prompt: it needs {need} tokens"):
        builder.build("single", "noise", 100, 0.5, 0)


def test_an_error_closes_every_progress_bar_it_left_drawn(tmp_path):
    """Closing only one of two nested bars left the other's stale line on the screen below the error."""
    from tqdm.std import tqdm

    before = set(tqdm._instances)  # bars another test left open
    result = CliRunner().invoke(main, ["eval", "test_refused_under_two_bars", "--model", "swa", "--device", "cpu",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "outer" in result.output and "inner" in result.output and "Error: the inner step is refused" in result.output
    assert set(tqdm._instances) <= before  # each bar closed (cleared), though the error's traceback still holds them
