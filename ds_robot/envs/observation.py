"""Sensor corruption between the task's observation and the policy: noise, then delay.

Off by default. Sim-to-real experiments turn it on (``UR5GraspEnv(sensor_noise={"tau": 0.02},
sensor_delay_steps=1)``) instead of scattering noise through the task.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ds_robot.errors import ConfigError


class ObservationPipeline:
    def __init__(self, slices: dict[str, slice], noise_std: dict[str, float] | None = None, delay_steps: int = 0):
        noise_std = noise_std or {}
        unknown = sorted(set(noise_std) - set(slices))
        if unknown:
            raise ConfigError(f"sensor_noise: unknown observation fields {unknown}; known: {sorted(slices)}")
        if any(std < 0 for std in noise_std.values()) or delay_steps < 0:
            raise ConfigError("sensor_noise standard deviations and sensor_delay_steps must be >= 0")
        self.noise = [(slices[name], std) for name, std in noise_std.items() if std > 0]
        self.delay_steps = int(delay_steps)
        self.buffer: deque[np.ndarray] = deque(maxlen=self.delay_steps + 1)

    @property
    def active(self) -> bool:
        return bool(self.noise) or self.delay_steps > 0

    def reset(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.buffer.clear()
        corrupted = self._corrupt(obs, rng)
        for _ in range(self.delay_steps + 1):
            self.buffer.append(corrupted)
        return corrupted

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.buffer.append(self._corrupt(obs, rng))
        return self.buffer[0]

    def _corrupt(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.noise:
            return obs
        obs = obs.copy()
        for part, std in self.noise:
            obs[part] += rng.normal(0.0, std, size=part.stop - part.start).astype(obs.dtype)
        return obs
