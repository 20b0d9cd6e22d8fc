"""The policy node's loop timing: a sliding window for ``/diagnostics`` and, for ``ds-robot
bench node`` only, a recorder of the whole run written to the node's ``stats_file``."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np

LATE_FACTOR = 1.25  # a period longer than this many nominal periods is late


class LoopTimer:
    """Loop periods over a sliding window, and the count of late cycles."""

    def __init__(self, period_s: float, window: int = 1000):
        self.period_s = period_s
        self.window: deque[float] = deque(maxlen=window)
        self.late = 0
        self.cycles = 0
        self._last: float | None = None

    def tick(self, t: float) -> float | None:
        """Record a cycle at time ``t`` (s); returns the period since the last one."""
        dt = None
        if self._last is not None:
            dt = t - self._last
            self.window.append(dt)
            self.cycles += 1
            if dt > LATE_FACTOR * self.period_s:
                self.late += 1
        self._last = t
        return dt

    def summary(self) -> dict:
        p = np.array(self.window) * 1e3 if self.window else np.zeros(1)
        return {"cycles": self.cycles, "late": self.late, "late_rate": self.late / max(self.cycles, 1),
                "period_p50_ms": float(np.percentile(p, 50)), "period_p99_ms": float(np.percentile(p, 99)),
                "period_max_ms": float(p.max())}


class RunRecorder:
    """Every loop period and state-to-command age of a run (up to ``keep`` each), for the stats
    file ``ds-robot bench node`` reads."""

    def __init__(self, path: str | Path, keep: int = 2_000_000):
        self.path = Path(path)
        self.periods_s: deque[float] = deque(maxlen=keep)
        self.state_age_s: deque[float] = deque(maxlen=keep)

    def write(self, summary: dict, policy_step_s) -> None:
        data = {**summary, "periods_s": list(self.periods_s), "state_age_s": list(self.state_age_s),
                "policy_step_s": list(policy_step_s)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data))
