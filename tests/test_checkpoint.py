"""Checkpoints: atomic, exact, and clear about what is wrong with a bad one."""
from __future__ import annotations

import json

import pytest

from harness.api.errors import CheckpointError
from harness.train import checkpoint
from tests.conftest import small_model


def test_missing_and_non_checkpoint_folders(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load_model(tmp_path / "nowhere")
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
