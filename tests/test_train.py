"""The trainer: learns on the embedded corpus, resumes bit-for-bit, rejects bad settings."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from harness import data
from harness.api.errors import ConfigError
from harness.train import checkpoint
import harness.train.trainer as train_mod
from harness.train.trainer import TrainConfig, lr_at, prepare_data, train, validation_loss
from tests.conftest import small_config, small_model

FAST = dict(batch_size=4, seq_len=64, eval_every=0, eval_batches=4, lr=3e-3)


@pytest.fixture(scope="module")
def fast_data():
    return prepare_data(TrainConfig(**FAST))


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(steps=100, lr=1e-2, min_lr=1e-4, warmup_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-3)
    assert lr_at(9, cfg) == pytest.approx(1e-2)
    assert lr_at(99, cfg) == pytest.approx(1e-4, rel=0.05)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


def test_the_training_loss_of_a_float64_model_stays_float64(arch):
    """The trainer's loss was cast to float32 for every model, fp64 too: a finite-difference or
    fp64 resume check on it saw float32 rounding (1e-7 relative), not the model's numbers."""
    model = small_model(arch, dtype=torch.float64).train()
    x = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    loss = model.training_loss(x)
    assert loss.dtype == torch.float64
    assert loss.item() == model.token_losses(x).mean().item()


def test_the_progress_bar_shows_no_validation_loss_before_the_first(fast_data, capsys):
    """With validation only at the end, every step before it showed ``val=nan``, which reads as a
    diverged run."""
    train(small_config("swa"), TrainConfig(steps=3, **FAST), training_data=fast_data)
    shown = capsys.readouterr().err
    assert "val=nan" not in shown and "loss=" in shown and "val=" in shown  # the last step's


def test_token_budget_sets_steps():
    assert TrainConfig(tokens=10 * 4 * 64, batch_size=4, seq_len=64).total_steps == 10
    # a budget under one step trained one step without a word
    with pytest.raises(ConfigError, match=r"tokens=255 is less than one step's 256 tokens \(batch_size 4 x seq_len 64"):
        TrainConfig(tokens=255, batch_size=4, seq_len=64)


def test_training_loss_goes_down(arch, fast_data):
    cfg = TrainConfig(steps=30, **FAST)
    torch.manual_seed(cfg.seed)
    config = small_config(arch)
    from harness.api.registry import build_model

    before = validation_loss(build_model(config), fast_data.val, cfg, torch.device("cpu"))
    result = train(config, cfg, progress=False, training_data=fast_data)
    assert math.isfinite(result.val_loss)
    assert result.val_loss < before - 0.5, f"{arch}: val loss {before:.3f} -> {result.val_loss:.3f}"
    assert result.history[-1]["val_loss"] == result.val_loss


