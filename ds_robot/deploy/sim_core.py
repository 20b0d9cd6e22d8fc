"""The sim node's robot: MuJoCo standing in for a UR arm behind ros2_control (no ROS here).

It takes the same commands the real controllers take and turns them into motor torques the
way the robot would:

- ``effort`` (UR e-Series ``forward_effort_controller``): the command plus the controller
  box's own gravity compensation (``adds_gravity``; its model of the arm, here the
  ``RobotModel`` — the same description as the world, so exact);
- ``velocity`` (CB3 ``forward_velocity_controller``): a joint velocity servo,
  ``tau = bias(q, qd) + M(q) kv (v_cmd - qd)``.

Like ros2_control's forward controllers it holds the last command until a new one arrives.
The world is a :class:`~ds_robot.envs.grasp_env.UR5GraspEnv` stepped one physics step
(2 ms) at a time, so success, time to lift and energy are the task's own bookkeeping.
``world="shifted"`` makes it the sim-to-real stand-in for a real arm: the physics-shifted MuJoCo
of :mod:`ds_robot.sim2real.worlds` (hidden damping, armature, friction, motor gains, payload,
object mass and friction, drawn per episode from ``world_seed``; no added command latency: the
ROS loop has its own). ``shift`` holds the truth, for scoring only.
"""

from __future__ import annotations

import math

import numpy as np

from ds_robot.control.robot_model import RobotModel
from ds_robot.deploy.core import COMMAND_INTERFACES
from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.errors import ConfigError
from ds_robot.model.params import N_ARM_JOINTS
from ds_robot.sim import scene
from ds_robot.sim2real.worlds import build_world

SIM_NODE_WORLDS = ("nominal", "shifted", "unmodelled")  # the sim node's worlds (``ds_robot.sim2real.worlds``)


class SimArm:
    def __init__(self, robot: str = "ur5e", command_interface: str = "effort", adds_gravity: bool = True,
                 objects=None, physics_dt_s: float = 0.002, velocity_gain: float = 60.0, world: str = "nominal",
                 world_seed: int = 0):
        if command_interface not in COMMAND_INTERFACES:
            raise ConfigError(f"command_interface {command_interface!r}: choose effort or velocity")
        if velocity_gain * physics_dt_s >= 1.0 or velocity_gain <= 0:
            raise ConfigError(f"velocity_gain={velocity_gain} must be in (0, 1/physics_dt_s)")
        if world not in SIM_NODE_WORLDS:
            raise ConfigError(f"world {world!r}: choose {', '.join(SIM_NODE_WORLDS)}")
        self.world = world
        backend = build_world(world, robot, physics_dt_s, seed=world_seed, max_latency_steps=0)
        # A real arm has no episode length: the env's time limit is out of reach (a day).
        self.env = UR5GraspEnv(objects=objects, robot=robot, control_dt_s=physics_dt_s, physics_dt_s=physics_dt_s,
                               episode_s=86_400.0, backend=backend)
        self.command_interface = command_interface
        self.adds_gravity = adds_gravity
        self.velocity_gain = velocity_gain
        self.dt = physics_dt_s
        self.model = RobotModel(robot)
        self.limit = self.env.backend.joint_torque_limit_nm
        self.arm_joint_names = tuple(n.removeprefix(scene.ARM_PREFIX) for n in scene.ARM_JOINTS)
        self.gripper_joint_names = tuple(n.removeprefix(scene.GRIPPER_PREFIX) for n in scene.FINGER_JOINTS)
        self.command = np.zeros(N_ARM_JOINTS)
        self.gripper = -1.0
        self.done = False
        self.info: dict = {}

    def reset(self, seed: int) -> None:
        self.env.reset(seed=seed)
        self.command[:] = 0.0
        self.gripper = -1.0
        self.done = False
        self.info = {}

    def set_command(self, values, gripper: float | None = None) -> None:
        values = np.asarray(values, dtype=float)
        if values.shape != (N_ARM_JOINTS,) or not np.all(np.isfinite(values)):
            raise ValueError(f"command must be {N_ARM_JOINTS} finite numbers, got {values.tolist()}")
        self.command[:] = values
        if gripper is not None:
            if not math.isfinite(gripper):
                raise ValueError("gripper command must be finite")
            self.gripper = float(np.clip(gripper, -1.0, 1.0))

    def motor_torque(self) -> np.ndarray:
        s = self.env.state
        self.model.update(s.q_rad, s.qd_rad_s, s.gripper_opening_m)
        if self.command_interface == "effort":
            tau = self.command + (self.model.gravity_torque() if self.adds_gravity else 0.0)
        else:
            accel = self.velocity_gain * (self.command - s.qd_rad_s)
            tau = self.model.bias_torque() + self.model.mass_matrix() @ accel
        return np.clip(tau, -self.limit, self.limit)

    def step(self) -> None:
        """One physics step with the held command. After success or a drop the world keeps
        running (the arm does not vanish); the outcome stays frozen in ``info``."""
        action = np.append(self.motor_torque() / self.limit, self.gripper)
        _, _, terminated, _, info = self.env.step(action)
        if not self.done:
            self.info = info
            self.done = terminated

    @property
    def shift(self) -> dict | None:
        """The shifted or unmodelled world's hidden physics this episode (None in the nominal world)."""
        if self.world == "shifted":
            return self.env.backend.shift.as_dict()
        return self.env.backend.physics.as_dict() if self.world == "unmodelled" else None

    @property
    def time_s(self) -> float:
        return self.env.state.time_s
