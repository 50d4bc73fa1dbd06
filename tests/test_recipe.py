"""The official TTT-E2E training recipe (``TrainConfig.recipe = "official"``), checked against a
step-by-step reading of the official JAX code (github test-time-training/e2e) and of the optax
version its uv.lock pins (0.2.4); the default recipe, lcbench's, stays as it was."""
from __future__ import annotations

import json
import math

import pytest
import torch

from harness.api.errors import ConfigError
from harness.api.recipe import RECIPES, official_warmup_steps, warmup_length
from harness.train import checkpoint
from harness.train.trainer import TrainConfig, lr_at, make_optimizer, prepare_data, resume_config, train
from tests.conftest import small_config, small_model

FAST = dict(batch_size=4, seq_len=64, eval_every=0, eval_batches=4, lr=3e-3)


@pytest.fixture(scope="module")
def fast_data():
    return prepare_data(TrainConfig(**FAST))


def optax_warmup_cosine_decay(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                              end_value: float):
    """optax 0.2.4, optax/schedules/_schedule.py ``warmup_cosine_decay_schedule``, as written there
    (in float64; JAX computes it in float32), with the pieces it joins:"""
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value

    def linear(count):  # linear_schedule = polynomial_schedule(power=1, transition_steps=warmup_steps)
        if warmup_steps <= 0:  # "results in a constant schedule with value init_value"
            return init_value
        count = min(max(count - 0, 0), warmup_steps)  # jnp.clip(count - transition_begin, 0, transition_steps)
        frac = 1 - count / warmup_steps
        return (init_value - peak_value) * (frac ** 1) + peak_value

    cosine_steps = decay_steps - warmup_steps  # cosine_decay_schedule(init_value=peak_value, decay_steps=...)
    assert cosine_steps > 0  # optax raises ValueError otherwise

    def cosine(count):
        count = min(count, cosine_steps)
        cosine_decay = 0.5 * (1 + math.cos(math.pi * count / cosine_steps))
        decayed = (1 - alpha) * cosine_decay ** 1 + alpha
        return peak_value * decayed

    def schedule(step):  # optax/schedules/_join.py join_schedules(schedules, [warmup_steps])
        output = linear(step)
        return output if step < warmup_steps else cosine(step - warmup_steps)

    return schedule


# (total_steps, warm-up fraction as numerator/denominator): the official configs write the warm-up
# length as an integer, 10% of total_steps rounded down (configs/training/350m/ext.yaml: 33 of 337;
# 760m/ext.yaml: 72 of 725; round() would give 34 and 72); integer arithmetic here, not floats
SCHEDULES = [(4800, 1, 10), (337, 1, 10), (725, 1, 10), (15, 1, 10), (9, 1, 10), (100, 29, 100), (7, 1, 2),
             (1, 0, 1), (30, 0, 1)]


@pytest.mark.parametrize("total, num, den", SCHEDULES)
def test_the_official_schedule_is_optax_s_at_every_step(total, num, den):
    cfg = TrainConfig(steps=total, lr=3e-3, min_lr=1e-5, warmup_frac=num / den, recipe="official")
    warmup = total * num // den
    # ttt/optimizers.py make_adamw_optimizer: warmup_cosine_decay_schedule(init_value=init_lr (0.0),
    # peak_value=lr, warmup_steps=lr_warmup_steps, decay_steps=lr_decay_steps (= total_steps in every
    # config), end_value=end_lr)
    official = optax_warmup_cosine_decay(0.0, cfg.lr, warmup, total, cfg.min_lr)
    # optax.adamw ends in scale_by_learning_rate -> scale_by_schedule: the update reads
    # schedule(count), count starting at 0 and incremented after it (ttt/train.py logs
    # schedule(count - 1) after each step): our step s (from 0) is count s
    for step in range(total):
        assert lr_at(step, cfg) == pytest.approx(official(step), rel=1e-12, abs=1e-18), step
    if warmup:
        assert lr_at(0, cfg) == 0.0  # one step behind lcbench's, whose first update moves
        assert lr_at(0, TrainConfig(steps=total, lr=3e-3, warmup_frac=num / den)) > 0


