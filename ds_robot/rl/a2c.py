"""Advantage actor-critic with entropy regularisation (DESIGN §5), on the seed's network.

Loss (the well-defined form of the seed's gradient):
    L = -E[log pi(a|s) A(s,a)] - beta * E[H(pi(.|s))] + c_v * E[(V(s) - R)^2]
with n-step returns (``gae_lambda = 1``) or GAE, RMSprop as in the A2C paper, linear
learning-rate decay ``lr = lr0 (1 - t/T)``, and an entropy coefficient that is constant or
follows the seed's schedule (0.1, halved every 100k steps). Optional bf16 autocast with the
seed's dynamic loss scaler. Everything the update does is in ``A2C.update``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ds_robot.errors import ConfigError
from ds_robot.rl import schedules
from ds_robot.rl.amp import DynamicLossScaler, optimize_step
from ds_robot.rl.checkpoint import load_checkpoint, save_checkpoint
from ds_robot.rl.common import RunDir, discrete_actions, flat_obs_dim, make_vector_env, seed_everything
from ds_robot.rl.diagnostics import Diagnostics
from ds_robot.rl.networks import SeedA2CNet

torch.distributions.Distribution.set_default_validate_args(False)


@dataclass(frozen=True)
class A2CConfig:
    env_id: str = "CartPole-v1"
    total_steps: int = 200_000
    n_envs: int = 8
    n_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    learning_rate: float = 7e-4
    lr_decay: bool = True
    ent_coef: float | str = 0.01  # a number, or "halving"
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    amp: bool = False
    seed: int = 0
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
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"A2C: impossible value for {', '.join(bad)}: {[getattr(self, b) for b in bad]}")
        schedules.entropy_schedule(self.ent_coef)


@dataclass
class Rollout:
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    values: np.ndarray


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def returns_and_advantages(rollout: Rollout, last_value: np.ndarray, gamma: float, lam: float):
    """GAE(gamma, lambda); with lambda = 1 the returns are the n-step bootstrapped returns."""
    n = len(rollout.rewards)
    advantages = np.zeros_like(rollout.rewards)
    gae = np.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(n)):
        not_done = 1.0 - rollout.dones[t]
        delta = rollout.rewards[t] + gamma * next_value * not_done - rollout.values[t]
        gae = delta + gamma * lam * not_done * gae
        advantages[t] = gae
        next_value = rollout.values[t]
    return advantages + rollout.values, advantages


class A2C:
    algo = "a2c"

    def __init__(self, config: A2CConfig, out: str | Path | None = None):
        self.config = config
        self.rng = seed_everything(config.seed)
        self.envs = make_vector_env(config.env_id, config.n_envs, config.seed)
        self.obs_dim = flat_obs_dim(self.envs.single_observation_space)
        self.n_actions = discrete_actions(self.envs.single_action_space)
        self.net = SeedA2CNet(self.obs_dim, self.n_actions)
        self.optimizer = torch.optim.RMSprop(self.net.parameters(), lr=config.learning_rate, alpha=0.99, eps=1e-5)
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

    # -- acting -------------------------------------------------------------------------------

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        with torch.no_grad():
            logits, _ = self.net(torch.as_tensor(obs, dtype=torch.float32))
        if deterministic:
            return logits.argmax(-1).numpy()
        return torch.distributions.Categorical(logits=logits).sample().numpy()

    def collect(self) -> tuple[Rollout, np.ndarray]:
        cfg = self.config
        n, e = cfg.n_steps, cfg.n_envs
        ro = Rollout(np.zeros((n, e, self.obs_dim), np.float32), np.zeros((n, e), np.int64),
                     np.zeros((n, e), np.float32), np.zeros((n, e), np.float32), np.zeros((n, e), np.float32))
        for t in range(n):
            obs_t = torch.as_tensor(self.obs, dtype=torch.float32)
            with torch.no_grad():
                logits, value = self.net(obs_t)
                action = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)
            next_obs, reward, terminated, truncated, info = self.envs.step(action.numpy())
            reward = reward.astype(np.float32)
            if truncated.any():  # time limit, not failure: bootstrap from the true last state
                final = np.stack([info["final_obs"][i] for i in np.flatnonzero(truncated)]).astype(np.float32)
                with torch.no_grad():
                    reward[truncated & ~terminated] += cfg.gamma * self.net(torch.as_tensor(final))[1].numpy()[
                        ~terminated[truncated]]
            ro.obs[t], ro.actions[t], ro.rewards[t] = self.obs, action.numpy(), reward
            ro.dones[t], ro.values[t] = terminated | truncated, value.numpy()
            self.obs = next_obs
        with torch.no_grad():
            last_value = self.net(torch.as_tensor(self.obs, dtype=torch.float32))[1].numpy()
        self.steps += n * e
        return ro, last_value

    # -- learning -----------------------------------------------------------------------------

    def update(self, ro: Rollout, last_value: np.ndarray) -> dict:
        cfg = self.config
        returns, advantages = returns_and_advantages(ro, last_value, cfg.gamma, cfg.gae_lambda)
        obs = torch.as_tensor(ro.obs.reshape(-1, self.obs_dim))
        actions = torch.as_tensor(ro.actions.reshape(-1))
        returns_t = torch.as_tensor(returns.reshape(-1))
        adv_t = torch.as_tensor(advantages.reshape(-1))
        beta = self.beta_at(self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.steps)

        def loss_fn():
            logits, values = self.net(obs)
            log_probs = torch.log_softmax(logits.float(), -1)
            entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
            policy_loss = -(log_probs.gather(1, actions[:, None]).squeeze(1) * adv_t).mean()
            value_loss = ((values.float() - returns_t) ** 2).mean()
            loss = policy_loss - beta * entropy + cfg.vf_coef * value_loss  # DESIGN §5
            return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                          "entropy": entropy.item()}

        stats = optimize_step(loss_fn, self.optimizer, list(self.net.parameters()), self.scaler,
                              cfg.max_grad_norm, cfg.amp)
        self.updates += 1
        stats.update(beta=beta, lr=self.optimizer.param_groups[0]["lr"])
        self.diagnostics.policy_entropy(stats["entropy"], self.steps, self.updates, discrete=True)
        self.diagnostics.td_errors(advantages, self.steps, self.updates)
        if self.updates % 50 == 1:
            self.diagnostics.feature_variance(ro.obs.reshape(-1, self.obs_dim), self.steps, self.updates)
        return stats

    def train(self, callback: Callable[[A2C, dict], bool] | None = None, progress: bool = True) -> TrainResult:
        """Train to ``total_steps``; ``callback(agent, stats)`` returning True stops early."""
        cfg = self.config
        start = time.perf_counter()
        result = TrainResult(steps=self.steps, seconds=0.0)
        bar = tqdm(total=cfg.total_steps, initial=self.steps, desc=f"a2c {cfg.env_id}", unit="step",
                   disable=not progress, smoothing=0.05)
        next_checkpoint = self.steps + cfg.checkpoint_every_steps
        while self.steps < cfg.total_steps:
            ro, last_value = self.collect()
            stats = self.update(ro, last_value)
            bar.update(cfg.n_steps * cfg.n_envs)
            if self.updates % 100 == 0:
                bar.set_postfix(entropy=f"{stats['entropy']:.3f}", beta=f"{stats['beta']:.3g}",
                                scale=f"{stats['loss_scale']:.0f}")
                if self.writer is not None:
                    for key, value in stats.items():
                        self.writer.add_scalar(f"train/{key}", value, self.steps)
            result.history.append({"steps": self.steps, "entropy": stats["entropy"]})
            if self.run is not None and self.steps >= next_checkpoint:
                self.save(self.run.checkpoint)
                next_checkpoint += cfg.checkpoint_every_steps
            if callback is not None and callback(self, stats):
                result.stopped_early = True
                break
        bar.close()
        result.steps, result.seconds = self.steps, time.perf_counter() - start
        if self.run is not None:
            self.save(self.run.checkpoint)
            self.save(self.run.final)
        return result

    # -- checkpoints --------------------------------------------------------------------------

    def _identity(self) -> dict:
        return {"algo": self.algo, "env_id": self.config.env_id, "obs_dim": self.obs_dim, "n_actions": self.n_actions}

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, {
            **self._identity(),
            "config": {k: v for k, v in asdict(self.config).items()},
            "steps": self.steps,
            "updates": self.updates,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        })

    def load(self, path: str | Path, weights_only: bool = False) -> None:
        payload = load_checkpoint(path, self._identity())
        self.net.load_state_dict(payload["model"])
        if not weights_only:
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scaler.load_state_dict(payload["scaler"])
            torch.set_rng_state(payload["torch_rng"])
            self.steps, self.updates = payload["steps"], payload["updates"]

    def close(self) -> None:
        self.envs.close()
        if self.writer is not None:
            self.writer.close()
