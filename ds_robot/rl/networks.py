"""Networks. ``A2CPaperNet`` is the source document's A2C architecture, layer for layer
(``docs/architecture.md``, formulas)."""

from __future__ import annotations

import torch
from torch import nn


class A2CPaperNet(nn.Module):
    """shared: Linear(state, 256) -> ReLU -> LayerNorm(256);
    policy: Linear(256, 128) -> Tanh -> Linear(128, actions) -> Softmax;
    value:  Linear(256, 128) -> ReLU -> Linear(128, 1).

    ``forward`` returns the policy *logits* (the Softmax is applied by the categorical
    distribution, in log space, which is the same policy and numerically safer) and the value.
    """

    def __init__(self, obs_dim: int, n_actions: int):
        super().__init__()
        self.feature = nn.Sequential(nn.Linear(obs_dim, 256), nn.ReLU(), nn.LayerNorm(256))
        self.policy = nn.Sequential(nn.Linear(256, 128), nn.Tanh(), nn.Linear(128, n_actions))
        self.value = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.feature(obs)
        return self.policy(features), self.value(features).squeeze(-1)

    def probabilities(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(obs)[0], dim=-1)


def mlp(sizes: list[int], activation=nn.Tanh, out_gain: float | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        if out_gain is not None and i == len(sizes) - 2:
            nn.init.orthogonal_(linear.weight, out_gain)
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