@pytest.mark.parametrize("total, written", [(4800, 480), (13500, 1350), (29000, 2900), (50000, 5000),
                                            (52000, 5200), (120, 12), (337, 33), (725, 72), (1250, 125),
                                            (1300, 130)])
def test_official_warm_up_lengths_are_the_official_configs(total, written):
    # configs/training/{125m,350m,760m,1b,3b}/{pretrain-8K,ext}.yaml: total_steps and lr_warmup_steps
    assert official_warmup_steps(0.1, total) == written
    assert TrainConfig(steps=total, recipe="official").warmup_steps == written


def test_the_official_warm_up_is_rounded_down_on_the_decimal_as_written():
    assert int(0.29 * 100) == 28  # the float product falls short
    assert official_warmup_steps(0.29, 100) == 29
    assert TrainConfig(steps=100, warmup_frac=0.29).warmup_steps == 28  # lcbench's, as it always was


def test_one_function_gives_both_warm_up_lengths_of_each_recipe():
    # 15% of 10 steps: lcbench's outer warm-up 1 (int), its inner one 2 (round(1.5)); official's both 1
    assert [warmup_length(r, 0.15, 10, inner) for r in RECIPES for inner in (False, True)] == [1, 2, 1, 1]
    config = small_config("ttt_e2e", inner_lr=1.0, inner_lr_init=0.1, inner_lr_warmup=0.15)
    for recipe in RECIPES:
        assert TrainConfig(steps=10, warmup_frac=0.15, recipe=recipe).warmup_steps == warmup_length(recipe, 0.15, 10)
        inner = warmup_length(recipe, 0.15, 10, inner=True)
        assert config.inner_lr_at(inner - 1, 10, recipe) == 1.0 and config.inner_lr_at(inner - 2, 10, recipe) < 1.0
    with pytest.raises(ConfigError, match="unknown recipe 'lcbenc'.*lcbench"):
        warmup_length("lcbenc", 0.1, 10)


def test_every_parameter_is_decayed_under_official_and_matrices_only_under_lcbench():
    model = small_model("ttt_e2e")  # norms (vectors), prime MLPs (the inner parameters), embeddings
    params = {id(p): p for p in model.parameters() if p.requires_grad}
    assert any(p.dim() < 2 for p in params.values())
    decay_of = {}
    for recipe in ("official", "lcbench"):
        optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1, recipe=recipe))
        decay_of[recipe] = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
        assert sorted(decay_of[recipe]) == sorted(params)  # every parameter once
    assert set(decay_of["official"].values()) == {0.1}
    assert decay_of["lcbench"] == {i: 0.1 if p.dim() >= 2 else 0.0 for i, p in params.items()}


def test_the_official_optimizer_takes_the_run_s_lr_and_betas():
    """The official recipe builds its one parameter group itself: the run's lr and betas, in order."""
    cfg = TrainConfig(lr=1e-3, beta1=0.8, beta2=0.99, weight_decay=0.1, recipe="official")
    [group] = make_optimizer(small_model("swa"), cfg).param_groups
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-3, (0.8, 0.99), 0.1)


def test_the_official_warm_up_counts_the_steps_a_token_budget_gives():
    """A token budget sets the steps (total_steps), not the steps setting, which it leaves unread."""
    cfg = TrainConfig(tokens=4 * 64 * 300, batch_size=4, seq_len=64, recipe="official")
    assert cfg.total_steps == 300 != cfg.steps
    assert cfg.warmup_steps == 30 == TrainConfig(steps=300, recipe="official").warmup_steps


def test_an_official_step_decays_the_norm_gains():
    """With zero gradients AdamW's update is only the decay, p * (1 - lr * wd): the official recipe
    moves the norms' gains (optax.adamw's mask=None), lcbench's leaves them at 1."""
    gains = {}
    for recipe in ("official", "lcbench"):
        model = small_model("swa")
        optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1, recipe=recipe))
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        gains[recipe] = torch.cat([p.detach().flatten() for p in model.parameters() if p.dim() == 1])
    torch.testing.assert_close(gains["official"], torch.full_like(gains["official"], 1 - 3e-3 * 0.1))
    assert torch.equal(gains["lcbench"], torch.ones_like(gains["lcbench"]))


