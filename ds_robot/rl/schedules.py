"""Schedules for learning rates and the entropy coefficient (docs/architecture.md, formulas: training practice)."""

from __future__ import annotations

from collections.abc import Callable

from ds_robot.errors import ConfigError

Schedule = Callable[[int], float]  # env steps so far -> value


def constant(value: float) -> Schedule:
    return lambda step: value


def linear_decay(initial: float, total_steps: int) -> Schedule:
    """``lr = lr0 * (1 - t / T)`` (seed §training practice), floored at 0."""
    return lambda step: initial * max(0.0, 1.0 - step / total_steps)


def halving(initial: float = 0.1, every_steps: int = 100_000) -> Schedule:
    """Seed's entropy schedule: start at 0.1, halve every 100k steps."""
    return lambda step: initial * 0.5 ** (step // every_steps)


def entropy_schedule(spec: float | str) -> Schedule:
    """``0.01`` (constant) or ``"halving"`` (0.1, halved every 100k env steps)."""
    if spec == "halving":
        return halving()
    try:
        value = float(spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"entropy coefficient {spec!r}: give a number or 'halving'") from exc
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"entropy coefficient {value} is outside [0, 1]")
    return constant(value)
