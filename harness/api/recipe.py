"""Training recipes: how the trainer turns its settings into a learning-rate schedule and
weight-decay groups, and how a warm-up's fraction of the steps becomes a number of steps.

- ``lcbench`` (the default; the committed results were trained with it): warm-up
  ``lr * (step + 1) / warmup`` (the first update already moves), ``int(fraction * total)`` steps
  for the outer warm-up and ``round`` for TTT-E2E's inner one (:func:`warmup_length`); no weight
  decay on vectors (norm gains, biases).
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

from harness.api.errors import check_choice

RECIPES = ("lcbench", "official")
DEFAULT_RECIPE = "lcbench"


def official_warmup_steps(fraction: float, total_steps: int) -> int:
    """``fraction`` of ``total_steps`` rounded down, as the official configs write their warm-up
    lengths (integers, 10% of ``total_steps``: 33 of 337 steps, 72 of 725); the product is taken
    on the decimal as written, where the float one falls short (``int(0.29 * 100)`` is 28)."""
    return math.floor(Fraction(repr(float(fraction))) * total_steps)


def warmup_length(recipe: str, fraction: float, total_steps: int, inner: bool = False) -> int:
    """How many of ``total_steps`` a warm-up over ``fraction`` of them lasts under ``recipe``: the
    trainer's learning-rate warm-up, or (``inner``) TTT-E2E's inner-lr one. ``official`` rounds
    both down (:func:`official_warmup_steps`); ``lcbench`` rounds the outer one down on the float
    product and the inner one to nearest, as the committed results were trained."""
    if check_choice("recipe", recipe, RECIPES) == "official":
        return official_warmup_steps(fraction, total_steps)
    return round(fraction * total_steps) if inner else int(fraction * total_steps)