def test_resume_after_crash_is_bit_for_bit(tmp_path, monkeypatch, fast_data):
    cfg = TrainConfig(steps=6, save_every=3, **FAST)
    config = small_config("swa")
    straight = train(config, cfg, out_dir=tmp_path / "straight", progress=False, training_data=fast_data)

    real_save = train_mod._save

    def crash_after_first_save(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated crash right after the step-3 checkpoint")

    monkeypatch.setattr(train_mod, "_save", crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        train(config, cfg, out_dir=tmp_path / "resumed", progress=False, training_data=fast_data)
    monkeypatch.setattr(train_mod, "_save", real_save)
    assert checkpoint.load_trainer_state(tmp_path / "resumed")[0]["step"] == 3
    resumed = train(config, cfg, out_dir=tmp_path / "resumed", resume=True, progress=False, training_data=fast_data)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_evaluation_and_saving_settings_leave_the_weights_bit_identical(arch, tmp_path, fast_data):
    """What a sweep leaves out of a model's identity (``BOOKKEEPING_SETTINGS``) must not touch the
    trajectory: validating (eval mode, other batches) and saving after every step consume no
    random numbers and change no weights, so the same model comes out bit for bit."""
    quiet = TrainConfig(steps=3, **{**FAST, "eval_every": 0, "eval_batches": 4, "save_every": 0})
    busy = TrainConfig(steps=3, **{**FAST, "eval_every": 1, "eval_batches": 2, "save_every": 1})
    assert {k for k, v in quiet.to_dict().items() if busy.to_dict()[k] != v} == train_mod.BOOKKEEPING_SETTINGS
    config = small_config(arch)
    a = train(config, quiet, progress=False, training_data=fast_data)
    b = train(config, busy, out_dir=tmp_path / "saved", progress=False, training_data=fast_data)
    assert len([h for h in b.history if "val_loss" in h]) == 3  # it did validate and save every step
    assert checkpoint.load_trainer_state(tmp_path / "saved")[0]["step"] == 3
    assert a.model.state_dict().keys() == b.model.state_dict().keys()
    for name, weight in a.model.state_dict().items():
        assert torch.equal(weight, b.model.state_dict()[name]), name
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_resume_with_a_different_model_is_refused(tmp_path, fast_data):
    cfg = TrainConfig(steps=1, **FAST)
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False, training_data=fast_data)
    with pytest.raises(checkpoint.CheckpointError, match="window: 16 vs 32"):
        train(small_config("swa", window=32), cfg, out_dir=tmp_path / "c", resume=True, progress=False,
              training_data=fast_data)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(steps=0), "steps must be positive"),
        (dict(warmup_frac=1.5), "warmup_frac"),
        (dict(lr=1e-5, min_lr=1e-3), "min_lr <= lr"),
        (dict(device="tpu"), "Did you mean 'cpu'"),
        (dict(device="cpu:1"), "unsupported device 'cpu:1'"),
        (dict(dtype="fp16"), "unknown dtype 'fp16'"),
    ],
)
def test_bad_train_configs_are_clear(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**bad)


def test_a_train_config_may_name_one_gpu_and_torchrun_ranks_may_not(monkeypatch):
    """``train --device cuda:1`` was refused ("valid: auto, cpu, cuda") though ``eval`` takes it;
    under torchrun each rank uses its LOCAL_RANK GPU, so there a named GPU is refused."""
    from harness.train.distributed import DataParallel

    assert TrainConfig(device="cuda:1").device == "cuda:1"  # checked for spelling, not for a GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="under torchrun each rank uses cuda:LOCAL_RANK; give device 'cuda'"):
        DataParallel("ddp", "cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_clear(fast_data):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(small_config("swa"), TrainConfig(steps=1, device="cuda", **FAST), progress=False, training_data=fast_data)


def test_vocab_smaller_than_tokenizer_is_refused(fast_data):
    with pytest.raises(ConfigError, match="vocab_size=100 is smaller than the tokenizer's 256"):
        train(small_config("swa", vocab_size=100), TrainConfig(steps=1, **FAST), progress=False, training_data=fast_data)


def test_training_into_someone_elses_folder_is_refused_before_any_work(tmp_path, fast_data):
    users = tmp_path / "myproj"
    users.mkdir()
    (users / "thesis.tex").write_text("precious")
    cfg = TrainConfig(steps=1, **FAST)
    for resume, error, match in ((False, ConfigError, r"holds other files \(thesis\.tex\); move them away, or "
                                                      "choose another folder"), (True, checkpoint.CheckpointError,
                                                                           "nothing to resume")):
        with pytest.raises(error, match=match):
            train(small_config("swa"), cfg, out_dir=users, resume=resume, progress=False, training_data=fast_data)
    assert sorted(p.name for p in users.iterdir()) == ["thesis.tex"]


def test_training_into_a_file_is_refused_as_not_a_folder(tmp_path, fast_data):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match=r"'.*out' is a file, not a folder; choose another folder"):
        train(small_config("swa"), TrainConfig(steps=1, **FAST), out_dir=tmp_path / "out", progress=False,
              training_data=fast_data)


def test_an_existing_checkpoint_is_not_overwritten_without_resume(tmp_path, fast_data):
    cfg = TrainConfig(steps=1, **FAST)
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False, training_data=fast_data)
    with pytest.raises(ConfigError, match="pass --resume"):
        train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False, training_data=fast_data)


