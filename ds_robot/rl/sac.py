"""Soft actor-critic (Haarnoja et al. 2018, with learned temperature), for continuous actions.

Per (vector) environment step after ``learning_starts``: sample a batch from the replay buffer
(uniform, or prioritized with the seed's novelty term), then
    critic:  L_Q = E_w[(Q_i(s,a) - y)^2],  y = r + gamma (1-d) (min_j Q'_j(s',a') - alpha log pi(a'|s'))
    actor:   L_pi = E[alpha log pi(a|s) - min_j Q_j(s,a)],  a ~ pi (reparameterised, tanh-squashed)
    alpha:   L_alpha = -E[log alpha (log pi(a|s) + target_entropy)],  target_entropy = -dim(A)
with importance weights w from prioritized replay (ones for uniform) and priorities updated
with the batch's TD errors; targets follow by Polyak averaging. The whole update is
``SAC.update``.

Checkpoints hold networks, optimisers and counters; the replay buffer is saved beside them
only with ``save_replay`` (a million Humanoid transitions is ~2.8 GB). Resuming without it
refills the buffer for ``learning_starts`` steps first.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ds_robot.errors import ConfigError
from ds_robot.rl.amp import DynamicLossScaler, optimize_step
from ds_robot.rl.checkpoint import load_checkpoint, save_checkpoint
from ds_robot.rl.common import RunDir, flat_obs_dim, log_scalars, make_vector_env, seed_everything
from ds_robot.rl.diagnostics import Diagnostics
from ds_robot.rl.loop import Iteration, StepCheckpoints, TrainResult, train_loop
from ds_robot.rl.networks import mlp
from ds_robot.rl.replay import PrioritizedReplayBuffer, ReplayBuffer

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass(frozen=True)
class SACConfig:
    env_id: str = "Pendulum-v1"
    total_steps: int = 100_000
    n_envs: int = 1
    replay: str = "uniform"  # uniform | per | per_novelty
    buffer_size: int = 1_000_000
    batch_size: int = 256
    learning_starts: int = 5_000
    gamma: float = 0.99
    tau: float = 0.005
    learning_rate: float = 3e-4
    hidden: tuple[int, ...] = (256, 256)
    per_alpha: float = 0.6
    per_eta: float = 0.2
    amp: bool = False
    seed: int = 0
    save_replay: bool = False
    checkpoint_every_steps: int = 50_000

    def __post_init__(self):
        if self.replay not in ("uniform", "per", "per_novelty"):
            raise ConfigError(f"SAC: replay={self.replay!r}; choose uniform, per or per_novelty")
        checks = {"total_steps": self.total_steps >= 1, "n_envs": self.n_envs >= 1,
                  "buffer_size": self.buffer_size >= self.batch_size >= 1, "gamma": 0 <= self.gamma <= 1,
                  "tau": 0 < self.tau <= 1, "learning_rate": self.learning_rate > 0,
                  "learning_starts": self.learning_starts >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("SACConfig: impossible value for " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad))


class SquashedGaussianActor(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.trunk = mlp([obs_dim, *hidden], activation=nn.ReLU)
        self.trunk.append(nn.ReLU())
        self.mean = nn.Linear(hidden[-1], action_dim)
        self.log_std = nn.Linear(hidden[-1], action_dim)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("offset", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Action in the env's bounds and its log-probability in the normalised [-1, 1] space."""
        h = self.trunk(obs)
        mean = self.mean(h).float()
        log_std = self.log_std(h).float().clamp(LOG_STD_MIN, LOG_STD_MAX)
        std = log_std.exp()
        pre = mean if deterministic else mean + std * torch.randn_like(mean)
        squashed = torch.tanh(pre)
        log_prob = (-0.5 * ((pre - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        # Density of the squashed action in [-1, 1]^n (tanh change of variables); the affine map to
        # the env's bounds is left out, so the target entropy -dim(A) means the same for any bounds.
        log_prob = log_prob - torch.log(1 - squashed.pow(2) + 1e-6).sum(-1)
        return squashed * self.scale + self.offset, log_prob


class TwinQ(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.q1 = mlp([obs_dim + action_dim, *hidden, 1], activation=nn.ReLU)
        self.q2 = mlp([obs_dim + action_dim, *hidden, 1], activation=nn.ReLU)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], -1)
        return self.q1(x).squeeze(-1).float(), self.q2(x).squeeze(-1).float()


class SAC:
    algo = "sac"

    def __init__(self, config: SACConfig, out: str | Path | None = None, wrappers=()):
        self.config = config
        self.rng = seed_everything(config.seed)
        self.envs = make_vector_env(config.env_id, config.n_envs, config.seed, wrappers)
        space = self.envs.single_action_space
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and np.all(np.isfinite(space.low))
                and np.all(np.isfinite(space.high))):
            raise ConfigError(f"SAC needs a bounded 1-D Box action space; {config.env_id} has {space}")
        self.action_space = space
        self.obs_dim = flat_obs_dim(self.envs.single_observation_space)
        self.action_dim = space.shape[0]
        self.actor = SquashedGaussianActor(self.obs_dim, self.action_dim, config.hidden, space.low, space.high)
        self.critic = TwinQ(self.obs_dim, self.action_dim, config.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.target_entropy = -float(self.action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.learning_rate)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.learning_rate)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.learning_rate)
        # One loss scaler per network: an overflow in the critic must not shrink the actor's scale.
        self.critic_scaler = DynamicLossScaler(enabled=config.amp)
        self.actor_scaler = DynamicLossScaler(enabled=config.amp)
        self.alpha_scaler = DynamicLossScaler(enabled=False)  # a scalar in fp32: nothing to scale
        self.buffer = self._make_buffer()
        self.run = RunDir(Path(out)) if out is not None else None
        self.writer = self.run.writer() if self.run is not None else None
        self.diagnostics = Diagnostics(self.writer)
        self.steps = 0
        self.updates = 0
        self.wall_seconds = 0.0  # training wall time, over every invocation of a resumed run
        self.obs, _ = self.envs.reset(seed=config.seed)

    def _make_buffer(self) -> ReplayBuffer:
        cfg = self.config
        shape = dict(capacity=cfg.buffer_size, obs_shape=(self.obs_dim,), action_shape=(self.action_dim,),
                     seed=cfg.seed)
        if cfg.replay == "uniform":
            return ReplayBuffer(**shape)
        eta = cfg.per_eta if cfg.replay == "per_novelty" else 0.0
        return PrioritizedReplayBuffer(**shape, alpha=cfg.per_alpha, eta=eta,
                                       beta_steps=max(1, (cfg.total_steps - cfg.learning_starts) // cfg.n_envs))

    # -- acting -------------------------------------------------------------------------------

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        with torch.no_grad():
            action, _ = self.actor(torch.as_tensor(obs, dtype=torch.float32).reshape(len(obs), -1), deterministic)
        return action.numpy()

    def collect_step(self) -> None:
        if self.steps < self.config.learning_starts:
            space = self.action_space
            action = self.rng.uniform(space.low, space.high, (self.config.n_envs, self.action_dim)).astype(np.float32)
        else:
            action = self.act(self.obs, deterministic=False)
        next_obs, reward, terminated, truncated, info = self.envs.step(action)
        stored_next = next_obs.copy()
        for i in np.flatnonzero(terminated | truncated):  # same-step autoreset: the true last state
            stored_next[i] = info["final_obs"][i]
        # Only termination cuts the bootstrap; a time limit does not.
        self.buffer.add(self.obs.reshape(len(action), -1), action, reward, stored_next.reshape(len(action), -1),
                        terminated.astype(np.float32))
        self.obs = next_obs
        self.steps += self.config.n_envs

    # -- learning -----------------------------------------------------------------------------

    def update(self) -> dict:
        cfg = self.config
        batch = self.buffer.sample(cfg.batch_size)
        obs, action = torch.as_tensor(batch.obs), torch.as_tensor(batch.action)
        reward, done = torch.as_tensor(batch.reward, dtype=torch.float32), torch.as_tensor(batch.done,
                                                                                             dtype=torch.float32)
        next_obs, weights = torch.as_tensor(batch.next_obs), torch.as_tensor(batch.weights, dtype=torch.float32)
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_log_prob = self.actor(next_obs)
            target_q = torch.min(*self.critic_target(next_obs, next_action)) - alpha * next_log_prob
            target = reward + cfg.gamma * (1.0 - done) * target_q
        td = {}

        def critic_loss():
            q1, q2 = self.critic(obs, action)
            td["error"] = (0.5 * ((q1 - target) + (q2 - target))).detach()
            loss = (weights * ((q1 - target) ** 2 + (q2 - target) ** 2)).mean()
            return loss, {"critic_loss": loss.item(), "q": q1.mean().item()}

        stats = optimize_step(critic_loss, self.critic_opt, list(self.critic.parameters()), self.critic_scaler, None,
                              cfg.amp)

        def actor_loss():
            new_action, log_prob = self.actor(obs)
            q = torch.min(*self.critic(obs, new_action))
            loss = (alpha * log_prob - q).mean()
            td["log_prob"] = log_prob.detach()
            return loss, {"actor_loss": loss.item(), "entropy": -log_prob.mean().item()}

        stats.update(optimize_step(actor_loss, self.actor_opt, list(self.actor.parameters()), self.actor_scaler, None,
                                   cfg.amp))
        self.critic.zero_grad(set_to_none=True)  # the actor's backward pass also reached the critic

        def alpha_loss():
            loss = -(self.log_alpha * (td["log_prob"] + self.target_entropy)).mean()
            return loss, {"alpha_loss": loss.item()}

        stats.update(optimize_step(alpha_loss, self.alpha_opt, [self.log_alpha], self.alpha_scaler, None, False))
        with torch.no_grad():
            for target_p, p in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                target_p.lerp_(p, cfg.tau)
        td_error = td["error"].numpy()
        if isinstance(self.buffer, PrioritizedReplayBuffer):
            self.buffer.update_priorities(batch.indices, np.abs(td_error))
        self.updates += 1
        stats["alpha"] = float(alpha)
        self.diagnostics.td_errors(td_error, self.steps, self.updates)
        if self.updates % 1000 == 1:
            self.diagnostics.feature_variance(batch.obs, self.steps, self.updates)
            self.diagnostics.policy_entropy(stats["entropy"], self.steps, self.updates, discrete=False)
        return stats

    def train(self, callback: Callable[[SAC, dict], bool] | None = None, progress: bool = True,
              budget_s: float | None = None) -> TrainResult:
        cfg = self.config
        warm_until = self.steps + cfg.learning_starts if len(self.buffer) == 0 else self.steps
        last: dict = {}

        def iterate() -> Iteration:
            nonlocal last
            self.collect_step()
            postfix = None
            if self.steps >= max(cfg.learning_starts, warm_until) and len(self.buffer) >= cfg.batch_size:
                last = self.update()
                if self.updates % 1000 == 0:
                    postfix = {"alpha": f"{last['alpha']:.3f}", "q": f"{last['q']:.1f}"}
                    log_scalars(self.writer, last, self.steps)
            return Iteration(last, postfix=postfix)

        return train_loop(self, iterate, StepCheckpoints(self, cfg.checkpoint_every_steps), total_steps=cfg.total_steps,
                          desc=f"sac {cfg.env_id}", progress=progress, budget_s=budget_s, callback=callback)

    # -- checkpoints --------------------------------------------------------------------------

    def identity(self) -> dict:
        return {"algo": self.algo, "env_id": self.config.env_id, "obs_dim": self.obs_dim,
                "action_space": str(self.action_space.shape)}

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, {
            **self.identity(),
            "config": asdict(self.config),
            "steps": self.steps,
            "updates": self.updates,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "optimizers": [o.state_dict() for o in (self.actor_opt, self.critic_opt, self.alpha_opt)],
            "scalers": [self.critic_scaler.state_dict(), self.actor_scaler.state_dict()],
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "wall_seconds": self.wall_seconds,
        })
        if self.config.save_replay:
            self.buffer.save(Path(path).with_suffix(".replay.npz"))

    def load(self, path: str | Path, weights_only: bool = False) -> None:
        payload = load_checkpoint(path, self.identity())
        self.actor.load_state_dict(payload["actor"])
        if weights_only:
            return
        self.critic.load_state_dict(payload["critic"])
        self.critic_target.load_state_dict(payload["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(payload["log_alpha"])
        for opt, state in zip((self.actor_opt, self.critic_opt, self.alpha_opt), payload["optimizers"], strict=True):
            opt.load_state_dict(state)
        self.critic_scaler.load_state_dict(payload["scalers"][0])
        self.actor_scaler.load_state_dict(payload["scalers"][1])
        torch.set_rng_state(payload["torch_rng"])
        self.rng.bit_generator.state = payload["numpy_rng"]
        self.steps, self.updates = int(payload["steps"]), int(payload["updates"])
        self.wall_seconds = float(payload.get("wall_seconds", 0.0))
        self.obs, _ = self.envs.reset(seed=self.config.seed + self.steps)
        replay = Path(path).with_suffix(".replay.npz")
        if self.config.save_replay and replay.exists():
            self.buffer = type(self.buffer).load(replay)

    def close(self) -> None:
        self.envs.close()
        if self.writer is not None:
            self.writer.close()
