"""PyBullet as a second "real" world: another engine built from the same URDF as the MuJoCo
scene (``models/ur5/<variant>.urdf``, from ``models_dir()``), the same table plane (top at z = 0), objects and
placements, torque control of the arm.

What is the same: links, masses, inertias, joint limits and viscous damping (from the URDF),
the 2 ms physics step, the motor torque limits, object shapes, masses and friction (PyBullet
multiplies the two bodies' friction coefficients, so the fingers and the table get 1.0 and
the contact uses the object's value, as MuJoCo's priority rule does).

What differs, on purpose or because PyBullet has no equivalent:
- the default velocity motors are switched off (zero force) and torques are applied with
  ``TORQUE_CONTROL``;
- joint friction loss is applied as a smooth Coulomb torque ``-f tanh(qd / 0.01)`` inside the
  commanded torque (PyBullet has no joint friction loss in torque mode);
- rotor inertia (armature) does not exist in PyBullet: it is added to each child link's inertia
  about its joint axis (without it the wrist joints are ~50x lighter than the controller's model
  says and a computed-torque controller at 100 Hz chatters: measured);
- the gripper's fingers are position-controlled with the same 60 N force limit, each finger
  on its own (no equality coupling);
- contact: PyBullet's rigid LCP contacts instead of MuJoCo's soft contacts.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.model.params import ARM_JOINT_NAMES, N_ARM_JOINTS, default_description
from ds_robot.paths import models_dir
from ds_robot.physics.backend import EpisodeSetup, PhysicsBackend, RobotState

FRICTION_SMOOTHING_RAD_S = 0.01


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level stdout (file descriptor 1) for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class PyBulletBackend(PhysicsBackend):
    def __init__(self, variant: str = "ur5e", physics_dt_s: float = 0.002):
        try:
            import pybullet as p
        except ImportError as exc:  # pragma: no cover - pybullet is a core dependency
            raise ConfigError("the pybullet world needs the pybullet package") from exc
        super().__init__(variant, physics_dt_s)
        self.p = p
        desc = default_description()
        self.client = p.connect(p.DIRECT)
        p.setGravity(0, 0, -9.81, physicsClientId=self.client)
        p.setTimeStep(physics_dt_s, physicsClientId=self.client)
        urdf = models_dir() / f"{variant}.urdf"
        if not urdf.is_file():
            raise ConfigError(f"missing robot description {urdf}: run `ds-robot model generate`")
        with _quiet_stdout():  # the C importer prints a warning per frame-only link (fixed below)
            self.robot = p.loadURDF(str(urdf), useFixedBase=True, flags=p.URDF_USE_INERTIA_FROM_FILE,
                                    physicsClientId=self.client)
        names = {p.getJointInfo(self.robot, i, physicsClientId=self.client)[1].decode(): i
                 for i in range(p.getNumJoints(self.robot, physicsClientId=self.client))}
        links = {p.getJointInfo(self.robot, i, physicsClientId=self.client)[12].decode(): i
                 for i in range(p.getNumJoints(self.robot, physicsClientId=self.client))}
        # Frame-only links (flange, tcp) have no <inertial> in the URDF; PyBullet would give each
        # 1 kg and unit inertia. Make them (nearly) massless, as they are in MuJoCo.
        for link in (links["flange"], links["tcp"]):
            p.changeDynamics(self.robot, link, mass=0.01, localInertiaDiagonal=[1e-6] * 3, physicsClientId=self.client)
        self.arm = [names[n] for n in ARM_JOINT_NAMES]
        self._add_armature(desc.joint_dynamics.armature_kg_m2)
        self.fingers = [names["left_finger_joint"], names["right_finger_joint"]]
        self.tcp = links["tcp"]
        self.gripper_link = links["gripper"]
        self.friction_nm = np.array([p.getJointInfo(self.robot, j, physicsClientId=self.client)[7] for j in self.arm])
        self.damping_nm_s = np.array([p.getJointInfo(self.robot, j, physicsClientId=self.client)[6] for j in self.arm])
        # Torque control: the default velocity motors would otherwise hold every joint.
        p.setJointMotorControlArray(self.robot, self.arm, p.VELOCITY_CONTROL, forces=[0.0] * N_ARM_JOINTS,
                                    physicsClientId=self.client)
        for link in (*self.fingers, links["gripper"]):
            p.changeDynamics(self.robot, link, lateralFriction=1.0, physicsClientId=self.client)
        table = p.createCollisionShape(p.GEOM_BOX, halfExtents=[1.5, 1.5, 0.05], physicsClientId=self.client)
        self.table = p.createMultiBody(0, table, basePosition=[0.5, 0, -0.05], physicsClientId=self.client)
        p.changeDynamics(self.table, -1, lateralFriction=1.0, physicsClientId=self.client)
        self.object: int | None = None

    def _add_armature(self, armature) -> None:
        """PyBullet has no rotor inertia: add each joint's armature to its child link's inertia
        about the joint axis (exact for that joint's own diagonal of M when the link's inertial
        frame is aligned with the joint axis, as in this URDF; it also adds a little inertia seen
        by the joints upstream, which the real rotor does not)."""
        p, c = self.p, self.client
        for joint, value in zip(self.arm, armature, strict=True):
            axis = np.abs(np.array(p.getJointInfo(self.robot, joint, physicsClientId=c)[13]))
            dyn = p.getDynamicsInfo(self.robot, joint, physicsClientId=c)
            if not np.allclose(dyn[4], [0, 0, 0, 1], atol=1e-6):
                raise ConfigError("pybullet world: a link's inertial frame is rotated; armature emulation assumes "
                                  "aligned frames")
            p.changeDynamics(self.robot, joint, localInertiaDiagonal=(np.array(dyn[2]) + value * axis).tolist(),
                             physicsClientId=c)

    def _make_object(self, setup: EpisodeSetup) -> None:
        p, c, obj = self.p, self.client, setup.obj
        if self.object is not None:
            p.removeBody(self.object, physicsClientId=c)
        size = obj.size_m
        orientation = [0, 0, 0, 1]
        w, x, y, z = obj.geom_quat_wxyz  # the rest pose, as in the MuJoCo scene (capsules lie along x)
        turned = {"collisionFrameOrientation": [x, y, z, w], "physicsClientId": c}
        if obj.shape == "box":
            shape = p.createCollisionShape(p.GEOM_BOX, halfExtents=list(size), **turned)
        elif obj.shape == "cylinder":
            shape = p.createCollisionShape(p.GEOM_CYLINDER, radius=size[0], height=2 * size[1], **turned)
        elif obj.shape == "sphere":
            shape = p.createCollisionShape(p.GEOM_SPHERE, radius=size[0], physicsClientId=c)
        elif obj.shape == "capsule":
            shape = p.createCollisionShape(p.GEOM_CAPSULE, radius=size[0], height=2 * size[1], **turned)
        else:
            raise ConfigError(f"object shape {obj.shape!r} has no PyBullet equivalent here")
        yaw = p.getQuaternionFromEuler([0, 0, setup.object_yaw_rad])
        self.object = p.createMultiBody(obj.mass_kg, shape, basePosition=[setup.object_x_m, setup.object_y_m,
                                                                          obj.resting_height_m],
                                        baseOrientation=p.multiplyTransforms([0, 0, 0], yaw, [0, 0, 0], orientation)[1],
                                        physicsClientId=c)
        p.changeDynamics(self.object, -1, lateralFriction=obj.friction, spinningFriction=0.005,
                         rollingFriction=0.0001, physicsClientId=c)

    def reset(self, setup: EpisodeSetup) -> RobotState:
        p, c = self.p, self.client
        for joint, q in zip(self.arm, setup.arm_qpos_rad, strict=True):
            p.resetJointState(self.robot, joint, float(q), 0.0, physicsClientId=c)
        finger = float(np.clip(setup.gripper_opening_m / 2, 0.0, self.finger_travel_m))
        for joint in self.fingers:
            p.resetJointState(self.robot, joint, finger, 0.0, physicsClientId=c)
        self._finger_target = finger
        self._make_object(setup)
        self._time = 0.0
        self._tau = np.zeros(N_ARM_JOINTS)
        return self._read(0.0)

    def step(self, arm_torque_nm: np.ndarray, gripper_command: float, duration_s: float) -> RobotState:
        p, c = self.p, self.client
        motor = np.clip(np.asarray(arm_torque_nm, dtype=float), -self.joint_torque_limit_nm, self.joint_torque_limit_nm)
        self._finger_target = self.finger_travel_m * (1.0 - gripper_command) / 2.0
        p.setJointMotorControlArray(self.robot, self.fingers, p.POSITION_CONTROL,
                                    targetPositions=[self._finger_target] * 2, forces=[self.grip_force_limit_n] * 2,
                                    physicsClientId=c)
        work = 0.0
        for _ in range(max(1, round(duration_s / self.physics_dt_s))):
            q, qd = self._arm_state()
            p.setJointMotorControlArray(self.robot, self.arm, p.TORQUE_CONTROL, forces=(motor - self._losses(qd)).tolist(),
                                        physicsClientId=c)
            p.stepSimulation(physicsClientId=c)
            q_after, _ = self._arm_state()
            work += float(np.abs(motor * (q_after - q)).sum())
            self._time += self.physics_dt_s
        self._tau = motor
        return self._read(work)

    def _losses(self, qd: np.ndarray) -> np.ndarray:
        """Joint torques the motor loses before the link that PyBullet does not apply itself:
        the friction loss (smooth Coulomb)."""
        return self.friction_nm * np.tanh(qd / FRICTION_SMOOTHING_RAD_S)

    def _arm_state(self) -> tuple[np.ndarray, np.ndarray]:
        states = self.p.getJointStates(self.robot, self.arm, physicsClientId=self.client)
        return np.array([s[0] for s in states]), np.array([s[1] for s in states])

    def _read(self, work_j: float) -> RobotState:
        p, c = self.p, self.client
        q, qd = self._arm_state()
        fingers = p.getJointStates(self.robot, self.fingers, physicsClientId=c)
        tcp = p.getLinkState(self.robot, self.tcp, computeForwardKinematics=True, physicsClientId=c)
        pos, quat = p.getBasePositionAndOrientation(self.object, physicsClientId=c)
        return RobotState(
            time_s=self._time, q_rad=q, qd_rad_s=qd,
            # output side: what reaches the links (the URDF's damping is applied by PyBullet)
            tau_measured_nm=self._tau - self._losses(qd) - self.damping_nm_s * qd,
            tau_applied_nm=self._tau.copy(),
            gripper_opening_m=float(fingers[0][0] + fingers[1][0]),
            gripper_speed_m_s=float(fingers[0][1] + fingers[1][1]),
            tcp_pos_m=np.array(tcp[4]), tcp_rot=np.array(p.getMatrixFromQuaternion(tcp[5])).reshape(3, 3),
            object_pos_m=np.array(pos), object_quat=np.array([quat[3], quat[0], quat[1], quat[2]]),
            step_work_j=work_j,
            pad_contact=tuple(bool(p.getContactPoints(bodyA=self.robot, bodyB=self.object, linkIndexA=finger,
                                                      physicsClientId=c))
                              for finger in self.fingers),
        )

    def close(self) -> None:
        if self.client is not None and self.p.isConnected(self.client):
            self.p.disconnect(self.client)
        self.client = None


class ShiftedPyBulletBackend(PyBulletBackend):
    """PyBullet with a hidden :class:`~ds_robot.sim2real.worlds.PhysicsShift` per episode (drawn
    from ``seed`` and the episode's setup, as the shifted MuJoCo world draws its own, or a fixed
    ``shift``): joint damping and friction loss (applied as joint torques, as the friction loss
    already is), armature (the child link's inertia about the joint axis), motor gain, a payload
    on the gripper link (its mass; a point at the link's centre of mass), the object's mass and
    friction, and whole-step command latency. Another engine *and* other parameters than the
    controller's model: the PyBullet world of the sim-to-real issue (issue 15)."""

    def __init__(self, variant: str = "ur5e", physics_dt_s: float = 0.002, seed: int = 0, shift=None,
                 max_latency_steps: int = 2):
        from ds_robot.sim2real.worlds import CommandDelay, PhysicsShift

        super().__init__(variant, physics_dt_s)
        self.seed, self._fixed, self.max_latency_steps = seed, shift, max_latency_steps
        self.shift = shift or PhysicsShift()
        p, c = self.p, self.client
        self._nominal = {"friction": self.friction_nm.copy(),
                         "inertia": {j: np.array(p.getDynamicsInfo(self.robot, j, physicsClientId=c)[2]) for j in self.arm},
                         "payload": p.getDynamicsInfo(self.robot, self.gripper_link, physicsClientId=c)[0]}
        self._armature = np.array(default_description().joint_dynamics.armature_kg_m2)
        self._extra_damping = np.zeros(N_ARM_JOINTS)
        self._delay = CommandDelay()

    def reset(self, setup: EpisodeSetup) -> RobotState:
        import dataclasses

        from ds_robot.sim2real.worlds import PhysicsShift, episode_rng

        shift = self._fixed or PhysicsShift.sample(episode_rng(self.seed, setup), self.max_latency_steps)
        self.shift = shift
        p, c, n = self.p, self.client, self._nominal
        self.friction_nm = n["friction"] + np.array(shift.friction_add_nm)
        self._extra_damping = self.damping_nm_s * (np.array(shift.damping_scale) - 1.0)
        for joint, extra in zip(self.arm, self._armature * (np.array(shift.armature_scale) - 1.0), strict=True):
            axis = np.abs(np.array(p.getJointInfo(self.robot, joint, physicsClientId=c)[13]))
            p.changeDynamics(self.robot, joint, localInertiaDiagonal=(n["inertia"][joint] + extra * axis).tolist(),
                             physicsClientId=c)
        p.changeDynamics(self.robot, self.gripper_link, mass=n["payload"] + shift.payload_kg, physicsClientId=c)
        obj = dataclasses.replace(setup.obj, mass_kg=setup.obj.mass_kg * shift.object_mass_scale,
                                  friction=setup.obj.friction * shift.object_friction_scale)
        self._delay.clear()
        return super().reset(dataclasses.replace(setup, obj=obj))

    def _losses(self, qd: np.ndarray) -> np.ndarray:
        return super()._losses(qd) + self._extra_damping * qd

    def step(self, arm_torque_nm: np.ndarray, gripper_command: float, duration_s: float) -> RobotState:
        """The command sent ``latency_steps`` calls ago (the first one until the pipeline has
        filled), times the motor gain."""
        torque, gripper = self._delay.delayed(arm_torque_nm, gripper_command, self.shift.latency_steps)
        limit = self.joint_torque_limit_nm
        return super().step(np.clip(torque, -limit, limit) * np.array(self.shift.gain), gripper, duration_s)