def official_inner_lr(step: int, ilr_warmup_steps: int, ilr_init: float, lr: float) -> float:
    """ttt/model/transformer.py MetaModel.get_ilr_multiplier (times optimizer_inner.lr, as
    ttt/optimizers.py make_sgd_optimizer applies it), ``step`` the outer step (state step_index)."""
    if ilr_warmup_steps == 0:
        return lr
    progress = min(1.0, 1.0 * (step + 1) / ilr_warmup_steps)
    return ilr_init + (lr - ilr_init) * progress


@pytest.mark.parametrize("total, lcbench_warmup, official_warmup", [(15, 2, 1), (337, 34, 33), (100, 10, 10),
                                                                     (4, 0, 0)])
def test_the_inner_warm_up_is_rounded_as_the_recipe_says(total, lcbench_warmup, official_warmup):
    # lcbench rounds 10% to nearest (round(1.5) = 2, round(33.7) = 34); the official configs' integers
    # are rounded down, like the outer warm-up (ilr_warmup_steps = lr_warmup_steps in every pretraining config)
    config = small_config("ttt_e2e", inner_lr=1.0, inner_lr_init=0.1, inner_lr_warmup=0.1)
    for recipe, warmup in (("lcbench", lcbench_warmup), ("official", official_warmup)):
        for step in range(total):
            expected = official_inner_lr(step, warmup, 0.1, 1.0)
            assert config.inner_lr_at(step, total, recipe) == pytest.approx(expected, rel=1e-15), (recipe, step)
    assert config.inner_lr_at(0, total) == config.inner_lr_at(0, total, "lcbench")  # the default
    with pytest.raises(ConfigError, match="'oficial'.*official"):
        config.inner_lr_at(0, total, "oficial")


def test_the_inner_lr_at_the_end_of_its_warm_up_is_inner_lr_itself():
    """0.03 + (0.3 - 0.03) * 1.0 is 0.30000000000000004: the warm-up's last step trains at inner_lr
    exactly, as every later step does, under both recipes."""
    config = small_config("ttt_e2e", inner_lr=0.3, inner_lr_init=0.03, inner_lr_warmup=0.1)
    for recipe in ("lcbench", "official"):
        assert [config.inner_lr_at(step, 100, recipe) for step in (9, 10, 99)] == [0.3, 0.3, 0.3], recipe


def test_a_model_whose_progress_hook_takes_no_recipe_is_called_as_it_is(fast_data, monkeypatch):
    """An architecture's ``on_train_step(step, total_steps)`` (a plugin's, written before recipes)
    is called without the recipe, under either recipe; it was handed one it does not take."""
    import harness.train.trainer as train_mod

    calls, real_build = [], train_mod.build_model

    def build(config):
        model = real_build(config)
        model.on_train_step = lambda step, total_steps: calls.append((step, total_steps))
        return model

    monkeypatch.setattr(train_mod, "build_model", build)
    for recipe in ("official", "lcbench"):
        train(small_config("swa"), TrainConfig(steps=1, recipe=recipe, **FAST), progress=False, training_data=fast_data)
    assert calls == [(0, 1), (0, 1)]


def test_the_trainer_tells_the_model_its_recipe(fast_data, monkeypatch):
    import harness.train.trainer as train_mod

    calls, real_build = [], train_mod.build_model

    def build(config):
        model = real_build(config)
        model.on_train_step = lambda step, total, recipe: calls.append((step, total, recipe))
        return model

    monkeypatch.setattr(train_mod, "build_model", build)
    train(small_config("swa"), TrainConfig(steps=2, recipe="official", **FAST), progress=False, training_data=fast_data)
    train(small_config("swa"), TrainConfig(steps=1, **FAST), progress=False, training_data=fast_data)
    assert calls == [(0, 2, "official"), (1, 2, "official"), (0, 1, "lcbench")]


