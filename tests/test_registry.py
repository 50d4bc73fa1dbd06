"""Registry lookups, clear errors, and third-party plugins found through entry points."""
from __future__ import annotations

import sys
import textwrap

import pytest

from harness.api import registry
from harness.api.errors import ConfigError, UnknownNameError
from harness.runs.evaluate import resolve_model


def test_builtin_architectures_are_registered():
    assert {"full_attention", "swa"} <= set(registry.model_names())


def test_unknown_architecture_lists_choices_and_suggests():
    with pytest.raises(UnknownNameError) as info:
        registry.get_model_class("full_atention")
    message = str(info.value)
    assert "'full_atention'" in message and "swa" in message and "Did you mean 'full_attention'?" in message


def test_unknown_task_is_clear():
    with pytest.raises(UnknownNameError, match="unknown task 'nope'"):
        registry.get_task("nope")


def test_unknown_preset_and_field_are_clear():
    with pytest.raises(UnknownNameError, match="Did you mean '125m'"):
        registry.make_config("swa", "125M")
    with pytest.raises(ConfigError, match="Did you mean 'window'"):
        registry.make_config("swa", "tiny", windw=8)
    with pytest.raises(ConfigError, match="not divisible by n_heads=5"):
        registry.make_config("full_attention", "tiny", n_heads=5)
    with pytest.raises(ConfigError, match="n_layers must be a positive integer"):
        registry.make_config("full_attention", "tiny", n_layers=0)
    with pytest.raises(ConfigError, match="no 'arch' field"):
        registry.config_from_dict({"d_model": 8})


PLUGIN = '''
from dataclasses import dataclass
from baselines.attention import AttentionConfig, AttentionLM
from harness.api.registry import register_model, register_task

@register_model("toy_plugin_model")
class ToyModel(AttentionLM):
    """A third-party architecture living outside lcbench."""
    presets = {"tiny": dict(d_model=32, n_heads=2, n_layers=1, mlp_hidden=64)}

@register_task("toy_plugin_task")
def toy_task(model, **options):
    return []
'''


