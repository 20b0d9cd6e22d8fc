"""Actor-critics for the on-policy algorithms: a distribution over actions and a value.

``SeedActorCritic`` wraps the seed's A2C network (discrete actions). ``MLPActorCritic`` is the
usual separate-trunk MLP (64-64 tanh) with a categorical head for Discrete spaces or a
diagonal Gaussian with a state-independent log-std for Box spaces (PPO's torque policies).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal

from ds_robot.errors import ConfigError
from ds_robot.rl.networks import SeedA2CNet, mlp


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


class SeedActorCritic(CategoricalActorCritic):
    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.net = SeedA2CNet(obs_dim, n_actions)

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


def make_policy(kind: str, obs_dim: int, action_space: gym.Space) -> ActorCritic:
    if kind == "seed":
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ConfigError("the seed's A2C network has a softmax head: it needs a Discrete action space")
        return SeedActorCritic(obs_dim, int(action_space.n))
    if kind == "mlp":
        return MLPActorCritic(obs_dim, action_space)
    raise ConfigError(f"unknown policy '{kind}': choose seed or mlp")


def to_env_action(action: np.ndarray, space: gym.Space) -> np.ndarray:
    """Gaussian samples are clipped to the action bounds before they reach the env."""
    if isinstance(space, gym.spaces.Box):
        return np.clip(action, space.low, space.high)
    return action
