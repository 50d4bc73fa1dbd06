"""Checkpoints: atomic, exact, and clear about what is wrong with a bad one."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from harness.api.errors import CheckpointError
from harness.train import checkpoint
from tests.conftest import small_model


def test_missing_and_non_checkpoint_folders(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load_model(tmp_path / "nowhere")
    # a misspelt checkpoint folder: the one meant is named, as for a corpus or a tokenizer
    checkpoint.save_checkpoint(tmp_path / "run", small_model("swa"))
    with pytest.raises(CheckpointError, match=f"checkpoint '{tmp_path / 'rn'}' does not exist.*holds: run.*"
                                              f"Did you mean '{tmp_path / 'run'}'"):
        checkpoint.load_model(tmp_path / "rn")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an lcbench checkpoint"):
        checkpoint.load_model(tmp_path / "empty")


def test_corrupted_weights_are_reported(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "c", small_model("swa"))
    (path / checkpoint.WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupted"):
        checkpoint.load_model(path)


def test_corrupted_config_is_reported(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "c", small_model("swa"))
    (path / checkpoint.CONFIG_FILE).write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load_model(path)


def test_mismatched_weights_name_the_tensors(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "c", small_model("full_attention"))
    config = json.loads((path / checkpoint.CONFIG_FILE).read_text())
    config["n_layers"] += 1
    (path / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing tensors \['blocks\.4\."):
        checkpoint.load_model(path)
    config["n_layers"] -= 1
    config["mlp_hidden"] *= 2
    (path / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit"):
        checkpoint.load_model(path)


def test_unknown_config_field_in_checkpoint(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "c", small_model("swa"))
    config = json.loads((path / checkpoint.CONFIG_FILE).read_text())
    config["windw"] = config.pop("window")
    (path / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Did you mean 'window'"):
        checkpoint.load_model(path)


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "c"
    checkpoint.save_checkpoint(path, small_model("swa", seed=1))
    checkpoint.save_checkpoint(path, small_model("swa", seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary folders left behind
    loaded = checkpoint.load_model(path)
    assert all((a == b).all() for a, b in zip(loaded.parameters(), small_model("swa", seed=2).parameters()))


def test_weights_only_checkpoint_cannot_resume(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "c", small_model("swa"))
    with pytest.raises(CheckpointError, match="cannot resume"):
        checkpoint.load_trainer_state(path)


def _flip_byte(file, offset_from_end: int = 16) -> None:
    data = bytearray(file.read_bytes())
    data[-offset_from_end] ^= 0xFF  # inside the tensor data, past the header
    file.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_caught(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "c", small_model("swa"))
    _flip_byte(path / checkpoint.WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        checkpoint.load_model(path)


def test_a_changed_optimizer_state_is_caught(tmp_path):
    model = small_model("swa")
    optimizer = torch.optim.AdamW(model.parameters())
    path = checkpoint.save_checkpoint(tmp_path / "c", model, optimizer, {"step": 1})
    _flip_byte(path / checkpoint.OPTIMIZER_FILE, 3)
    with pytest.raises(CheckpointError, match="optimizer.pt does not match"):
        checkpoint.load_trainer_state(path)


def test_checkpoints_without_checksums_still_load(tmp_path):
    """Checkpoints saved before checksums (or assembled by hand) load, unverified."""
    path = checkpoint.save_checkpoint(tmp_path / "c", small_model("swa"))
    (path / checkpoint.CHECKSUMS_FILE).unlink()
    checkpoint.load_model(path)


def test_a_save_never_deletes_a_folder_lcbench_did_not_write(tmp_path):
    users = tmp_path / "myproj"
    users.mkdir()
    (users / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="files lcbench did not write \\(notes.txt\\)"):
        checkpoint.save_checkpoint(users, small_model("swa"))
    assert (users / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myproj"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="it is a file"):
        checkpoint.save_checkpoint(tmp_path / "afile", small_model("swa"))


def test_an_interrupted_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    """A save that dies while writing the weights must leave the old checkpoint as it was: its own
    config with its own weights (a save straight into the folder would pair the new config with
    the old or half-written weights)."""
    path = tmp_path / "c"
    old = small_model("swa", seed=1)
    checkpoint.save_checkpoint(path, old)
    real = safetensors.torch.save_model

    def die_half_way(model, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt("killed while writing the weights")

    monkeypatch.setattr(safetensors.torch, "save_model", die_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, small_model("swa", seed=2, window=32))
    monkeypatch.setattr(safetensors.torch, "save_model", real)
    loaded = checkpoint.load_model(path)
    assert loaded.config == old.config
    for (name, a), b in zip(old.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_content_hash_follows_content_not_path(tmp_path):
    a = checkpoint.save_checkpoint(tmp_path / "a", small_model("swa", seed=1))
    b = checkpoint.save_checkpoint(tmp_path / "b", small_model("swa", seed=1))
    before = checkpoint.content_hash(a)
    assert before == checkpoint.content_hash(b)
    checkpoint.save_checkpoint(a, small_model("swa", seed=2))
    assert checkpoint.content_hash(a) != before
    # a setting without weights (the window) makes the same tensors another model: a sweep must score it anew
    c = checkpoint.save_checkpoint(tmp_path / "c", small_model("swa", seed=1, window=32))
    assert checkpoint.content_hash(c) != checkpoint.content_hash(b)


def test_a_save_leaves_folders_beside_the_checkpoint_alone(tmp_path):
    neighbour = tmp_path / ".c.old"  # the name an older save used for the replaced checkpoint
    neighbour.mkdir()
    (neighbour / "keep.txt").write_text("mine")
    checkpoint.save_checkpoint(tmp_path / "c", small_model("swa", seed=1))
    checkpoint.save_checkpoint(tmp_path / "c", small_model("swa", seed=2))
    assert (neighbour / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.old", "c"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_what_a_killed_sharded_save_left_goes_with_the_next_save(tmp_path, monkeypatch):
    # a rank killed mid-save left its temporary folder (a whole sharded checkpoint's size) under a
    # name no later save recognised, so it stayed forever
    from harness.api import staging
    from harness.train import sharded
    from harness.train.trainer import TrainConfig, make_optimizer

    model = small_model("swa").train()
    optimizer = make_optimizer(model, TrainConfig())

    def killed(*args, **kwargs):  # SIGKILL: no clean-up runs
        monkeypatch.setattr(sharded.shutil, "rmtree", lambda *a, **k: None)
        raise KeyboardInterrupt("killed while writing the shards")

    monkeypatch.setattr(sharded.dcp, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        sharded.save(tmp_path / "c", model, optimizer, {"step": 1})
    monkeypatch.undo()
    assert len(list(tmp_path.iterdir())) == 1  # the killed save's folder
    monkeypatch.setattr(staging, "_alive", lambda pid: False)  # its process is gone
    sharded.save(tmp_path / "c", model, optimizer, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_save_keeps_a_users_files_beside_a_checkpoint_without_checksums(tmp_path):
    """A checkpoint assembled by hand (no checksums.json) in a folder of the user's own files is not
    lcbench's to replace; one holding only checkpoint files is."""
    path = checkpoint.save_checkpoint(tmp_path / "c", small_model("swa"))
    (path / checkpoint.CHECKSUMS_FILE).unlink()
    checkpoint.save_checkpoint(path, small_model("swa"))  # only checkpoint files: replaced
    (path / checkpoint.CHECKSUMS_FILE).unlink()
    (path / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="files lcbench did not write"):
        checkpoint.save_checkpoint(path, small_model("swa"))
    assert (path / "notes.txt").read_text() == "precious"


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_checkpoint_that_does_not_fit_the_model_names_the_tensors(tmp_path):
    """The one-process test above, for the sharded format: a misshapen tensor came out as a page
    of DCP traceback (its CheckpointException is a BaseException, past ``except Exception``), and
    a saved tensor the model lacks (a config of fewer layers) was dropped without a word."""
    from harness.train import sharded
    from harness.train.trainer import TrainConfig, make_optimizer

    model = small_model("full_attention").train()
    path = sharded.save(tmp_path / "c", model, make_optimizer(model, TrainConfig()), {"step": 1})
    config = json.loads((path / checkpoint.CONFIG_FILE).read_text())
    for change, match in ((dict(n_layers=config["n_layers"] + 1), r"missing tensors \['blocks\.4\."),
                          (dict(n_layers=config["n_layers"] - 1), r"missing tensors \[\], unexpected tensors \['blocks\.3\."),
                          (dict(mlp_hidden=2 * config["mlp_hidden"]), r"does not fit a full_attention model.*mlp")):
        (path / checkpoint.CONFIG_FILE).write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=match):
            checkpoint.load_model(path)
    (path / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    loaded = checkpoint.load_model(path).state_dict()
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in loaded.items())


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_truncated_shard_without_checksums_is_one_clear_error(tmp_path):
    from harness.train import sharded
    from harness.train.trainer import TrainConfig, make_optimizer

    model = small_model("swa").train()
    path = sharded.save(tmp_path / "c", model, make_optimizer(model, TrainConfig()), {"step": 1})
    (path / checkpoint.CHECKSUMS_FILE).unlink()  # as a checkpoint from before checksums: nothing verifies the shard
    shard = next((path / checkpoint.SHARDED_DIR).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 10])  # into the weights (the optimizer's state follows)
    with pytest.raises(CheckpointError, match=r"cannot be loaded into this model: (?!CheckpointException)\w"):
        checkpoint.load_model(path)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_save_stopped_by_ctrl_c_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """KeyboardInterrupt is no Exception: the clean-up must catch it too (in a live process no
    later save clears the folder, which is a whole checkpoint's size)."""
    from harness.train import sharded
    from harness.train.trainer import TrainConfig, make_optimizer

    model = small_model("swa").train()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sharded.dcp, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sharded.save(tmp_path / "c", model, make_optimizer(model, TrainConfig()), {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_sharded_save_never_replaces_a_folder_lcbench_did_not_write(tmp_path):
    from harness.train import sharded
    from harness.train.trainer import TrainConfig, make_optimizer

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    model = small_model("swa").train()
    with pytest.raises(CheckpointError, match="holds files lcbench did not write"):
        sharded.save(mine, model, make_optimizer(model, TrainConfig()), {"step": 1})
    assert (mine / "notes.txt").read_text() == "mine"


def test_a_folder_of_many_checkpoints_names_four_and_says_there_are_more(tmp_path):
    for i in range(checkpoint.MAX_NAMED + 1):
        (tmp_path / f"m{i}").mkdir()
        (tmp_path / f"m{i}" / checkpoint.CONFIG_FILE).write_text("{}")
        (tmp_path / f"m{i}" / checkpoint.WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_config(tmp_path)
    named = str(err.value).split("; the checkpoints in it: ")[1]
    assert checkpoint.MAX_NAMED == 4 and named.endswith("m3', ...") and "m4" not in named


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_resume_into_a_model_that_does_not_fit_names_the_tensors(tmp_path):
    """Seventh mutation audit: resuming (weights and optimizer) checks the tensors as loading the
    weights does (a saved layer the model lacks loaded without a word), and a misfit of many
    tensors names three and says there are more."""
    from harness.train import sharded
    from harness.train.trainer import TrainConfig, make_optimizer

    model = small_model("full_attention").train()
    path = sharded.save(tmp_path / "c", model, make_optimizer(model, TrainConfig()), {"step": 1})
    config = json.loads((path / checkpoint.CONFIG_FILE).read_text())
    fewer = small_model("full_attention", n_layers=config["n_layers"] - 1).train()
    with pytest.raises(CheckpointError, match=r"missing tensors \[\], unexpected tensors \['blocks\.3\."):
        sharded.load(path, fewer, make_optimizer(fewer, TrainConfig()))
    wider = small_model("full_attention", mlp_hidden=2 * config["mlp_hidden"]).train()
    with pytest.raises(CheckpointError, match="does not fit a full_attention model") as misfit:
        sharded.load(path, wider)
    assert str(misfit.value).count(" saved (") == 3 and str(misfit.value).endswith("; ...")
