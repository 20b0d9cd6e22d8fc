"""Proximal policy optimisation (clipped surrogate), discrete or continuous actions.

For each rollout: GAE(gamma, lambda) advantages, then ``n_epochs`` passes of minibatch SGD on
    L = -E[min(r A, clip(r, 1-eps, 1+eps) A)] - beta * E[H] + c_v * E[(V - R)^2],
    r = pi(a|s) / pi_old(a|s),
with per-minibatch advantage normalisation, Adam, linear learning-rate decay and the same
entropy schedules, loss scaler and diagnostics as A2C. The whole update is ``PPO.update``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ds_robot.errors import ConfigError
from ds_robot.rl.amp import optimize_step
from ds_robot.rl.onpolicy import OnPolicyAlgorithm, OnPolicyConfig, Rollout, returns_and_advantages


@dataclass(frozen=True)
class PPOConfig(OnPolicyConfig):
    n_envs: int = 8
    n_steps: int = 128
    gae_lambda: float = 0.95
    learning_rate: float = 3e-4
    ent_coef: float | str = 0.0
    policy: str = "mlp"
    n_epochs: int = 10
    minibatch_size: int = 256
    clip_range: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        if self.n_epochs < 1 or self.minibatch_size < 1 or not 0 < self.clip_range < 1:
            raise ConfigError(f"PPOConfig: need n_epochs >= 1, minibatch_size >= 1, 0 < clip_range < 1; got "
                              f"{self.n_epochs}, {self.minibatch_size}, {self.clip_range}")


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's policy loss ``-E[min(r A, clip(r, 1-eps, 1+eps) A)]``, ``r = pi(a|s) / pi_old(a|s)``
    (Schulman et al. 2017, eq. 7); returns (loss, ratio, log ratio)."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_range, 1 + clip_range) * advantages)
    return -surrogate.mean(), ratio, log_ratio


class PPO(OnPolicyAlgorithm):
    algo = "ppo"

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.policy.parameters(), lr=self.config.learning_rate, eps=1e-5)

    def update(self, rollout: Rollout, last_value: np.ndarray) -> dict:
        cfg = self.config
        returns, advantages, td_errors = returns_and_advantages(rollout, last_value, cfg.gamma, cfg.gae_lambda)
        obs = torch.as_tensor(rollout.obs.reshape(-1, self.obs_dim)).float()
        actions = torch.as_tensor(rollout.actions.reshape(-1, *self.action_shape))
        old_log_prob = torch.as_tensor(rollout.log_probs.reshape(-1))
        returns_t = torch.as_tensor(returns.reshape(-1))
        adv_t = torch.as_tensor(advantages.reshape(-1))
        beta = self._start_update()
        params = list(self.policy.parameters())
        n = len(obs)
        totals = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0}
        batches = 0
        for _ in range(cfg.n_epochs):
            order = torch.as_tensor(self.rng.permutation(n))
            for start in range(0, n, cfg.minibatch_size):
                idx = order[start : start + cfg.minibatch_size]
                adv = adv_t[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(idx) > 1 else adv

                def loss_fn(idx=idx, adv=adv):
                    dist, values = self.policy.dist_and_value(obs[idx])
                    policy_loss, ratio, log_ratio = clipped_surrogate(self.policy.log_prob(dist, actions[idx]),
                                                                      old_log_prob[idx], adv, cfg.clip_range)
                    value_loss = ((values - returns_t[idx]) ** 2).mean()
                    entropy = self.policy.entropy(dist).mean()
                    loss = policy_loss - beta * entropy + cfg.vf_coef * value_loss
                    with torch.no_grad():
                        clip_fraction = ((ratio - 1).abs() > cfg.clip_range).float().mean().item()
                        approx_kl = ((ratio - 1) - log_ratio).mean().item()
                    return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                                  "entropy": entropy.item(), "clip_fraction": clip_fraction, "approx_kl": approx_kl}

                step_stats = optimize_step(loss_fn, self.optimizer, params, self.scaler, cfg.max_grad_norm, cfg.amp)
                for key in totals:
                    totals[key] += step_stats[key]
                batches += 1
        stats = {key: value / batches for key, value in totals.items()}
        stats.update(beta=beta, lr=self.optimizer.param_groups[0]["lr"], loss_scale=self.scaler.scale)
        self._after_update(rollout, td_errors, stats)
        return stats
