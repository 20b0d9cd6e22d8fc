"""Actor-critics for the on-policy algorithms: a distribution over actions and a value.

``A2CPaperActorCritic`` wraps the seed's A2C network (discrete actions). ``MLPActorCritic`` is the
usual separate-trunk MLP (64-64 tanh) with a categorical head for Discrete spaces or a
diagonal Gaussian with a state-independent log-std for Box spaces (PPO's torque policies);
``mlp_norm`` is the same behind a running observation normaliser (``RunningNorm``: the
statistics are buffers, so checkpoints and evaluation carry them; the trainer updates them
from each rollout's observations before the update, as Stable-Baselines3's ``VecNormalize`` does
for observations).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal

from ds_robot.errors import ConfigError
from ds_robot.rl.networks import A2CPaperNet, mlp


class ActorCritic(nn.Module, ABC):
    discrete: bool

    @abstractmethod
    def dist_and_value(self, obs: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """The action distribution at ``obs`` and the state value."""

    def log_prob(self, dist, actions: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(actions)
        return lp if self.discrete else lp.sum(-1)

    def entropy(self, dist) -> torch.Tensor:
        ent = dist.entropy()
        return ent if self.discrete else ent.sum(-1)

    def greedy(self, dist) -> torch.Tensor:
        return dist.probs.argmax(-1) if self.discrete else dist.mean

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Action, its log-probability and the value at ``obs`` (the rollout's hot path)."""
        dist, value = self.dist_and_value(obs)
        action = dist.sample()
        return action, self.log_prob(dist, action), value


class CategoricalActorCritic(ActorCritic):
    """Discrete policies from logits, with a sampling path that skips building a distribution."""

    discrete = True

    @abstractmethod
    def logits_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised action scores and the state value."""

    def dist_and_value(self, obs):
        logits, value = self.logits_and_value(obs)
        return Categorical(logits=logits), value

    def sample(self, obs):
        logits, value = self.logits_and_value(obs)
        log_probs = torch.log_softmax(logits, -1)
        action = torch.multinomial(log_probs.exp(), 1)
        return action.squeeze(-1), log_probs.gather(-1, action).squeeze(-1), value


class A2CPaperActorCritic(CategoricalActorCritic):
    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.net = A2CPaperNet(obs_dim, n_actions)

    def logits_and_value(self, obs):
        logits, value = self.net(obs)
        return logits.float(), value.float()


class MLPActorCritic(ActorCritic):
    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            out = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            out = action_space.shape[0]
            self.log_std = nn.Parameter(torch.zeros(out))
        else:
            raise ConfigError(f"unsupported action space {action_space}: need Discrete or a 1-D Box")
        self.actor = mlp([obs_dim, *hidden, out], out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden, 1], out_gain=1.0)

    def dist_and_value(self, obs):
        head = self.actor(obs).float()
        value = self.critic(obs).squeeze(-1).float()
        if self.discrete:
            return Categorical(logits=head), value
        return Normal(head, self.log_std.exp().expand_as(head)), value


class RunningNorm(nn.Module):
    """``clip((x - mean) / sqrt(var + eps), -clip, clip)`` with the mean and variance of every
    observation seen so far (Chan et al.'s parallel update, in float64)."""

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: np.ndarray) -> None:
        x = torch.as_tensor(np.asarray(batch, dtype=np.float64).reshape(-1, self.mean.numel()))
        if not torch.isfinite(x).all():
            raise ValueError("observation normaliser: NaN/Inf in the observations")
        n = float(x.shape[0])
        if n == 0:
            return
        mean, var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta**2 * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x.double() - self.mean) / torch.sqrt(self.var + self.eps)
        return scaled.clamp(-self.clip, self.clip).to(x.dtype if x.is_floating_point() else torch.float32)


class NormalizedMLPActorCritic(MLPActorCritic):
    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: tuple[int, ...] = (64, 64)):
        super().__init__(obs_dim, action_space, hidden)
        self.obs_norm = RunningNorm(obs_dim)

    def dist_and_value(self, obs):
        return super().dist_and_value(self.obs_norm(obs))


class CNNActorCritic(CategoricalActorCritic):
    """Nature-DQN convolutional trunk (Mnih et al. 2015) shared by a categorical policy and a value
    head, for stacked 84x84 frames (uint8, scaled to [0, 1] here)."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int):
        super().__init__()
        if len(obs_shape) != 3:
            raise ConfigError(f"the CNN policy needs image observations (C, H, W), got shape {obs_shape}")
        self.obs_shape = tuple(obs_shape)
        self.trunk = nn.Sequential(
            nn.Conv2d(obs_shape[0], 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.trunk(torch.zeros(1, *obs_shape)).shape[1]
        self.trunk.append(nn.Linear(width, 512))
        self.trunk.append(nn.ReLU())
        self.policy_head = nn.Linear(512, n_actions)
        self.value_head = nn.Linear(512, 1)
        nn.init.orthogonal_(self.policy_head.weight, 0.01)
        nn.init.zeros_(self.policy_head.bias)

    def logits_and_value(self, obs):
        features = self.trunk(obs.reshape(-1, *self.obs_shape) / 255.0)
        return self.policy_head(features).float(), self.value_head(features).squeeze(-1).float()


POLICIES = ("a2c_paper", "mlp", "mlp_norm", "cnn")


def make_policy(kind: str, obs_shape: tuple[int, ...], action_space: gym.Space) -> ActorCritic:
    """``a2c_paper``: the source document's A2C network; ``mlp``: 64-64 tanh MLPs; ``mlp_norm``:
    the same behind a running observation normaliser; ``cnn``: Nature-DQN for frames."""
    obs_dim = int(np.prod(obs_shape))
    if kind in ("a2c_paper", "cnn") and not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"the {kind} policy has a softmax head: it needs a Discrete action space")
    if kind == "a2c_paper":
        return A2CPaperActorCritic(obs_dim, int(action_space.n))
    if kind == "mlp":
        return MLPActorCritic(obs_dim, action_space)
    if kind == "mlp_norm":
        return NormalizedMLPActorCritic(obs_dim, action_space)
    if kind == "cnn":
        return CNNActorCritic(tuple(obs_shape), int(action_space.n))
    raise ConfigError(f"unknown policy '{kind}': choose {', '.join(POLICIES)}"
                      + (" (the source document's A2C network is called a2c_paper)" if kind == "seed" else ""))


def to_env_action(action: np.ndarray, space: gym.Space) -> np.ndarray:
    """Gaussian samples are clipped to the action bounds before they reach the env."""
    if isinstance(space, gym.spaces.Box):
        return np.clip(action, space.low, space.high)
    return action