def test_a_ttt_model_trained_officially_warms_up_its_inner_lr_rounded_down(fast_data, monkeypatch):
    import harness.train.trainer as train_mod

    seen, real_build = [], train_mod.build_model

    def build(config):
        model = real_build(config)
        hook = model.on_train_step

        def record(step, total_steps, recipe):  # the inner lr each outer step trained with
            hook(step, total_steps, recipe)
            seen.append((recipe, step, model.inner_lr_now))
        model.on_train_step = record
        return model

    monkeypatch.setattr(train_mod, "build_model", build)
    config = small_config("ttt_e2e", inner_lr=1.0, inner_lr_init=0.1, inner_lr_warmup=0.5)  # of 3 steps: 1.5
    for recipe in ("official", "lcbench"):
        train(config, TrainConfig(steps=3, recipe=recipe, **FAST), progress=False, training_data=fast_data)
    assert seen[:3] == [("official", 0, 1.0), ("official", 1, 1.0), ("official", 2, 1.0)]  # 1 step of warm-up
    assert seen[3:] == [("lcbench", 0, pytest.approx(0.1 + 0.9 / 2)), ("lcbench", 1, 1.0), ("lcbench", 2, 1.0)]  # 2


def test_the_recipe_is_a_setting_like_the_others():
    cfg = TrainConfig(recipe="official")
    assert json.loads(json.dumps(cfg.to_dict()))["recipe"] == "official"
    assert TrainConfig(**cfg.to_dict()) == cfg
    assert TrainConfig().recipe == "lcbench"
    with pytest.raises(ConfigError, match=r"unknown recipe 'oficial'; valid: lcbench, official\. Did you mean 'official'\?"):
        TrainConfig(recipe="oficial")


def test_the_recipe_is_saved_and_a_resume_with_another_is_refused(tmp_path, fast_data):
    out = tmp_path / "c"
    train(small_config("swa"), TrainConfig(steps=1, recipe="official", **FAST), out_dir=out, progress=False,
          training_data=fast_data)
    assert json.loads((out / checkpoint.TRAINER_FILE).read_text())["train_config"]["recipe"] == "official"
    assert resume_config(out, {"steps": 2}).recipe == "official"  # left out: kept
    with pytest.raises(checkpoint.CheckpointError, match="recipe 'official' -> 'lcbench'"):
        train(small_config("swa"), TrainConfig(steps=2, **FAST), out_dir=out, resume=True, progress=False,
              training_data=fast_data)
    assert train(small_config("swa"), resume_config(out, {"steps": 2}), out_dir=out, resume=True, progress=False,
                 training_data=fast_data).step == 2


def test_a_checkpoint_from_before_the_recipe_resumes_as_lcbench_s_only(tmp_path, fast_data):
    """Checkpoints written before the setting existed trained with lcbench's recipe: resumed with the
    official one they would have been continued under another schedule without a word."""
    out = tmp_path / "c"
    train(small_config("swa"), TrainConfig(steps=1, **FAST), out_dir=out, progress=False, training_data=fast_data)
    state_file = out / checkpoint.TRAINER_FILE
    state = json.loads(state_file.read_text())
    del state["train_config"]["recipe"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(checkpoint.CheckpointError, match="recipe 'lcbench' -> 'official'"):
        train(small_config("swa"), TrainConfig(steps=2, recipe="official", **FAST), out_dir=out, resume=True,
              progress=False, training_data=fast_data)
    assert train(small_config("swa"), resume_config(out, {"steps": 2}), out_dir=out, resume=True, progress=False,
                 training_data=fast_data).step == 2


def test_lcbench_train_takes_the_recipe(tmp_path):
    from click.testing import CliRunner

    from harness.cli import main

    out = tmp_path / "c"
    args = ["train", "swa", "--steps", "1", "--batch-size", "2", "--seq-len", "32", "--set", "window=8", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--recipe", "official"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / checkpoint.TRAINER_FILE).read_text())["train_config"]["recipe"] == "official"
    bad = CliRunner().invoke(main, [*args[:-2], "--out", str(tmp_path / "d"), "--recipe", "oficial"])
    assert bad.exit_code != 0 and "unknown recipe 'oficial'; valid: lcbench, official. Did you mean 'official'?" in bad.output
