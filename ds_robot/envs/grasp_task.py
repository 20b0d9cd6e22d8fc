"""The grasp task: observation, reward, success and energy bookkeeping. Reads states, never steps.

Observation (float32, torque-augmented; ``OBS_SLICES`` names each part):

==================  ====  =====================================================================
name                size  content
==================  ====  =====================================================================
q                   6     arm joint positions, rad
qd                  6     arm joint velocities / pi (rad/s, so the UR's 180 deg/s maps to 1)
tau                 6     measured (output-side) joint torques / joint torque limits
gripper             2     opening / max opening; opening speed, m/s x 10
object_pos          3     object centre in the TCP frame, m
object_rot          6     object orientation in the TCP frame (first two rotation columns)
object_size         3     object bounding-box half-extents in its own frame, m
goal                3     goal position minus object position, base frame, m
==================  ====  =====================================================================

Success (DESIGN §6): the object is at least ``lift_threshold_m`` above its resting height and
stays there for ``hold_s`` seconds; ``time_to_lift_s`` is when that successful hold began.
Energy: sum over physics steps and arm joints of ``|tau_j * qd_j| * dt``, in joules.

Reward (dense, for RL): ``0.2 * (1 - tanh(10 * |object - tcp|))`` (reach)
``+ clip(lift / goal_height, 0, 1)`` (lift) ``+ 1`` while above the lift threshold
``- energy_weight * step_energy_j``, and ``+ success_bonus`` on success.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.physics.backend import EpisodeSetup, RobotState

OBS_FIELDS = (
    ("q", 6),
    ("qd", 6),
    ("tau", 6),
    ("gripper", 2),
    ("object_pos", 3),
    ("object_rot", 6),
    ("object_size", 3),
    ("goal", 3),
)


def _slices() -> dict[str, slice]:
    out, start = {}, 0
    for name, size in OBS_FIELDS:
        out[name] = slice(start, start + size)
        start += size
    return out


OBS_SLICES: dict[str, slice] = _slices()
OBS_SIZE = sum(size for _, size in OBS_FIELDS)


@dataclass(frozen=True)
class GraspTaskConfig:
    lift_threshold_m: float = 0.05
    hold_s: float = 1.0
    goal_height_m: float = 0.10
    drop_height_m: float = -0.05  # object below this (off the table): episode over
    energy_weight_per_j: float = 0.01
    success_bonus: float = 10.0

    def __post_init__(self):
        if self.lift_threshold_m <= 0 or self.hold_s < 0 or self.goal_height_m < self.lift_threshold_m:
            raise ConfigError(
                "grasp task: need lift_threshold_m > 0, hold_s >= 0 and goal_height_m >= lift_threshold_m, "
                f"got {self.lift_threshold_m}, {self.hold_s}, {self.goal_height_m}"
            )


@dataclass
class StepOutcome:
    reward: float
    success: bool
    lifted: bool
    dropped: bool


class GraspTask:
    def __init__(self, config: GraspTaskConfig, joint_torque_limit_nm: np.ndarray, max_gripper_opening_m: float):
        self.config = config
        self.joint_torque_limit_nm = np.asarray(joint_torque_limit_nm, dtype=float)
        self._inv_torque_limit = 1.0 / self.joint_torque_limit_nm
        self._scratch = np.empty((3, 3))
        self._object_mat = np.empty(9)
        self.max_gripper_opening_m = max_gripper_opening_m
        self.setup: EpisodeSetup | None = None

    def reset(self, setup: EpisodeSetup, state: RobotState) -> None:
        self.setup = setup
        self._half_extents = setup.obj.half_extents_m
        self.resting_height_m = float(state.object_pos_m[2])
        self.goal_m = np.array([setup.object_x_m, setup.object_y_m, self.resting_height_m + self.config.goal_height_m])
        self.energy_j = 0.0
        self.lift_started_s: float | None = None
        self.time_to_lift_s = math.inf  # "never", until the object is lifted and held
        self.success = False

    def observation(self, state: RobotState) -> np.ndarray:
        s = OBS_SLICES
        obs = np.empty(OBS_SIZE, dtype=np.float32)
        obs[s["q"]] = state.q_rad
        obs[s["qd"]] = state.qd_rad_s * (1.0 / math.pi)
        obs[s["tau"]] = state.tau_measured_nm * self._inv_torque_limit
        obs[s["gripper"]] = (state.gripper_opening_m / self.max_gripper_opening_m, state.gripper_speed_m_s * 10.0)
        # Rows: object offset, object x axis, object y axis (world); times R_tcp gives each in the
        # TCP frame, in the order object_pos, object_rot[:3], object_rot[3:].
        rows = self._scratch
        np.subtract(state.object_pos_m, state.tcp_pos_m, out=rows[0])
        mujoco.mju_quat2Mat(self._object_mat, state.object_quat)
        rows[1:] = self._object_mat.reshape(3, 3).T[:2]
        obs[s["object_pos"].start : s["object_rot"].stop] = (rows @ state.tcp_rot).ravel()
        obs[s["object_size"]] = self._half_extents
        obs[s["goal"]] = self.goal_m - state.object_pos_m
        return obs

    def lifted(self, state: RobotState) -> bool:
        return bool(state.object_pos_m[2] - self.resting_height_m >= self.config.lift_threshold_m)

    def update(self, state: RobotState) -> StepOutcome:
        """Book-keep one control step (energy, lift, success) and return its reward."""
        cfg = self.config
        self.energy_j += state.step_work_j
        object_z = float(state.object_pos_m[2])
        height_gain = object_z - self.resting_height_m
        lifted = height_gain >= cfg.lift_threshold_m
        if not lifted:
            self.lift_started_s = None
        elif self.lift_started_s is None:
            self.lift_started_s = state.time_s
        if lifted and not self.success and state.time_s - self.lift_started_s >= cfg.hold_s - 1e-9:
            self.success = True
            self.time_to_lift_s = self.lift_started_s
        reach = 1.0 - math.tanh(10.0 * math.dist(state.object_pos_m.tolist(), state.tcp_pos_m.tolist()))
        reward = (
            0.2 * reach
            + min(max(height_gain / cfg.goal_height_m, 0.0), 1.0)
            + (1.0 if lifted else 0.0)
            - cfg.energy_weight_per_j * state.step_work_j
            + (cfg.success_bonus if self.success else 0.0)
        )
        return StepOutcome(reward=reward, success=self.success, lifted=lifted, dropped=object_z < cfg.drop_height_m)
