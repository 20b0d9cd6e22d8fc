"""``ds_robot/UR5GraspCartesian-v0``: the flat RL baseline's environment (``flat_ppo``, ``sb3_sac``).

What an RL engineer would give a flat policy for grasping rather than raw joint torques
(robosuite's operational-space controllers, for example, take end-effector deltas): the
policy moves the TCP, the arm's model does the rest.

Action (5, in [-1, 1]): TCP velocity in the base frame (x, y, z; ``max_speed_m_s``), yaw rate of
the wrist (``max_yaw_rate_rad_s``; the TCP points down throughout) and the gripper command
(-1 open .. 1 closed). Each action is held for ``action_repeat`` control steps (default 5:
20 Hz, 240 decisions in a 12 s episode). Every control step (100 Hz) the reference pose moves
by the velocity, is kept inside the workspace box, and becomes joint targets by the model's
inverse kinematics; the joint torque is the same gravity-compensated computed-torque law the
scripted controller uses (``M(q) (kp e + kd de) + bias(q)``, the same gains).

Observation: the grasp env's 35 features (``ds_robot.envs.layout``: perceived object on the
realistic task, torques included unless ``torque_features=False``). Reward: the grasp task's
potential-based reward summed over the repeated steps (``ds_robot.envs.grasp_task``: it pays
for succeeding, not for hovering). Termination and ``info`` as the grasp env's.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from ds_robot.control.robot_model import RobotModel
from ds_robot.control.scripted import ScriptedConfig
from ds_robot.envs.grasp_env import UR5GraspEnv, checked_action
from ds_robot.envs.layout import ACTION_SIZE, OBS_SIZE, ObservationLayout
from ds_robot.errors import ConfigError
from ds_robot.model.params import default_description

CARTESIAN_ACTION_SIZE = 5
ACTION_REPEAT = 5  # control steps per policy action: 20 Hz at the grasp env's 100 Hz
WORKSPACE_M = (np.array([0.15, -0.45, 0.0]), np.array([0.85, 0.45, 0.45]))  # TCP box (base frame)


class CartesianCommand:
    """The action mapping: a 5-D Cartesian action to the grasp env's 7-D torque action, one
    control step at a time (stateful: the reference pose and joint targets). Shared by the
    training env and the run-time controller (``ds_robot.control.learned``)."""

    def __init__(self, variant: str = "ur5e", control_dt_s: float = 0.01, max_speed_m_s: float = 0.25,
                 max_yaw_rate_rad_s: float = 1.5):
        if max_speed_m_s <= 0 or max_yaw_rate_rad_s <= 0 or control_dt_s <= 0:
            raise ConfigError(f"cartesian action: need positive speeds and control period, got {max_speed_m_s}, "
                              f"{max_yaw_rate_rad_s}, {control_dt_s}")
        desc = default_description()
        self.robot = RobotModel(variant)
        self.limit = np.asarray(desc.variant(variant).joint_torque_limit_nm, dtype=float)
        self.layout = ObservationLayout(self.limit, desc.gripper.max_opening_m)
        cfg = ScriptedConfig()
        w, z = cfg.natural_frequency_rad_s, cfg.damping_ratio
        self.kp, self.kd = w * w, 2.0 * z * w
        self.dt = control_dt_s
        self.max_speed_m_s, self.max_yaw_rate_rad_s = float(max_speed_m_s), float(max_yaw_rate_rad_s)

    def _decode(self, obs: np.ndarray) -> None:
        self.q = self.layout.joint_positions(obs)
        self.qd = self.layout.joint_velocities(obs)
        self.robot.update(self.q, self.qd, float(self.layout.gripper(obs)[0]))

    def reset(self, obs: np.ndarray) -> None:
        self._decode(obs)
        pos, rot = self.robot.tcp_pose()
        self.ref_pos = pos.copy()
        self.yaw = float(np.arctan2(rot[1, 1], rot[0, 1]))  # of the jaws' closing axis (the TCP's y)
        self.q_des = self.q.copy()

    def reference_rotation(self) -> np.ndarray:
        closing = np.array([np.cos(self.yaw), np.sin(self.yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        return np.column_stack([np.cross(closing, down), closing, down])

    def __call__(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The env action for this control step, moving the reference by ``action`` (5, [-1, 1])."""
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.ref_pos = np.clip(self.ref_pos + action[:3] * self.max_speed_m_s * self.dt, *WORKSPACE_M)
        self.yaw += action[3] * self.max_yaw_rate_rad_s * self.dt
        self._decode(obs)
        q_des, _ = self.robot.inverse_kinematics(self.ref_pos, self.reference_rotation(), self.q_des, iterations=4)
        qd_des = (q_des - self.q_des) / self.dt
        self.q_des = q_des
        self._decode(obs)  # the IK moved the model's state
        torque = self.robot.mass_matrix() @ (self.kp * (q_des - self.q) + self.kd * (qd_des - self.qd))
        torque += self.robot.bias_torque()
        env_action = np.empty(ACTION_SIZE, dtype=np.float32)
        env_action[:6] = np.clip(torque / self.limit, -1.0, 1.0)
        env_action[6] = action[4]
        return env_action


class CartesianGraspEnv(gym.Env):
    """``task``: a task preset (``sim/tasks/``) whose ``split`` object set and settings build the
    grasp env (explicit ``env_kwargs`` override them); None: the grasp env's defaults."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, action_repeat: int = ACTION_REPEAT, max_speed_m_s: float = 0.25, max_yaw_rate_rad_s: float = 1.5,
                 task: str | None = None, split: str = "train", **env_kwargs):
        if action_repeat < 1:
            raise ConfigError(f"cartesian env: action_repeat must be >= 1, got {action_repeat}")
        if task is not None:
            from ds_robot.envs.presets import load_task

            env_kwargs = {**load_task(task).env_kwargs(split), **env_kwargs}
        self.env = UR5GraspEnv(**env_kwargs)
        self.action_repeat = int(action_repeat)
        self.command = CartesianCommand(self.env.backend.variant, self.env.control_dt_s, max_speed_m_s,
                                        max_yaw_rate_rad_s)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(CARTESIAN_ACTION_SIZE,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBS_SIZE,), dtype=np.float32)
        self.render_mode = self.env.render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = obs
        self.command.reset(obs)
        return obs, info

    def step(self, action):
        action = checked_action(action, CARTESIAN_ACTION_SIZE, "TCP velocity x y z, yaw rate, gripper")
        total = 0.0
        for _ in range(self.action_repeat):
            obs, reward, terminated, truncated, info = self.env.step(self.command(self._obs, action))
            self._obs = obs
            total += reward
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()
