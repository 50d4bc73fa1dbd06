"""Training: one trainer for every registered architecture (:mod:`~harness.train.trainer`) and
its checkpoints (:mod:`~harness.train.checkpoint`). The trainer's names are re-exported, so
``from harness.train import TrainConfig, train`` reads as before the split."""
from __future__ import annotations

from harness.train.trainer import (
    TrainConfig,
    TrainingData,
    TrainResult,
    autocast_dtype,
    lr_at,
    make_optimizer,
    prepare_data,
    train,
    validation_loss,
)

__all__ = ["TrainConfig", "TrainResult", "TrainingData", "autocast_dtype", "lr_at", "make_optimizer", "prepare_data",
           "train", "validation_loss"]