def test_resume_without_weights_is_refused_not_restarted(tmp_path, fast_data):
    cfg = TrainConfig(steps=1, **FAST)
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False, training_data=fast_data)
    (tmp_path / "c" / checkpoint.WEIGHTS_FILE).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="nothing to resume.*model.safetensors"):
        train(small_config("swa"), cfg, out_dir=tmp_path / "c", resume=True, progress=False, training_data=fast_data)


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_finite_loss_with_non_finite_gradients_is_divergence(tmp_path, fast_data, monkeypatch, grad_clip):
    # only the loss was checked: inf gradients turned the weights to NaN, saved as a finished checkpoint
    real = train_mod.build_model

    def build_poisoned(config):
        model = real(config)
        next(model.parameters()).register_hook(lambda g: g * math.inf)
        return model

    monkeypatch.setattr(train_mod, "build_model", build_poisoned)
    cfg = TrainConfig(steps=2, grad_clip=grad_clip, **FAST)
    with pytest.raises(FloatingPointError, match="training diverged: the gradient norm is not finite at step 1"):
        train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False, training_data=fast_data)
    assert not (tmp_path / "c" / checkpoint.WEIGHTS_FILE).exists()


def test_resume_on_a_corpus_whose_files_changed_is_refused(tmp_path):
    # the corpus was recorded by path only: a resumed run trained on whatever the path held now
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc{i}.txt").write_text(f"document {i} " * 100)
    cfg = TrainConfig(steps=1, corpus=str(corpus), val_fraction=0.5, **FAST)
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False)
    resumed = TrainConfig(**{**cfg.to_dict(), "steps": 2})
    (corpus / "doc0.txt").write_text("other text " * 100)
    with pytest.raises(checkpoint.CheckpointError, match="holds other text than when the checkpoint was saved"):
        train(small_config("swa"), resumed, out_dir=tmp_path / "c", resume=True, progress=False)
    (corpus / "doc0.txt").write_text("document 0 " * 100)  # restored: it resumes
    assert train(small_config("swa"), resumed, out_dir=tmp_path / "c", resume=True, progress=False).step == 2


@pytest.mark.parametrize("change", [dict(batch_size=2), dict(seq_len=32), dict(lr=1e-3), dict(seed=1)])
def test_resume_with_other_training_settings_is_refused(tmp_path, fast_data, change):
    # the seed orders the batches: resumed with another, the run would see other rows than it would have
    train(small_config("swa"), TrainConfig(steps=1, **FAST), out_dir=tmp_path / "c", progress=False,
          training_data=fast_data)
    name = next(iter(change))
    saved = TrainConfig(**FAST).to_dict()[name]
    with pytest.raises(checkpoint.CheckpointError, match=f"{name} {saved!r} -> {change[name]!r}"):
        train(small_config("swa"), TrainConfig(steps=2, **{**FAST, **change}), out_dir=tmp_path / "c", resume=True,
              progress=False, training_data=fast_data)


@pytest.mark.parametrize("bad, match", [
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(lr=float("inf")), "lr must be a finite number"),
    (dict(steps="five"), "steps must be an integer, got 'five'"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(seq_len=1), "seq_len must be at least 2"),
    (dict(corpus=3), "corpus must be a string or None"),
])
def test_bad_train_values_are_clear(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**bad)


def test_divergence_names_the_step_and_the_remedy(fast_data):
    # weights of 1e30 give a finite first loss but overflowing gradients: caught before they reach the weights
    with pytest.raises(FloatingPointError, match=r"training diverged: the gradient norm is not finite at step 1 of 2 "
                                                 r".*lower --lr"):
        train(small_config("swa", init_std=1e30), TrainConfig(steps=2, **FAST), progress=False,
              training_data=fast_data)


def test_grad_clip_zero_means_no_clipping(fast_data):
    # clip_grad_norm_(max_norm=0) scales every gradient to zero: the model would not learn at all
    batch = [fast_data.train[:4]]
    after = {}
    for clip in (0.0, 1e30):  # 1e30: far above any gradient norm, so nothing is clipped
        torch.manual_seed(0)
        model = train_mod.build_model(small_config("swa"))
        train_mod.training_step(model, train_mod.make_optimizer(model, TrainConfig()), batch, clip, None)
        after[clip] = model.state_dict()
    for name, value in after[0.0].items():
        assert torch.equal(value, after[1e30][name]), name


