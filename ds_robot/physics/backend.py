"""The physics-backend interface.

A backend owns a world (MuJoCo, a physics-shifted MuJoCo, PyBullet, or a robot behind ROS 2):
it sets up an episode, applies joint torques and a gripper command for a while, and reports
what the robot's sensors read. It knows nothing of rewards or success (that is the task's
job) and nothing of policies (the controller's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.model.params import ARM_VARIANTS, default_description
from ds_robot.sim.objects import ObjectSpec


@dataclass(frozen=True)
class EpisodeSetup:
    """Everything that defines an episode's initial state."""

    obj: ObjectSpec
    object_x_m: float
    object_y_m: float
    object_yaw_rad: float
    arm_qpos_rad: np.ndarray
    gripper_opening_m: float


@dataclass
class RobotState:
    """One sensor snapshot. Poses are in the robot base frame (table top at z = 0)."""

    time_s: float
    q_rad: np.ndarray  # (6,) arm joint positions
    qd_rad_s: np.ndarray  # (6,) arm joint velocities
    tau_measured_nm: np.ndarray  # (6,) output-side joint torques, as joint-torque sensors report
    tau_applied_nm: np.ndarray  # (6,) motor torques actually applied (after saturation)
    gripper_opening_m: float
    gripper_speed_m_s: float
    tcp_pos_m: np.ndarray  # (3,)
    tcp_rot: np.ndarray  # (3, 3), columns are the TCP axes; z is the approach direction
    object_pos_m: np.ndarray  # (3,)
    object_quat: np.ndarray  # (4,) w, x, y, z
    step_work_j: float  # sum_j |tau_j * dq_j| over the last step: the energy metric (docs/architecture.md) sum |tau qd| dt, exact
    # for the held torques unless a joint reverses inside the step (measured < 1% low)
    # (left, right): each finger pad touches the object at the end of the step (the task's
    # success needs both for the whole hold: an object balanced on the fingers does not count)
    pad_contact: tuple[bool, bool] = (False, False)
    grip_force_n: float = 0.0  # the larger of the two pads' normal force on the object, N
    press_force_n: float = 0.0  # the largest normal force any other part of the robot puts on the object, N


class PhysicsBackend(ABC):
    """Interchangeable world for the grasp task. The base sets what every world reads from the
    robot description: the arm ``variant``, the physics step and the limits."""

    def __init__(self, variant: str, physics_dt_s: float):
        if not (1e-4 <= physics_dt_s <= 0.01):
            raise ConfigError(f"physics_dt_s={physics_dt_s} is outside [0.0001, 0.01] s")
        desc = default_description()
        if variant not in ARM_VARIANTS:
            raise ConfigError(f"arm variant {variant!r}: choose {' or '.join(ARM_VARIANTS)}")
        self.variant = variant
        self.physics_dt_s = physics_dt_s
        self.joint_torque_limit_nm = np.array(desc.variant(variant).joint_torque_limit_nm)
        self.max_gripper_opening_m = desc.gripper.max_opening_m
        self.finger_travel_m = desc.gripper.finger_travel_m
        self.grip_force_limit_n = desc.gripper.grip_force_limit_n

    @abstractmethod
    def reset(self, setup: EpisodeSetup) -> RobotState:
        """Put the world in the episode's initial state and return the first reading."""

    @abstractmethod
    def step(self, arm_torque_nm: np.ndarray, gripper_command: float, duration_s: float) -> RobotState:
        """Apply the torques (held constant) and the gripper command for ``duration_s``.

        ``gripper_command`` is in [-1, 1]: -1 fully open, +1 closed (force-limited).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources."""
