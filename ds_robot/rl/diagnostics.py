"""Training diagnostics from the seed: policy entropy, TD-error distribution, feature variance.

Each check logs to TensorBoard (when a writer is given) and warns, at most once every
``warn_every`` updates per check, when the seed's rule of thumb is broken:
entropy of a discrete policy below 0.5 nats, fewer than 90% of TD errors in [-1, 1],
state features whose variance collapsed (< 1e-8) or exploded (> 1e6).
"""

from __future__ import annotations

import warnings

import numpy as np


class TrainingWarning(UserWarning):
    """A training-health rule of thumb from the seed is broken (entropy, TD errors, features)."""


class Diagnostics:
    def __init__(self, writer=None, warn_every: int = 200, entropy_floor: float = 0.5, td_fraction: float = 0.9):
        self.writer = writer
        self.warn_every = warn_every
        self.entropy_floor = entropy_floor
        self.td_fraction = td_fraction
        self._last_warned: dict[str, int] = {}
        self.latest: dict[str, float] = {}

    def _warn(self, key: str, update: int, message: str) -> None:
        last = self._last_warned.get(key)
        if last is None or update - last >= self.warn_every:
            self._last_warned[key] = update
            warnings.warn(message, TrainingWarning, stacklevel=3)

    def _log(self, tag: str, value: float, step: int) -> None:
        self.latest[tag] = value
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def policy_entropy(self, entropy: float, step: int, update: int, discrete: bool) -> None:
        self._log("diagnostics/policy_entropy", entropy, step)
        if discrete and entropy < self.entropy_floor:
            self._warn("entropy", update, f"policy entropy {entropy:.3f} < {self.entropy_floor}: exploration may have "
                                          "collapsed (raise the entropy coefficient)")

    def td_errors(self, td: np.ndarray, step: int, update: int) -> None:
        td = np.asarray(td, dtype=float).ravel()
        inside = float(np.mean(np.abs(td) <= 1.0)) if td.size else 1.0
        self._log("diagnostics/td_within_1", inside, step)
        self._log("diagnostics/td_abs_mean", float(np.abs(td).mean()) if td.size else 0.0, step)
        if self.writer is not None and td.size:
            self.writer.add_histogram("diagnostics/td_error", td, step)
        if inside < self.td_fraction:
            self._warn("td", update, f"only {inside:.0%} of TD errors lie in [-1, 1] (< {self.td_fraction:.0%}): "
                                     "scale rewards or lower the learning rate")

    def feature_variance(self, observations: np.ndarray, step: int, update: int) -> None:
        var = np.asarray(observations, dtype=float).reshape(len(observations), -1).var(axis=0)
        self._log("diagnostics/feature_var_min", float(var.min()), step)
        self._log("diagnostics/feature_var_max", float(var.max()), step)
        collapsed, exploding = np.flatnonzero(var < 1e-8), np.flatnonzero(var > 1e6)
        if len(collapsed) and len(collapsed) < var.size:
            self._warn("var_low", update, f"state features {collapsed.tolist()[:8]} have collapsed variance")
        if len(exploding):
            self._warn("var_high", update, f"state features {exploding.tolist()[:8]} have variance > 1e6: normalise")
