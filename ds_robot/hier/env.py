"""``ds_robot/UR5GraspHier-v0``: the hierarchical controller's training environment.

``HierGraspEnv`` wraps ``UR5GraspEnv`` with the model-based skill machine
(``ScriptedGraspController``): the learner chooses each attempt's grasp option (the planner)
and adds residual joint torques and a gripper correction (the skill policies); the machine
supplies the phase, the reference motion and the computed-torque term. Features and action
composition: ``ds_robot.hier.features`` (shared with the run-time controller).

Action (8): ``[option index, residual (6 joint torques / limits), gripper correction]``;
the option index is read only on steps whose observation has ``decision = 1``.

Reward (both levels; the planner's return for a decision is the sum of rewards from it to
the end of the episode): ``success_reward`` when the task succeeds, ``-drop_penalty`` if the
object falls off the table, ``-attempt_penalty`` each time a failed grasp starts a new attempt
(a re-grasp costs cycle time and risks the object; a probe's in-hand re-squeeze is not a new
attempt), ``-energy_weight * step energy (J)``, ``-time_weight * dt`` and
``-residual_weight * mean(residual^2)`` on the policy's raw (unclipped) residual action, as in
residual RL: without it the Gaussian means drift past the clipping bound, where nothing
pulls them back, and the residual takes over the torque. With ``tracking_weight`` > 0 also
``-tracking_weight * mean(tracking^2)``, the features' joint target minus joint position (rad
x 10), reported as ``info["tracking_cost"]`` so that the planner's return can leave it out.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from ds_robot.control.scripted import ScriptedConfig, ScriptedGraspController
from ds_robot.envs.grasp_env import UR5GraspEnv, checked_action
from ds_robot.hier.features import (
    GRIPPER_SCALE,
    HIER_ACTION_SIZE,
    HIER_OBS_SIZE,
    RESIDUAL_SCALE,
    H,
    compose_action,
    hier_observation,
    residual_acts,
)
from ds_robot.hier.options import DEFAULT_OPTIONS, validate_options

RESIDUAL_WEIGHT = 0.01  # the skills' regulariser; the planner's return leaves it out (hier.train)
# Reward per joule of arm work. An episode's 30-45 J then cost 0.15-0.23, under the success
# reward (1) and the drop penalty (1): energy breaks ties between grasps that succeed alike, it
# does not buy risk. At 0.02 (rounds 1-8) the same episodes cost 0.6-0.9, a success netted ~0.1,
# and with the round-8 planner deciding after it (its probe paths cost 12 J more), weighing a
# tool-box-sized object first returned less than gripping it at full force and crushing it in
# the 16% of training episodes where it was fragile (-0.40 vs -0.18; BENCHMARKS.md, issue 16,
# round 9). Lowered alone, it did not measurably change the test set; with the residual-free
# probe (hier.features.residual_acts) it did.
ENERGY_WEIGHT = 0.005


class HierGraspEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, options=None, torque_features: bool = True, residual_scale: float = RESIDUAL_SCALE,
                 gripper_scale: float = GRIPPER_SCALE, success_reward: float = 1.0, drop_penalty: float = 1.0,
                 energy_weight: float = ENERGY_WEIGHT, time_weight: float = 0.02, residual_weight: float = RESIDUAL_WEIGHT,
                 attempt_penalty: float = 0.0, probe_residual: bool = False,
                 palm_clearance_m: float | None = ScriptedConfig.palm_clearance_m, tracking_weight: float = 0.0,
                 **env_kwargs):
        for name, value in (("attempt_penalty", attempt_penalty), ("tracking_weight", tracking_weight)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite value >= 0, got {value!r}")
        self.tracking_weight = float(tracking_weight)
        self.env = UR5GraspEnv(**env_kwargs)
        self.options = validate_options(options if options is not None else DEFAULT_OPTIONS)
        self.torque_features = torque_features
        self.residual_scale, self.gripper_scale = residual_scale, gripper_scale
        self.success_reward, self.drop_penalty = success_reward, drop_penalty
        self.energy_weight, self.time_weight, self.residual_weight = energy_weight, time_weight, residual_weight
        self.attempt_penalty = float(attempt_penalty)
        self.probe_residual = probe_residual  # False: no residual during a probe (features.residual_acts)
        self.machine = ScriptedGraspController.for_env(self.env, ScriptedConfig(palm_clearance_m=palm_clearance_m))
        self.machine.option_chooser = self._chosen
        self.machine.torque_available = torque_features  # the payload check reads the measured torques
        self.limit = self.env.backend.joint_torque_limit_nm
        k = len(self.options)
        self.action_space = gym.spaces.Box(np.array([0.0] + [-1.0] * 7, np.float32),
                                           np.array([k - 1.0] + [1.0] * 7, np.float32), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(HIER_OBS_SIZE,), dtype=np.float32)
        self.render_mode = self.env.render_mode
        self._pending = 0
        self.decisions: list[int] = []

    def _chosen(self, obs: np.ndarray, attempt: int):
        self.decisions.append(self._pending)
        return self.options[self._pending]

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        self._obs = obs
        return hier_observation(obs, self.machine, self.torque_features)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.machine.reset(obs)
        self.decisions = []
        self._energy = 0.0
        return self._observe(obs), info

    def step(self, action):
        action = checked_action(action, HIER_ACTION_SIZE, "option index, 6 residual torques, gripper correction")
        self._pending = int(np.clip(np.rint(action[0]), 0, len(self.options) - 1))
        residual = np.clip(action[1:], -1.0, 1.0)
        attempt = self.machine.attempt
        torque, gripper = self.machine.command(self._obs)
        if not residual_acts(self.machine, self.probe_residual):
            residual = np.zeros_like(residual)
        env_action = compose_action(torque, gripper, residual, self.limit, self.residual_scale, self.gripper_scale)
        obs, _, terminated, truncated, info = self.env.step(env_action)
        step_energy = info["energy_j"] - self._energy
        self._energy = info["energy_j"]
        reward = (-self.energy_weight * step_energy - self.time_weight * self.env.control_dt_s
                  - self.residual_weight * float(np.mean(action[1:] ** 2)))
        if self.machine.attempt > max(attempt, 1):  # a new attempt after a failed one (the first is free)
            reward -= self.attempt_penalty
        if info["success"]:
            reward += self.success_reward
        elif terminated:
            reward -= self.drop_penalty
        features = self._observe(obs)
        tracking_cost = (self.tracking_weight * float(np.mean(features[H["tracking"]].astype(np.float64) ** 2))
                         if self.tracking_weight > 0 else 0.0)
        reward -= tracking_cost
        info = {**info, "attempts": self.machine.attempt, "option": self.options.index(self.machine.option),
                "tracking_cost": tracking_cost}
        return features, reward, terminated, truncated, info

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()