def test_resuming_a_checkpoint_past_the_budget_reports_its_own_step(tmp_path, fast_data):
    train(small_config("swa"), TrainConfig(steps=3, **FAST), out_dir=tmp_path / "c", progress=False,
          training_data=fast_data)
    result = train(small_config("swa"), TrainConfig(steps=1, **FAST), out_dir=tmp_path / "c", resume=True,
                   progress=False, training_data=fast_data)
    assert result.step == len(result.history) == 3  # the model trained 3 steps, not the 1 asked for


@pytest.mark.parametrize("change, match", [
    (dict(val_fraction=0.0), r"\(val_fraction=0\.0\) leaves no validation documents"),
    (dict(corpus="one.txt"), r"corpus's 1 document\(s\).*leaves no (training|validation) documents"),
])
def test_a_split_with_an_empty_side_is_clear(tmp_path, change, match):
    (tmp_path / "one.txt").write_text("the one document of this corpus\n" * 200)
    if "corpus" in change:
        change = dict(corpus=str(tmp_path / change["corpus"]))
    with pytest.raises(ConfigError, match=match):
        prepare_data(TrainConfig(**{**FAST, **change}))


def test_a_split_side_too_short_for_one_row_is_named(tmp_path):
    for i in range(20):  # distinct texts: copies of one text fall on one side of the split
        (tmp_path / f"doc{i}.txt").write_text(f"{i:02d}" + "x" * 98)
    seq_len = 100 * len(data.split_documents(data.load_corpus(str(tmp_path)), 0.1, 0)[0])  # the training side's size
    with pytest.raises(ConfigError, match=r"the validation split \(\d+ documents\): the documents hold \d+ tokens"):
        prepare_data(TrainConfig(**{**FAST, "seq_len": seq_len, "corpus": str(tmp_path)}))


def test_documents_are_separated_by_the_tokenizers_end_token(tmp_path):
    from tests.test_data import _write_tokenizer_json

    _write_tokenizer_json(tmp_path / "tokenizer.json")
    tok = data.load_tokenizer(str(tmp_path / "tokenizer.json"))
    (tmp_path / "corpus").mkdir()
    for i in range(6):
        (tmp_path / "corpus" / f"d{i}.txt").write_text(f"the quick brown fox {i} " * (i + 3))
    cfg = TrainConfig(**{**FAST, "seq_len": 4, "val_fraction": 0.5, "corpus": str(tmp_path / "corpus"),
                         "tokenizer": str(tmp_path / "tokenizer.json")})
    prepared = prepare_data(cfg)
    for rows, docs in zip((prepared.train, prepared.val),
                          data.split_documents(data.load_corpus(cfg.corpus), 0.5, cfg.data_split_seed)):
        laid_out = torch.tensor([t for d in docs for t in tok.encode(d.text) + [tok.eos_id]])
        assert torch.equal(rows.flatten(), laid_out[: rows.numel()])  # each document ends with EOS


@pytest.mark.parametrize("edit, match", [
    (lambda state: [state], r"trainer\.json is damaged \(a JSON list, not an object\)"),
    (lambda state: {k: v for k, v in state.items() if k != "rng"}, r"trainer\.json is damaged: it lacks 'rng'"),
])
def test_resume_from_a_damaged_trainer_json_is_clear(tmp_path, fast_data, edit, match):
    import json

    cfg = TrainConfig(steps=1, **FAST)
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False, training_data=fast_data)
    file = tmp_path / "c" / checkpoint.TRAINER_FILE
    file.write_text(json.dumps(edit(json.loads(file.read_text()))))
    with pytest.raises(checkpoint.CheckpointError, match=match):
        train(small_config("swa"), cfg, out_dir=tmp_path / "c", resume=True, progress=False, training_data=fast_data)