def test_plugin_registered_through_an_entry_point_is_found(tmp_path, monkeypatch):
    (tmp_path / "toy_lcbench_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "toy_lcbench_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-lcbench-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [lcbench.models]
        toy_plugin_model = toy_lcbench_plugin
        [lcbench.tasks]
        toy_plugin_task = toy_lcbench_plugin
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_plugins()
    try:
        assert "toy_plugin_model" in registry.model_names()
        assert "toy_plugin_task" in registry.task_names()
        model = registry.create_model("toy_plugin_model")
        assert model.num_params() > 0
    finally:
        registry._MODELS.pop("toy_plugin_model", None)
        registry._TASKS.pop("toy_plugin_task", None)
        sys.modules.pop("toy_lcbench_plugin", None)
        registry.reload_plugins()


def test_a_broken_plugin_warns_and_does_not_hide_others(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lcbench.models]\nbroken = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_plugins()
    try:
        with pytest.warns(UserWarning, match="could not load lcbench.models plugin 'broken'"):
            names = registry.model_names()
        assert "full_attention" in names
    finally:
        registry.reload_plugins()


def _typed_task(model, contexts: list[int] = (8,), scale: float = 1.0, flag=False, steps=3, note=None):
    """A function task whose options have annotations (contexts, scale) or only defaults (flag, steps)."""
    from harness.api import results

    return [results.make_row("echo", scale * steps, eval_ctx=L, variant=f"{flag!r}/{note!r}") for L in contexts]


@pytest.fixture
def typed_task():
    registry.register_task("test_typed_function_task")(_typed_task)
    yield "test_typed_function_task"
    registry._TASKS.pop("test_typed_function_task", None)


def test_function_task_options_are_converted_to_their_types(typed_task):
    from conftest import small_model
    from harness.runs.evaluate import run_eval

    options = {"contexts": "1K,2K", "scale": "0.5", "flag": "yes", "steps": "4", "note": "as is"}
    table = run_eval(typed_task, small_model("swa"), None, options, progress=False).table
    assert table["eval_ctx"].tolist() == [1024, 2048]
    assert table["value"].tolist() == [2.0, 2.0] and set(table["variant"]) == {"True/'as is'"}


@pytest.mark.parametrize("options, match", [
    ({"scale": "half"}, "task 'test_typed_function_task': option 'scale' must be a number, got 'half'"),
    ({"steps": "2.5"}, "task 'test_typed_function_task': option 'steps' must be an integer, got '2.5'"),
    ({"flag": "maybe"}, "task 'test_typed_function_task': option 'flag' must be true or false"),
])
def test_a_bad_function_task_value_names_the_option(typed_task, options, match):
    from conftest import small_model
    from harness.runs.evaluate import run_eval

    with pytest.raises(ConfigError, match=match):
        run_eval(typed_task, small_model("swa"), None, options, progress=False)


def test_a_bad_task_option_value_names_the_task():
    """In a spec of several tasks, 'option 'span' must be an integer' left the reader to find which."""
    from harness.runs.evaluate import check_task_options

    with pytest.raises(ConfigError, match="task 'repeat': option 'span' must be an integer, got 'four'"):
        check_task_options("repeat", {"span": "four"})


def test_a_name_whose_plugin_failed_to_load_says_why(tmp_path, monkeypatch):
    """Before: 'unknown architecture 'broken'; valid: ...', the import error only in a warning
    that a sweep's output had long scrolled past."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lcbench.models]\nbroken = no_such_module_xyz\n"
                                           "[lcbench.tasks]\nbroken_task = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_plugins()
    why = r"plugin no_such_module_xyz, which failed to load \(ModuleNotFoundError: No module named 'no_such_module_xyz'\)"
    try:
        with pytest.warns(UserWarning):
            with pytest.raises(ConfigError, match=rf"architecture 'broken' comes from {why}"):
                registry.get_model_class("broken")
            with pytest.raises(ConfigError, match=rf"task 'broken_task' comes from {why}"):
                registry.get_task("broken_task")
            with pytest.raises(ConfigError, match=rf"model 'broken' is neither .*; architecture 'broken' comes from {why}"):
                resolve_model("broken")
    finally:
        registry.reload_plugins()


def _random_task(model):
    """A function task whose score is a draw from torch's global generator."""
    import torch
    from harness.api import results

    return [results.make_row("draw", float(torch.rand(())))]


def test_a_tasks_torch_draws_follow_its_seed_and_untrained_weights_do_not():
    """run_eval seeds torch with the run's seed before the task (a plugin's draws repeat, and differ
    between seeds), and an architecture named without a checkpoint gets the same untrained weights
    whatever the generator's state before."""
    import torch
    from harness.runs.evaluate import run_eval

    registry.register_task("test_random_function_task")(_random_task)
    try:
        def draw(seed: int) -> float:
            return run_eval("test_random_function_task", "swa", None, seed=seed, device="cpu", progress=False).table["value"].iloc[0]

        assert draw(0) == draw(0) != draw(1)
    finally:
        registry._TASKS.pop("test_random_function_task", None)
    weights = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        weights.append(resolve_model("swa", device="cpu")[0].state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_taken_name_refuses_another_object_and_takes_the_same_again():
    """Re-registering the same class (a module imported twice) is fine; another class under a
    taken name is refused, naming who holds it; an architecture needs a tiny preset and learns its
    name (third audit's registry survivors)."""
    from baselines.attention import AttentionLM

    table: dict = {}

    class First:
        pass

    class Second:
        pass

    Second.__qualname__ = "Second"
    assert registry.register_in(table, "model", "m")(First) is First
    assert registry.register_in(table, "model", "m")(First) is First and table == {"m": First}
    with pytest.raises(ValueError, match=r"model 'm' is already registered by .*First"):
        registry.register_in(table, "model", "m")(Second)
    assert table == {"m": First}
    with pytest.raises(ValueError, match=r"architecture 'no_tiny' must define a 'tiny' preset"):
        registry.register_model("no_tiny")(type("NoTiny", (AttentionLM,), {"presets": {"small": {}}}))
    assert "no_tiny" not in registry.model_names()
    assert registry.get_model_class("swa").arch_name == "swa"
    assert registry.model_names() == sorted(registry.model_names())
    with pytest.raises(UnknownNameError, match=r"unknown preset '125M' of 'swa'"):
        registry.make_config("swa", "125M")


def test_an_unknown_name_message_names_value_owner_sorted_choices_and_the_close_match():
    """errors.py, which the third audit did not reach: the message every bad name gets."""
    from harness.api.errors import LcbenchError, check_choice, close_match, divisors, unknown_message

    error = UnknownNameError("task", "nah", ["niah", "mqar", "latency"], of="'suite'")
    assert str(error) == "unknown task 'nah' of 'suite'; valid: latency, mqar, niah. Did you mean 'niah'?"
    assert isinstance(error, KeyError) and isinstance(error, LcbenchError) and error.choices == ["latency", "mqar", "niah"]
    assert unknown_message("device", "gpu", ["cpu", "cuda"], suggestion="cuda").endswith("Did you mean 'cuda'?")
    assert unknown_message("x", "zzz", []) == "unknown x 'zzz'; valid: (none registered)"
    assert close_match(16, ["16", "32"]) == "16" and close_match("xqzz", ["mqar"]) is None
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert check_choice("mode", "a", ["a", "b"]) == "a"
    with pytest.raises(ConfigError, match=r"unknown mode 'c'; valid: a, b"):
        check_choice("mode", "c", ["b", "a"])


def test_plugins_of_a_group_load_once_per_process(monkeypatch):
    """Every lookup asks for the plugins; their modules are imported at the first only (third
    audit's registry survivor), and a broken one warns once."""
    from types import SimpleNamespace

    loads = []

    def load():
        loads.append(1)
        raise ImportError("broken on purpose")

    fake = SimpleNamespace(name="counted", value="counted_module", load=load)
    monkeypatch.setattr(registry, "entry_points", lambda group: [fake] if group == registry.MODEL_GROUP else [])
    registry.reload_plugins()
    try:
        with pytest.warns(UserWarning, match="could not load lcbench.models plugin 'counted'"):
            registry.model_names()
        registry.model_names()
        with pytest.raises(ConfigError, match="architecture 'counted' comes from plugin counted_module, which failed"):
            registry.get_model_class("counted")
        assert loads == [1]
    finally:
        registry.reload_plugins()
