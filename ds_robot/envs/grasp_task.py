"""The grasp task: observation, reward, success and energy bookkeeping. Reads states, never steps.

Observation: ``ds_robot.envs.layout`` (35 torque-augmented features, encoded there).

Success (docs/architecture.md, metrics): the object is at least ``lift_threshold_m`` above its resting height and
stays there for ``hold_s`` seconds; ``time_to_lift_s`` is when that successful hold began.
Energy: sum over physics steps and arm joints of ``|tau_j * qd_j| * dt``, in joules.

Reward (dense, for RL): ``0.2 * (1 - tanh(10 * |object - tcp|))`` (reach)
``+ clip(lift / goal_height, 0, 1)`` (lift) ``+ 1`` while above the lift threshold
``- energy_weight * step_energy_j``, and ``+ success_bonus`` on success.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ds_robot.envs.layout import ObservationLayout, goal_position
from ds_robot.errors import ConfigError
from ds_robot.physics.backend import EpisodeSetup, RobotState


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
        self.layout = ObservationLayout(joint_torque_limit_nm, max_gripper_opening_m)
        self.setup: EpisodeSetup | None = None

    def reset(self, setup: EpisodeSetup, state: RobotState) -> None:
        self.setup = setup
        self._half_extents = setup.obj.half_extents_m
        self.resting_height_m = float(state.object_pos_m[2])
        rest = np.array([setup.object_x_m, setup.object_y_m, self.resting_height_m])
        self.goal_m = goal_position(rest, self.config.goal_height_m)
        self.energy_j = 0.0
        self.lift_started_s: float | None = None
        self.time_to_lift_s = math.inf  # "never", until the object is lifted and held
        self.success = False

    def observation(self, state: RobotState) -> np.ndarray:
        return self.layout.encode(
            q_rad=state.q_rad, qd_rad_s=state.qd_rad_s, tau_nm=state.tau_measured_nm,
            gripper_opening_m=state.gripper_opening_m, gripper_speed_m_s=state.gripper_speed_m_s,
            tcp_pos_m=state.tcp_pos_m, tcp_rot=state.tcp_rot, object_pos_m=state.object_pos_m,
            object_quat_wxyz=state.object_quat, object_half_extents_m=self._half_extents, goal_m=self.goal_m)

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