def test_tokens_per_s_counts_training_time_only(tmp_path, fast_data, monkeypatch):
    # the clock ran from the start through validation and checkpoint writes: a run validating or
    # saving often reported a fraction of its training throughput
    clock = [0.0]

    def costing(seconds, real):
        def timed(*args, **kwargs):
            clock[0] += seconds
            return real(*args, **kwargs)
        return timed

    monkeypatch.setattr(train_mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(train_mod, "training_step", costing(1.0, train_mod.training_step))
    monkeypatch.setattr(train_mod, "validation_loss", costing(50.0, train_mod.validation_loss))
    monkeypatch.setattr(train_mod, "_save", costing(50.0, train_mod._save))
    cfg = TrainConfig(steps=4, **{**FAST, "eval_every": 1}, save_every=2)
    result = train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False, training_data=fast_data)
    assert [h["tokens_per_s"] for h in result.history] == [cfg.tokens_per_step] * cfg.steps  # one step a second
    assert result.tokens_per_s == cfg.tokens_per_step


def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(tmp_path, fast_data, monkeypatch):
    # optimizer.pt kept its tensors' CUDA device: without a GPU torch.load refused it, reported as
    # "the checkpoint is corrupted", though the device is a setting a resumed run may change
    cfg = TrainConfig(steps=1, **FAST)
    train(small_config("swa"), cfg, out_dir=tmp_path / "c", progress=False, training_data=fast_data)
    optimizer_file = tmp_path / "c" / checkpoint.OPTIMIZER_FILE
    state = torch.load(optimizer_file, weights_only=True)
    monkeypatch.setattr(torch.serialization, "_package_registry", list(torch.serialization._package_registry))
    torch.serialization.register_package(0, lambda storage: "cuda:0", lambda storage, location: None)
    torch.save(state, optimizer_file)  # as a CUDA run writes it: every storage tagged cuda:0
    monkeypatch.undo()
    checkpoint.write_checksums(tmp_path / "c", [checkpoint.WEIGHTS_FILE, checkpoint.OPTIMIZER_FILE])
    resumed = train(small_config("swa"), TrainConfig(steps=2, **FAST), out_dir=tmp_path / "c", resume=True,
                    progress=False, training_data=fast_data)
    assert resumed.step == 2


def test_the_cosine_decay_starts_at_the_peak_and_halves_midway():
    # the decay counted from step 0, not from the end of warm-up: it started below the peak
    cfg = TrainConfig(steps=100, lr=1e-2, min_lr=1e-4, warmup_frac=0.1)  # 10 warm-up steps, 90 decay steps
    assert lr_at(10, cfg) == pytest.approx(cfg.lr)
    assert lr_at(10 + 45, cfg) == pytest.approx((cfg.lr + cfg.min_lr) / 2)


def test_a_token_budget_counts_every_micro_batch():
    # grad_accum micro-batches make one step: a budget ignoring them trained grad_accum times the tokens
    cfg = TrainConfig(tokens=10 * 4 * 64 * 3, batch_size=4, seq_len=64, grad_accum=3)
    assert cfg.tokens_per_step == 4 * 64 * 3 and cfg.total_steps == 10


def test_micro_batches_walk_through_the_rows_once_per_epoch(monkeypatch):
    # each micro-batch must be the next batch of the epoch: indexing them by step + micro fed step
    # s's second micro-batch again as step s + 1's first, and left rows unseen
    rows = torch.arange(12 * 8).view(12, 8)  # 12 rows: 3 steps x 2 micro-batches x 2 rows is one epoch
    seen = []

    def record(model, optimizer, batches, *args, **kwargs):
        seen.extend(batch[:, 0].tolist() for batch in batches)
        return 1.0

    monkeypatch.setattr(train_mod, "training_step", record)
    monkeypatch.setattr(train_mod, "validation_loss", lambda *args, **kwargs: 1.0)
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=8, grad_accum=2, eval_every=0)
    train(small_config("swa"), cfg, progress=False, training_data=train_mod.TrainingData(rows, rows, 256))
    assert len(seen) == 6 and sorted(sum(seen, [])) == rows[:, 0].tolist()


def test_validation_loss_is_the_mean_over_the_rows_it_reads():
    # each batch's mean loss is weighted by its rows: a short last batch counts as its rows, not as a batch
    model = small_model("swa", dtype=torch.float64)
    val = torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(batch_size=2, seq_len=32, eval_batches=4)  # reads all 5 rows: batches of 2, 2 and 1
    expected = model.token_losses(val).mean().item()
    assert validation_loss(model, val, cfg, torch.device("cpu")) == pytest.approx(expected, rel=1e-9)


