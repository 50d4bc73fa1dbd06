"""The kit's time budget: one deadline per step, and whether a measurement still fits before it."""
from __future__ import annotations

import time
from collections.abc import Sequence


def step_seconds(left_s: float, weight: float, later_weights: Sequence[float]) -> float:
    """A step's time limit: its weight's share of the time left, counting only the steps still
    to run, so time an earlier step left over goes to the later ones; the last step gets all."""
    rest = sum(later_weights)
    if left_s <= 0:
        return 0.0
    return left_s if rest <= 0 else left_s * weight / (weight + rest)


class Clock:
    """Time left before a deadline (seconds since the epoch, so another process can share it)."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    @classmethod
    def after(cls, seconds: float) -> "Clock":
        return cls(time.time() + seconds)

    def left(self) -> float:
        return self.deadline - time.time()

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds
