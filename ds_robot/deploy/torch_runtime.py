"""The hierarchical policy's networks in torch eager, fp32: the comparison point for the NumPy
and int8 runtimes (``ds-robot quantize``, ``ds-robot bench node``). Not used on the robot."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ds_robot.hier.policy import HierPolicy, NumpyMLP


class TorchMLP:
    """A :class:`NumpyMLP` as ``torch.nn.Sequential`` (Linear, Tanh, ..., Linear); NumPy in, NumPy out."""

    def __init__(self, net: NumpyMLP):
        layers: list[torch.nn.Module] = []
        last = len(net.weights) - 1
        for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
            linear = torch.nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                linear.weight.copy_(torch.as_tensor(w.T, dtype=torch.float32))
                linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
            layers.append(linear)
            if i < last:
                layers.append(torch.nn.Tanh())
        self.net = torch.nn.Sequential(*layers).eval()
        self.in_size, self.out_size = net.in_size, net.out_size

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()


def torch_policy(policy: HierPolicy, threads: int = 1) -> HierPolicy:
    """The policy on torch; one intra-op thread by default (batch 1: more threads only add overhead)."""
    torch.set_num_threads(threads)
    return dataclasses.replace(policy, planner=TorchMLP(policy.planner), skills=[TorchMLP(s) for s in policy.skills])