def test_a_step_over_micro_batches_follows_their_mean_loss():
    # each micro-batch's loss is divided by their number: the step is the mean's (SGD shows the scale
    # that AdamW hides), and the loss reported is the mean
    torch.manual_seed(0)
    model = small_model("swa", dtype=torch.float64).train()
    batches = [torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    mean = sum(model.training_loss(b) for b in batches) / 2
    grads = torch.autograd.grad(mean, list(model.parameters()))
    expected = [(p - 0.5 * g).detach() for p, g in zip(model.parameters(), grads)]
    loss = train_mod.training_step(model, torch.optim.SGD(model.parameters(), lr=0.5), batches, 0.0, None)
    assert loss == pytest.approx(mean.item(), rel=1e-12)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def test_gradients_are_clipped_to_the_max_norm():
    model = small_model("swa", dtype=torch.float64).train()
    before = [p.detach().clone() for p in model.parameters()]
    batch = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    train_mod.training_step(model, torch.optim.SGD(model.parameters(), lr=1.0), [batch], 1e-3, None)
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert update.norm().item() == pytest.approx(1e-3, rel=1e-5)  # SGD at lr 1: the step is the clipped gradient


def test_a_step_budget_given_on_resume_replaces_a_saved_token_budget(tmp_path):
    # the saved token budget outranked the --steps given: the resumed run stopped where it had been going to
    saved = TrainConfig(tokens=8 * 4 * 64, **FAST)
    (tmp_path / checkpoint.TRAINER_FILE).write_text(json.dumps({"train_config": saved.to_dict()}))
    assert train_mod.resume_config(tmp_path, {}).total_steps == 8
    assert train_mod.resume_config(tmp_path, {"steps": 12}).total_steps == 12


def test_a_resumed_run_tells_the_model_its_step_in_the_whole_run(tmp_path, monkeypatch, fast_data):
    # TTT-E2E's inner-lr warm-up reads it: counted from the resumed step, the warm-up would start over
    calls = []
    real_build = train_mod.build_model

    def build(config):
        model = real_build(config)
        model.on_train_step = lambda step, total: calls.append((step, total))
        return model

    monkeypatch.setattr(train_mod, "build_model", build)
    config = small_config("swa")
    train(config, TrainConfig(steps=2, **FAST), out_dir=tmp_path / "c", progress=False, training_data=fast_data)
    train(config, TrainConfig(steps=4, **FAST), out_dir=tmp_path / "c", resume=True, progress=False,
          training_data=fast_data)
    assert calls == [(0, 2), (1, 2), (2, 4), (3, 4)]


def test_each_rank_weighs_its_share_of_a_batch_and_an_empty_share_weighs_nothing():
    """Validation on 3 ranks of a 2-row batch: ranks 0 and 1 score a row each; rank 2 still runs one
    row (every rank takes part in every collective) but it must weigh nothing in the mean."""
    from harness.train.distributed import Replicas, share_of

    batch = torch.arange(2).reshape(2, 1)
    shares = []
    for rank in range(3):
        replicas = Replicas()
        replicas.rank, replicas.world_size = rank, 3
        shares.append(share_of(replicas, batch))
    assert [s.weight for s in shares] == [1, 1, 0] and len(shares[2].rows) == 1
    assert [s.rows.tolist() for s in shares[:2]] == [[[0]], [[1]]]


def test_each_rank_trains_on_its_own_block_of_rows_and_an_uneven_batch_is_refused():
    """Rank r of n takes rows [r*b/n, (r+1)*b/n) of the one-process batch; a batch that does not
    split evenly would leave rows untrained on every step, so it is refused by name."""
    from harness.train.distributed import DataParallel, SingleProcess

    assert SingleProcess("cpu").is_main  # the one process reports (progress bars, logs)
    rank = object.__new__(DataParallel)  # a rank's arithmetic, without a process group
    rank.rank, rank.world_size = 1, 2
    assert not rank.is_main
    assert rank.shard(torch.arange(4).reshape(4, 1)).flatten().tolist() == [2, 3]
    with pytest.raises(ConfigError, match="a batch of 3 rows does not split evenly over 2 processes"):
        rank.shard(torch.arange(3).reshape(3, 1))
