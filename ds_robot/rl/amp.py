"""Mixed precision with the seed's dynamic loss scaling (docs/architecture.md, formulas).

Autocast runs the forward pass in bf16 on CPU or fp16 on CUDA (the agents in ``ds_robot.rl``
train on the CPU, so they use bf16; ``autocast`` and the scaler take a CUDA device as they are). ``DynamicLossScaler``
implements the seed's rule: initial scale 2^15; after 2000 consecutive overflow-free steps
``scale = min(2 * scale, 2^24)``; on overflow ``scale /= 2`` and *the same batch is retried*.
torch's GradScaler has neither the cap nor the retry, so this is a small state machine of
its own; ``optimize_step`` ties it to an optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ds_robot.errors import DsRobotError


class TrainingError(DsRobotError):
    """Training cannot continue (diverged, overflowed repeatedly, bad checkpoint...)."""


@dataclass
class DynamicLossScaler:
    scale: float = 2.0**15
    growth_interval: int = 2000
    max_scale: float = 2.0**24
    min_scale: float = 1.0
    enabled: bool = True
    good_steps: int = 0
    overflows: int = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_and_check(self, params: Iterable[torch.nn.Parameter]) -> bool:
        """Divide gradients by the scale in place; True if any is NaN/Inf (an overflow)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return False
        if self.enabled:
            torch._foreach_mul_(grads, 1.0 / self.scale)
        norms = torch.stack([g.detach().abs().max() for g in grads])
        return not bool(torch.isfinite(norms).all())

    def update(self, overflow: bool) -> None:
        """Advance the state machine after one step (or one overflowed attempt)."""
        if not self.enabled:
            return
        if overflow:
            self.overflows += 1
            self.good_steps = 0
            self.scale = max(self.scale / 2.0, self.min_scale)
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale = min(self.scale * 2.0, self.max_scale)
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps, self.overflows = state["scale"], state["good_steps"], state["overflows"]


def autocast(enabled: bool, device: torch.device | str = "cpu"):
    """bf16 autocast on CPU, fp16 on CUDA; a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def optimize_step(
    compute_loss: Callable[[], tuple[torch.Tensor, dict]],
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    scaler: DynamicLossScaler,
    max_grad_norm: float | None = None,
    amp: bool = False,
    max_retries: int = 30,
) -> dict:
    """One optimizer step on one batch; on overflow halve the scale and retry the same batch.

    ``compute_loss`` must recompute the loss from the same batch each call.
    """
    for _ in range(max_retries):
        optimizer.zero_grad(set_to_none=True)
        with autocast(amp):
            loss, stats = compute_loss()
        scaler.scale_loss(loss.float()).backward()
        overflow = scaler.unscale_and_check(params)
        scaler.update(overflow)
        if overflow:
            if not scaler.enabled:
                raise TrainingError("gradients are NaN/Inf without loss scaling: the run has diverged")
            continue
        if max_grad_norm is not None:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        optimizer.step()
        stats["loss_scale"] = scaler.scale
        return stats
    raise TrainingError(f"loss overflowed {max_retries} times in a row (scale now {scaler.scale:g}): diverged")
