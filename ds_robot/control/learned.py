"""A flat learned grasp controller: one PPO (or A2C) policy from the observation to the arm.

Two kinds of checkpoint:

- trained on ``ds_robot/UR5GraspNoTorque-v0`` / ``UR5Grasp-v0`` (the first releases' ``flat``):
  the policy outputs joint torques directly; on the NoTorque env it sees the torque slice as
  zero, which this controller enforces whatever env it runs in;
- trained on ``ds_robot/UR5GraspCartesian-v0`` (``flat_ppo``, the fair flat baseline): the policy
  outputs a TCP velocity, wrist yaw rate and gripper command every ``ACTION_REPEAT`` control
  steps, and ``CartesianCommand`` turns it into gravity-compensated joint torques each step,
  exactly as in training.

``SB3CartesianController`` runs a Stable-Baselines3 model (``sb3_sac``, trained by
``ds_robot.rl.sb3_peer``) on the same Cartesian env the same way.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ds_robot.control.cartesian import ACTION_REPEAT, CARTESIAN_ACTION_SIZE, CartesianCommand
from ds_robot.control.contract import Controller
from ds_robot.envs.layout import ACTION_SIZE, OBS_SIZE, OBS_SLICES
from ds_robot.errors import ConfigError
from ds_robot.rl.checkpoint import load_checkpoint
from ds_robot.rl.policies import make_policy

CARTESIAN_ENV_ID = "ds_robot/UR5GraspCartesian-v0"
FLAT_ENV_IDS = ("ds_robot/UR5GraspNoTorque-v0", "ds_robot/UR5Grasp-v0", CARTESIAN_ENV_ID)


class FlatPolicyController(Controller):
    name = "flat"

    def __init__(self, checkpoint: str | Path, variant: str = "ur5e", control_dt_s: float = 0.01):
        payload = load_checkpoint(checkpoint)
        env_id = payload.get("config", {}).get("env_id")
        if payload.get("algo") not in ("ppo", "a2c") or env_id not in FLAT_ENV_IDS:
            raise ConfigError(f"{checkpoint}: a flat grasp controller needs a ppo/a2c checkpoint trained on "
                              f"{' or '.join(FLAT_ENV_IDS)}; this one is {payload.get('algo')} on {env_id}")
        if payload.get("obs_dim") != OBS_SIZE:
            raise ConfigError(f"{checkpoint} expects {payload.get('obs_dim')} observation features; the grasp env "
                              f"has {OBS_SIZE}: retrain it")
        self.command = CartesianCommand(variant, control_dt_s) if env_id == CARTESIAN_ENV_ID else None
        size = CARTESIAN_ACTION_SIZE if self.command is not None else ACTION_SIZE
        box = gym.spaces.Box(-1.0, 1.0, shape=(size,), dtype=np.float32)
        self.policy = make_policy(payload["config"]["policy"], (OBS_SIZE,), box)
        self.policy.load_state_dict(payload["model"])
        self.policy.eval()
        self._torque_features = env_id != "ds_robot/UR5GraspNoTorque-v0"
        self.trained_steps = int(payload["steps"])
        self._step = 0

    @property
    def uses_torque_features(self) -> bool:
        return self._torque_features

    @property
    def robot_model(self):
        return self.command.robot if self.command is not None else None

    def reset(self, obs: np.ndarray) -> None:
        self._step = 0
        if self.command is not None:
            self.command.reset(obs)

    def _policy_action(self, obs: np.ndarray) -> np.ndarray:
        obs = np.array(obs, dtype=np.float32)
        if not self._torque_features:
            obs[OBS_SLICES["tau"]] = 0.0
        with torch.no_grad():
            dist, _ = self.policy.dist_and_value(torch.from_numpy(obs)[None])
            action = self.policy.greedy(dist)[0].numpy()
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.command is None:
            return self._policy_action(obs)
        if self._step % ACTION_REPEAT == 0:
            self._held = self._policy_action(obs)
        self._step += 1
        return self.command(obs, self._held)


class SB3CartesianController(FlatPolicyController):
    """A Stable-Baselines3 policy (``.zip``) trained on ``ds_robot/UR5GraspCartesian-v0``."""

    name = "sb3_sac"

    def __init__(self, path: str | Path, variant: str = "ur5e", control_dt_s: float = 0.01):
        try:
            from stable_baselines3 import SAC
        except ImportError as exc:
            raise ConfigError("the sb3_sac controller needs stable-baselines3: pip install 'ds-robot[bench]'") from exc
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"SB3 policy file not found: {path}")
        self.model = SAC.load(path, device="cpu")
        obs_shape, act_shape = self.model.observation_space.shape, self.model.action_space.shape
        if obs_shape != (OBS_SIZE,) or act_shape != (CARTESIAN_ACTION_SIZE,):
            raise ConfigError(f"{path}: a model for observations {obs_shape} and actions {act_shape}; the Cartesian "
                              f"grasp env has ({OBS_SIZE},) and ({CARTESIAN_ACTION_SIZE},)")
        self.command = CartesianCommand(variant, control_dt_s)
        self._torque_features = True
        self.trained_steps = int(self.model.num_timesteps)
        self._step = 0

    def _policy_action(self, obs: np.ndarray) -> np.ndarray:
        action, _ = self.model.predict(np.asarray(obs, dtype=np.float32), deterministic=True)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
