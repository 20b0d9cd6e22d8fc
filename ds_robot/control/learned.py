"""A flat learned grasp controller: one PPO policy straight from observation to joint torques.

This is the "before" of the seed's claims (no hierarchy, no torque features): the policy is
trained with ``ds-robot train ppo --env ds_robot/UR5GraspNoTorque-v0`` and sees the torque
slice as zero, which this controller enforces whatever env it runs in.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ds_robot.control.contract import Controller
from ds_robot.envs.layout import ACTION_SIZE, OBS_SIZE, OBS_SLICES
from ds_robot.errors import ConfigError
from ds_robot.rl.checkpoint import load_checkpoint
from ds_robot.rl.policies import make_policy

FLAT_ENV_IDS = ("ds_robot/UR5GraspNoTorque-v0", "ds_robot/UR5Grasp-v0")


class FlatPolicyController(Controller):
    name = "flat"
    robot_model = None  # model-free

    def __init__(self, checkpoint: str | Path):
        payload = load_checkpoint(checkpoint)
        env_id = payload.get("config", {}).get("env_id")
        if payload.get("algo") not in ("ppo", "a2c") or env_id not in FLAT_ENV_IDS:
            raise ConfigError(f"{checkpoint}: a flat grasp controller needs a ppo/a2c checkpoint trained on "
                              f"{' or '.join(FLAT_ENV_IDS)}; this one is {payload.get('algo')} on {env_id}")
        if payload.get("obs_dim") != OBS_SIZE:
            raise ConfigError(f"{checkpoint} expects {payload.get('obs_dim')} observation features; the grasp env "
                              f"has {OBS_SIZE}: retrain it")
        box = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_SIZE,), dtype=np.float32)
        self.policy = make_policy(payload["config"]["policy"], (OBS_SIZE,), box)
        self.policy.load_state_dict(payload["model"])
        self.policy.eval()
        self._torque_features = env_id == "ds_robot/UR5Grasp-v0"
        self.trained_steps = int(payload["steps"])

    @property
    def uses_torque_features(self) -> bool:
        return self._torque_features

    def reset(self, obs: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.array(obs, dtype=np.float32)
        if not self._torque_features:
            obs[OBS_SLICES["tau"]] = 0.0
        with torch.no_grad():
            dist, _ = self.policy.dist_and_value(torch.from_numpy(obs)[None])
            action = self.policy.greedy(dist)[0].numpy()
        return np.clip(action, -1.0, 1.0).astype(np.float32)
