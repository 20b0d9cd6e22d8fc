"""The training loop every trainer shares (on-policy A2C/PPO, SAC, the hierarchical grasp
trainer): iterate until ``total_steps`` or a wall-clock budget, a progress bar, a checkpoint
schedule, an early-stop callback, and wall time that adds up over resumed invocations.

A trainer supplies ``iterate() -> Iteration`` (collect and learn once; ``agent.steps``
advanced), optionally ``after(iteration)`` (bookkeeping that needs the updated wall time:
progress files, snapshots) and a checkpoint schedule (:class:`StepCheckpoints` or
:class:`TimeCheckpoints`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Iteration:
    """What one iteration reports: statistics (for the callback), an optional record for the
    history, and an optional progress-bar postfix."""

    stats: dict
    record: dict | None = None
    postfix: dict | None = None


class StepCheckpoints:
    """A checkpoint every ``every_steps`` environment steps and at the end (``checkpoint.pt``
    and ``final.pt``), for an agent with ``run``, ``steps`` and ``save``."""

    def __init__(self, agent, every_steps: int):
        self.agent = agent
        self.every_steps = every_steps
        self.next_at = agent.steps + every_steps

    def maybe_save(self, elapsed_s: float) -> None:
        if self.agent.run is not None and self.agent.steps >= self.next_at:
            self.agent.save(self.agent.run.checkpoint)
            self.next_at += self.every_steps

    def finish(self) -> None:
        if self.agent.run is not None:
            self.agent.save(self.agent.run.checkpoint)
            self.agent.save(self.agent.run.final)


class TimeCheckpoints:
    """A checkpoint every ``every_s`` seconds of this invocation and at the end (``checkpoint.pt``)."""

    def __init__(self, agent, every_s: float):
        self.agent = agent
        self.every_s = every_s
        self.next_at = every_s

    def maybe_save(self, elapsed_s: float) -> None:
        if self.agent.run is not None and elapsed_s >= self.next_at:
            self.agent.save(self.agent.run.checkpoint)
            self.next_at += self.every_s

    def finish(self) -> None:
        if self.agent.run is not None:
            self.agent.save(self.agent.run.checkpoint)


def train_loop(agent, iterate: Callable[[], Iteration], checkpoints, *, total_steps: int, desc: str,
               progress: bool = True, budget_s: float | None = None,
               callback: Callable[[object, dict], bool] | None = None,
               after: Callable[[Iteration], None] | None = None) -> TrainResult:
    """Run ``iterate`` until ``agent.steps >= total_steps``, ``budget_s`` seconds have passed or
    ``callback(agent, stats)`` returns True. The bar counts seconds under a budget, else steps.
    ``agent.wall_seconds`` accumulates over resumed runs."""
    start = time.perf_counter()
    wall_before = agent.wall_seconds
    result = TrainResult(steps=agent.steps, seconds=0.0)
    by_time = budget_s is not None
    bar = tqdm(total=round(budget_s) if by_time else total_steps, initial=0 if by_time else agent.steps,
               unit="s" if by_time else "step", desc=desc, disable=not progress, smoothing=0.05)
    while agent.steps < total_steps:
        steps_before = agent.steps
        step = iterate()
        elapsed = time.perf_counter() - start
        agent.wall_seconds = wall_before + elapsed
        bar.update(round(elapsed) - bar.n if by_time else agent.steps - steps_before)
        if after is not None:
            after(step)
        if step.postfix:
            bar.set_postfix(**step.postfix)
        if step.record is not None:
            result.history.append(step.record)
        checkpoints.maybe_save(elapsed)
        if callback is not None and callback(agent, step.stats):
            result.stopped_early = True
            break
        if by_time and elapsed >= budget_s:
            result.stopped_early = True
            break
    bar.close()
    result.steps, result.seconds = agent.steps, time.perf_counter() - start
    checkpoints.finish()
    return result
