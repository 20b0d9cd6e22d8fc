"""What A2C and PPO share: rollout collection on a vector env, returns/advantages, the
training loop (``ds_robot.rl.loop``; TensorBoard, diagnostics, checkpoints, resume). Each algorithm
supplies its optimiser and its ``update``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ds_robot.errors import ConfigError
from ds_robot.rl import schedules
from ds_robot.rl.amp import DynamicLossScaler
from ds_robot.rl.checkpoint import load_checkpoint, save_checkpoint
from ds_robot.rl.common import RunDir, flat_obs_dim, log_scalars, make_vector_env, seed_everything
from ds_robot.rl.diagnostics import Diagnostics
from ds_robot.rl.loop import Iteration, StepCheckpoints, TrainResult, train_loop
from ds_robot.rl.policies import make_policy, to_env_action

torch.distributions.Distribution.set_default_validate_args(False)


@dataclass(frozen=True)
class OnPolicyConfig:
    env_id: str = "CartPole-v1"
    total_steps: int = 200_000
    n_envs: int = 8
    n_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    learning_rate: float = 7e-4
    lr_decay: bool = True  # lr = lr0 (1 - t/T)
    ent_coef: float | str = 0.01  # a number, or "halving"
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    amp: bool = False
    seed: int = 0
    policy: str = "a2c_paper"
    workers: int = 0  # 0: step the envs in this process; W: W rollout-engine worker processes
    backend: str = "local"  # local | ray (workers as Ray actors)
    ray_address: str | None = None  # None: a local Ray instance; "auto" or "HOST:PORT": a cluster
    checkpoint_every_steps: int = 50_000

    def __post_init__(self):
        checks = {
            "total_steps": self.total_steps >= 1,
            "n_envs": self.n_envs >= 1,
            "n_steps": self.n_steps >= 1,
            "gamma": 0.0 <= self.gamma <= 1.0,
            "gae_lambda": 0.0 <= self.gae_lambda <= 1.0,
            "learning_rate": self.learning_rate > 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "checkpoint_every_steps": self.checkpoint_every_steps >= 1,
            "workers": self.workers >= 0 and (self.workers == 0 or self.n_envs % self.workers == 0),
            "backend": self.backend in ("local", "ray"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"{type(self).__name__}: impossible value for "
                              + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad))
        schedules.entropy_schedule(self.ent_coef)


@dataclass
class Rollout:
    obs: np.ndarray  # (n_steps, n_envs, obs_dim)
    actions: np.ndarray  # (n_steps, n_envs[, action_dim])
    log_probs: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    values: np.ndarray


def returns_and_advantages(rollout: Rollout, last_value: np.ndarray, gamma: float, lam: float):
    """GAE(gamma, lambda) (Schulman et al. 2016); lambda = 1 gives n-step bootstrapped returns.

    Returns (returns, advantages, one-step TD errors delta_t = r + gamma V(s') - V(s)).
    """
    advantages = np.zeros_like(rollout.rewards)
    deltas = np.zeros_like(rollout.rewards)
    gae = np.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(len(rollout.rewards))):
        not_done = 1.0 - rollout.dones[t]
        deltas[t] = rollout.rewards[t] + gamma * next_value * not_done - rollout.values[t]
        gae = deltas[t] + gamma * lam * not_done * gae
        advantages[t] = gae
        next_value = rollout.values[t]
    return advantages + rollout.values, advantages, deltas


class OnPolicyAlgorithm(ABC):
    algo = "onpolicy"

    def __init__(self, config: OnPolicyConfig, out: str | Path | None = None, wrappers=()):
        self.config = config
        self.rng = seed_everything(config.seed)
        self.envs = make_vector_env(config.env_id, config.n_envs, config.seed, wrappers, config.workers,
                                    config.backend, config.ray_address)
        self.action_space = self.envs.single_action_space
        self.obs_dim = flat_obs_dim(self.envs.single_observation_space)
        self.obs_dtype = np.uint8 if self.envs.single_observation_space.dtype == np.uint8 else np.float32
        self.policy = make_policy(config.policy, self.envs.single_observation_space.shape, self.action_space)
        self.discrete = self.policy.discrete
        self.action_shape = () if self.discrete else self.action_space.shape
        self.optimizer = self.make_optimizer()
        self.scaler = DynamicLossScaler(enabled=config.amp)
        self.lr_at = (schedules.linear_decay(config.learning_rate, config.total_steps) if config.lr_decay
                      else schedules.constant(config.learning_rate))
        self.beta_at = schedules.entropy_schedule(config.ent_coef)
        self.run = RunDir(Path(out)) if out is not None else None
        self.writer = self.run.writer() if self.run is not None else None
        self.diagnostics = Diagnostics(self.writer)
        self.steps = 0
        self.updates = 0
        self.obs, _ = self.envs.reset(seed=config.seed)
        self.wall_seconds = 0.0  # training wall time, over every invocation of a resumed run
        self._episode_return = np.zeros(config.n_envs)
        self.finished_returns: list[float] = []  # returns of episodes that ended since the last update

    @abstractmethod
    def make_optimizer(self) -> torch.optim.Optimizer:
        """The algorithm's optimiser over ``self.policy``'s parameters."""

    @abstractmethod
    def update(self, rollout: Rollout, last_value: np.ndarray) -> dict:
        """Learn from one rollout; returns statistics (must include ``entropy``)."""

    # -- acting -------------------------------------------------------------------------------

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        with torch.no_grad():
            dist, _ = self.policy.dist_and_value(torch.as_tensor(obs, dtype=torch.float32))
            action = self.policy.greedy(dist) if deterministic else dist.sample()
        return to_env_action(action.numpy(), self.action_space)

    def collect(self) -> tuple[Rollout, np.ndarray]:
        cfg = self.config
        n, e = cfg.n_steps, cfg.n_envs
        ro = Rollout(
            obs=np.zeros((n, e, self.obs_dim), self.obs_dtype),  # uint8 frames stay uint8 (4x smaller)
            actions=np.zeros((n, e, *self.action_shape), np.int64 if self.discrete else np.float32),
            log_probs=np.zeros((n, e), np.float32),
            rewards=np.zeros((n, e), np.float32),
            dones=np.zeros((n, e), np.float32),
            values=np.zeros((n, e), np.float32),
        )
        for t in range(n):
            with torch.no_grad():
                action, log_prob, value = self.policy.sample(torch.as_tensor(self.obs, dtype=torch.float32))
            action_np = action.numpy()
            next_obs, reward, terminated, truncated, info = self.envs.step(to_env_action(action_np, self.action_space))
            reward = reward.astype(np.float32)
            self._episode_return += reward
            done = terminated | truncated
            if done.any():
                self.finished_returns.extend(self._episode_return[done].tolist())
                self._episode_return[done] = 0.0
            cut = truncated & ~terminated
            if cut.any():  # time limit, not failure: bootstrap from the true last state
                final = np.stack([info["final_obs"][i] for i in np.flatnonzero(cut)]).astype(np.float32)
                with torch.no_grad():
                    reward[cut] += cfg.gamma * self.policy.dist_and_value(torch.as_tensor(final))[1].numpy()
            ro.obs[t], ro.actions[t], ro.log_probs[t] = self.obs.reshape(e, -1), action_np, log_prob.numpy()
            ro.rewards[t], ro.dones[t], ro.values[t] = reward, terminated | truncated, value.numpy()
            self.obs = next_obs
        with torch.no_grad():
            last_value = self.policy.dist_and_value(torch.as_tensor(self.obs, dtype=torch.float32))[1].numpy()
        self.steps += n * e
        return ro, last_value

    def _start_update(self) -> float:
        """Apply the schedules at the step count where this rollout began; returns the entropy coefficient."""
        rollout_start = self.steps - self.config.n_steps * self.config.n_envs
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(rollout_start)
        return self.beta_at(rollout_start)

    def _after_update(self, rollout: Rollout, td_errors: np.ndarray, stats: dict) -> None:
        self.updates += 1
        norm = getattr(self.policy, "obs_norm", None)
        if norm is not None:  # after the update: the rollout's log-probs and the update used the same statistics
            norm.update(rollout.obs)
        self.diagnostics.policy_entropy(stats["entropy"], self.steps, self.updates, discrete=self.discrete)
        self.diagnostics.td_errors(td_errors, self.steps, self.updates)
        if self.updates % 50 == 1:
            self.diagnostics.feature_variance(rollout.obs.reshape(-1, self.obs_dim), self.steps, self.updates)

    # -- training loop ------------------------------------------------------------------------

    def train(self, callback: Callable[[OnPolicyAlgorithm, dict], bool] | None = None,
              progress: bool = True, budget_s: float | None = None) -> TrainResult:
        """Train up to ``total_steps`` or ``budget_s`` seconds of wall time, whichever comes first;
        ``callback(agent, stats)`` returning True stops early.

        Episodes that end are reported as ``stats["episode_return"]`` (their mean over the
        rollout), logged to TensorBoard and appended to ``OUT/progress.csv`` (steps, wall
        seconds, episodes, mean return) so a learning curve survives without TensorBoard.
        """
        cfg = self.config
        log_every = max(1, 2000 // (cfg.n_steps * cfg.n_envs))

        def iterate() -> Iteration:
            rollout, last_value = self.collect()
            stats = self.update(rollout, last_value)
            return Iteration(stats, {"steps": self.steps, "entropy": stats["entropy"]})

        def after(step: Iteration) -> None:  # the loop has updated the wall time
            stats, record = step.stats, step.record
            record["seconds"] = self.wall_seconds
            if self.finished_returns:
                stats["episode_return"] = float(np.mean(self.finished_returns))
                record.update(episodes=len(self.finished_returns), episode_return=stats["episode_return"])
                self._write_progress(record)
                self.finished_returns = []
            if self.updates % log_every == 0:
                step.postfix = {"entropy": f"{stats['entropy']:.3f}", "lr": f"{stats['lr']:.2g}"}
                if self._last_return is not None:
                    step.postfix["return"] = f"{self._last_return:.3g}"
                step.postfix["scale"] = f"{stats['loss_scale']:.0f}"
                log_scalars(self.writer, stats, self.steps)

        return train_loop(self, iterate, StepCheckpoints(self, cfg.checkpoint_every_steps), total_steps=cfg.total_steps,
                          desc=f"{self.algo} {cfg.env_id}", progress=progress, budget_s=budget_s, callback=callback,
                          after=after)

    _last_return: float | None = None

    def _write_progress(self, record: dict) -> None:
        self._last_return = record["episode_return"]
        if self.run is None:
            return
        path = self.run.root / "progress.csv"
        new = not path.exists()
        with path.open("a") as f:
            if new:
                f.write("steps,seconds,episodes,episode_return\n")
            f.write(f"{record['steps']},{record['seconds']:.1f},{record['episodes']},{record['episode_return']:.4f}\n")

    # -- checkpoints --------------------------------------------------------------------------

    def identity(self) -> dict:
        """What a checkpoint must match to be loaded into this agent."""
        space = self.action_space
        return {"algo": self.algo, "env_id": self.config.env_id, "obs_dim": self.obs_dim,
                "policy": self.config.policy,
                "action_space": f"Discrete({space.n})" if isinstance(space, gym.spaces.Discrete) else str(space.shape)}

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, {
            **self.identity(),
            "config": asdict(self.config),
            "steps": self.steps,
            "updates": self.updates,
            "model": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "wall_seconds": self.wall_seconds,
        })

    def load(self, path: str | Path, weights_only: bool = False) -> None:
        """Restore a checkpoint (everything needed to resume, or only the weights)."""
        payload = load_checkpoint(path, self.identity())
        self.policy.load_state_dict(payload["model"])
        if not weights_only:
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scaler.load_state_dict(payload["scaler"])
            torch.set_rng_state(payload["torch_rng"])
            self.rng.bit_generator.state = payload["numpy_rng"]
            self.steps, self.updates = int(payload["steps"]), int(payload["updates"])
            self.wall_seconds = float(payload.get("wall_seconds", 0.0))
            # Fresh episodes, but not the ones the run started with (that would bias the draw).
            self.obs, _ = self.envs.reset(seed=self.config.seed + self.steps)

    def close(self) -> None:
        self.envs.close()
        if self.writer is not None:
            self.writer.close()
