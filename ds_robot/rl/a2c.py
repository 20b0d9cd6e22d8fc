"""Advantage actor-critic with entropy regularisation (docs/architecture.md, formulas), on the seed's network.

Loss (the well-defined form of the seed's gradient):
    L = -E[log pi(a|s) A(s,a)] - beta * E[H(pi(.|s))] + c_v * E[(V(s) - R)^2]
with n-step returns (``gae_lambda = 1``) or GAE, RMSprop as in the A2C paper, linear
learning-rate decay ``lr = lr0 (1 - t/T)``, an entropy coefficient that is constant or follows
the seed's schedule (0.1, halved every 100k steps), and optional bf16 autocast with the seed's
dynamic loss scaler. The whole update is ``A2C.update``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ds_robot.rl.amp import optimize_step
from ds_robot.rl.onpolicy import OnPolicyAlgorithm, OnPolicyConfig, Rollout, returns_and_advantages


@dataclass(frozen=True)
class A2CConfig(OnPolicyConfig):
    """Defaults: rl-zoo's CartPole A2C layout (8 envs x 5 steps, lr 7e-4, RMSprop, n-step returns)
    on the seed's network, with the seed's training practice on top: entropy coefficient 0.01
    and linear learning-rate decay (rl-zoo uses 0 and a constant rate)."""


class A2C(OnPolicyAlgorithm):
    algo = "a2c"

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.policy.parameters(), lr=self.config.learning_rate, alpha=0.99, eps=1e-5)

    def update(self, rollout: Rollout, last_value: np.ndarray) -> dict:
        cfg = self.config
        returns, advantages, td_errors = returns_and_advantages(rollout, last_value, cfg.gamma, cfg.gae_lambda)
        obs = torch.as_tensor(rollout.obs.reshape(-1, self.obs_dim)).float()
        actions = torch.as_tensor(rollout.actions.reshape(-1, *self.action_shape))
        returns_t = torch.as_tensor(returns.reshape(-1))
        adv_t = torch.as_tensor(advantages.reshape(-1))
        beta = self._start_update()

        def loss_fn():
            dist, values = self.policy.dist_and_value(obs)
            log_prob = self.policy.log_prob(dist, actions)
            entropy = self.policy.entropy(dist).mean()
            policy_loss = -(log_prob * adv_t).mean()
            value_loss = ((values - returns_t) ** 2).mean()
            loss = policy_loss - beta * entropy + cfg.vf_coef * value_loss  # docs/architecture.md, formulas
            return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                          "entropy": entropy.item()}

        stats = optimize_step(loss_fn, self.optimizer, list(self.policy.parameters()), self.scaler,
                              cfg.max_grad_norm, cfg.amp)
        stats.update(beta=beta, lr=self.optimizer.param_groups[0]["lr"])
        self._after_update(rollout, td_errors, stats)
        return stats
