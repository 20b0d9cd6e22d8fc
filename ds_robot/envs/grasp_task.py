"""The grasp task: observation, reward, success and energy bookkeeping. Reads states, never steps.

Observation: ``ds_robot.envs.layout`` (35 torque-augmented features, encoded there).

Success (docs/architecture.md, metrics): the object is at least ``lift_threshold_m`` above its resting height
*with both finger pads touching it* and stays so for ``hold_s`` seconds (an object balanced on
the closed fingers, pushed up or thrown does not count); ``time_to_lift_s`` is when that
successful hold began. ``require_pad_contact=False`` restores the height-only test.
A fragile object (``ObjectSpec.crush_force_n``) pressed harder than its limit by a pad or any
other part of the robot is broken: the episode ends, failed (``crushed``).
Energy: sum over physics steps and arm joints of ``|tau_j * qd_j| * dt``, in joules.

Reward (dense, for RL), potential-based shaping (Ng et al. 1999, "Policy invariance under reward
transformations") so that no per-step term can be collected by not finishing:
``Phi(s') - Phi(s)`` with ``Phi = 0.2 * (1 - tanh(10 * |object - tcp|)) + clip(lift / goal_height, 0, 1)``,
``- energy_weight * step_energy_j``, ``+ success_bonus`` once, on success (which ends the episode).
Hovering with the object lifted returns at most ``Phi``'s range (1.2); succeeding returns the bonus
on top (``tests/test_env.py`` checks it on the scripted trajectory).
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
    require_pad_contact: bool = True

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
    crushed: bool = False


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
        self.crushed = False
        self._crush_n = setup.obj.crush_force_n
        self._potential = self._phi(state)

    def _phi(self, state: RobotState) -> float:
        reach = 1.0 - math.tanh(10.0 * math.dist(state.object_pos_m.tolist(), state.tcp_pos_m.tolist()))
        lift = (float(state.object_pos_m[2]) - self.resting_height_m) / self.config.goal_height_m
        return 0.2 * reach + min(max(lift, 0.0), 1.0)

    def observation(self, state: RobotState, seen: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                    ) -> np.ndarray:
        """The observation; ``seen`` = (position, quaternion, half-extents) the controller perceives
        of the object (default: the truth)."""
        pos, quat, half = seen if seen is not None else (state.object_pos_m, state.object_quat, self._half_extents)
        return self.layout.encode(
            q_rad=state.q_rad, qd_rad_s=state.qd_rad_s, tau_nm=state.tau_measured_nm,
            gripper_opening_m=state.gripper_opening_m, gripper_speed_m_s=state.gripper_speed_m_s,
            tcp_pos_m=state.tcp_pos_m, tcp_rot=state.tcp_rot, object_pos_m=pos,
            object_quat_wxyz=quat, object_half_extents_m=half, goal_m=self.goal_m)

    def lifted(self, state: RobotState) -> bool:
        return bool(state.object_pos_m[2] - self.resting_height_m >= self.config.lift_threshold_m)

    def update(self, state: RobotState) -> StepOutcome:
        """Book-keep one control step (energy, lift, success) and return its reward."""
        cfg = self.config
        self.energy_j += state.step_work_j
        object_z = float(state.object_pos_m[2])
        lifted = self.lifted(state)
        held = lifted and (not cfg.require_pad_contact or all(state.pad_contact))
        if not held:
            self.lift_started_s = None
        elif self.lift_started_s is None:
            self.lift_started_s = state.time_s
        if held and not self.success and state.time_s - self.lift_started_s >= cfg.hold_s - 1e-9:
            self.success = True
            self.time_to_lift_s = self.lift_started_s
        if not self.success and max(state.grip_force_n, state.press_force_n) > self._crush_n:
            self.crushed = True  # a fragile object broke: the episode is over, failed
        potential = self._phi(state)
        reward = (potential - self._potential - cfg.energy_weight_per_j * state.step_work_j
                  + (cfg.success_bonus if self.success else 0.0))
        self._potential = potential
        return StepOutcome(reward=reward, success=self.success, lifted=lifted, dropped=object_z < cfg.drop_height_m,
                           crushed=self.crushed)
