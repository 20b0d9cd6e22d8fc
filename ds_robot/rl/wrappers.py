"""Extended-MDP wrappers from the seed (docs/architecture.md, formulas).

``UniformTransitionNoise`` (P_eps): ``P_eps(s'|s,a) = (1 - eps) P(s'|s,a) + eps / |S|`` — with
probability eps the next *observation* is replaced by a uniform draw over the declared bounds
(the observation space's, or ``low``/``high`` when those are infinite). The simulator's own
state is untouched: this is a perturbation of what the agent sees, which is what a generic
wrapper can do for any environment.

``ReachabilityBonus`` (R_lambda): ``R = r_base + lambda * (1 - exp(-d(s, s') / sigma))`` with
d the Euclidean distance between consecutive observations (optionally divided per dimension
by ``scale``).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from ds_robot.errors import ConfigError


class UniformTransitionNoise(gym.Wrapper):
    """Draws come from the wrapper's own generator (seeded with the env on ``reset(seed=...)``),
    so eps > 0 does not shift the wrapped env's random sequence."""

    def __init__(self, env: gym.Env, eps: float, low=None, high=None, seed: int | None = None):
        super().__init__(env)
        self._rng = np.random.default_rng(seed)
        if not 0.0 <= eps <= 1.0:
            raise ConfigError(f"P_eps: eps={eps} is outside [0, 1]")
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(f"P_eps needs a Box observation space, got {space}")
        self.low = np.broadcast_to(np.asarray(space.low if low is None else low, dtype=space.dtype), space.shape)
        self.high = np.broadcast_to(np.asarray(space.high if high is None else high, dtype=space.dtype), space.shape)
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ConfigError("P_eps: the observation space has infinite bounds; pass finite low= and high=")
        if np.any(self.low > self.high):
            raise ConfigError("P_eps: low must not exceed high")
        self.eps = eps
        self.replacements = 0
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E3779B9]))
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self._rng.random() < self.eps:
            obs = self._rng.uniform(self.low, self.high).astype(self.observation_space.dtype)
            self.replacements += 1
            info = {**info, "uniform_transition": True}
        return obs, reward, terminated, truncated, info


class ReachabilityBonus(gym.Wrapper):
    def __init__(self, env: gym.Env, lam: float, sigma: float, scale=None):
        super().__init__(env)
        if sigma <= 0:
            raise ConfigError(f"R_lambda: sigma={sigma} must be > 0")
        if not np.isfinite(lam):
            raise ConfigError(f"R_lambda: lambda={lam} must be finite")
        self.lam, self.sigma = float(lam), float(sigma)
        self.scale = None if scale is None else np.asarray(scale, dtype=float)
        self._last = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._last = np.asarray(obs, dtype=float)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        current = np.asarray(obs, dtype=float)
        delta = current - self._last
        if self.scale is not None:
            delta = delta / self.scale
        bonus = self.lam * (1.0 - np.exp(-np.linalg.norm(delta) / self.sigma))
        self._last = current
        return obs, float(reward) + bonus, terminated, truncated, {**info, "reachability_bonus": bonus}
