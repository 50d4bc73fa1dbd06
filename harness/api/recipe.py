"""Training recipes: how the trainer turns its settings into a learning-rate schedule and
weight-decay groups, and how a warm-up's fraction of the steps becomes a number of steps.

- ``lcbench`` (the default; the committed results were trained with it): warm-up
  ``lr * (step + 1) / warmup`` (the first update already moves), ``int(fraction * total)`` steps
  for the outer warm-up and ``round`` for TTT-E2E's inner one; no weight decay on vectors (norm
  gains, biases).
- ``official``: as the official TTT-E2E JAX code trains (github test-time-training/e2e,
  ``ttt/optimizers.py`` ``make_adamw_optimizer``: ``optax.warmup_cosine_decay_schedule`` from
  ``init_lr`` 0, AdamW with ``mask=None`` as ``emb_wd`` defaults to True): the first update at
  lr 0, weight decay on every parameter, and both warm-ups rounded down (:func:`official_warmup_steps`).

An architecture with a schedule of its own over the outer steps reads the recipe from the
``recipe`` argument of its ``on_train_step`` hook (TTT-E2E's inner-lr warm-up).
"""
from __future__ import annotations

import math
from fractions import Fraction

RECIPES = ("lcbench", "official")
DEFAULT_RECIPE = "lcbench"


def official_warmup_steps(fraction: float, total_steps: int) -> int:
    """``fraction`` of ``total_steps`` rounded down, as the official configs write their warm-up
    lengths (integers, 10% of ``total_steps``: 33 of 337 steps, 72 of 725); the product is taken
    on the decimal as written, where the float one falls short (``int(0.29 * 100)`` is 28)."""
    return math.floor(Fraction(repr(float(fraction))) * total_steps)
