"""The controller's own dynamics model of the arm and gripper (MuJoCo, no table, no object).

Model-based controllers use it for forward kinematics, the TCP Jacobian, the joint-space
mass matrix and the bias (Coriolis + gravity) torques. It is separate from the world the
robot acts in: when the world differs (a shifted MuJoCo, PyBullet, the real arm), this is
the model the sim-to-real corrector updates.
"""

from __future__ import annotations

import mujoco
import numpy as np

from ds_robot.model.params import N_ARM_JOINTS
from ds_robot.sim import scene


class RobotModel:
    def __init__(self, variant: str = "ur5e"):
        self.variant = variant
        self.model = scene.build_robot_model(variant)
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        m = self.model
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._tcp = m.site(scene.TCP_SITE).id
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self._mass = np.zeros((m.nv, m.nv))
        self._gravity_data = mujoco.MjData(m)
        self._gravity = np.zeros(m.nv)

    def update(self, q: np.ndarray, qd: np.ndarray, gripper_opening_m: float = 0.0) -> None:
        """Set the state and compute kinematics and dynamics at it."""
        d = self.data
        d.qpos[:N_ARM_JOINTS] = q
        d.qpos[self._finger_qpos] = gripper_opening_m / 2
        d.qvel[:N_ARM_JOINTS] = qd
        mujoco.mj_forward(self.model, d)

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.site_xpos[self._tcp].copy(), self.data.site_xmat[self._tcp].reshape(3, 3).copy()

    def tcp_jacobian(self, data: mujoco.MjData | None = None) -> np.ndarray:
        """6x6 Jacobian (linear; angular) of the TCP with respect to the arm joints."""
        mujoco.mj_jacSite(self.model, data or self.data, self._jacp, self._jacr, self._tcp)
        return np.vstack([self._jacp[:, :N_ARM_JOINTS], self._jacr[:, :N_ARM_JOINTS]])

    def mass_matrix(self) -> np.ndarray:
        mujoco.mj_fullM(self.model, self.data, self._mass)
        return self._mass[:N_ARM_JOINTS, :N_ARM_JOINTS].copy()

    def braking_torque(self, time_constant_s: float, limit_nm: np.ndarray) -> np.ndarray:
        """``-M(q) qd / time_constant_s`` at the state of the last ``update``, clipped to
        ``limit_nm``: the joint velocities decay with that time constant whatever each joint's
        inertia (gravity not included: add it where the robot does not compensate it)."""
        qd = self.data.qvel[:N_ARM_JOINTS]
        return np.clip(-self.mass_matrix() @ qd / time_constant_s, -limit_nm, limit_nm)

    def bias_torque(self) -> np.ndarray:
        """Coriolis, centrifugal and gravity torques at the current state (inverse dynamics, qdd = 0)."""
        return self.data.qfrc_bias[:N_ARM_JOINTS].copy()

    def gravity_torque(self) -> np.ndarray:
        """Gravity torques alone (bias torque at zero velocity) at the state of the last ``update``."""
        d = self._gravity_data
        d.qpos[:] = self.data.qpos
        d.qvel[:] = 0.0
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_comPos(self.model, d)
        mujoco.mj_rne(self.model, d, 0, self._gravity)
        return self._gravity[:N_ARM_JOINTS].copy()

    def forward_kinematics(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self._ik_data
        d.qpos[:N_ARM_JOINTS] = q
        mujoco.mj_kinematics(self.model, d)
        return d.site_xpos[self._tcp].copy(), d.site_xmat[self._tcp].reshape(3, 3).copy()

    def inverse_kinematics(
        self,
        target_pos: np.ndarray,
        target_rot: np.ndarray,
        q_start: np.ndarray,
        iterations: int = 20,
        tolerance: float = 1e-5,
        damping: float = 1e-3,
    ) -> tuple[np.ndarray, float]:
        """Damped least squares on the TCP pose; returns (q, final error norm)."""
        d = self._ik_data
        q = np.array(q_start, dtype=float)
        error = np.zeros(6)
        for _ in range(iterations):
            d.qpos[:N_ARM_JOINTS] = q
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_comPos(self.model, d)
            error[:3] = target_pos - d.site_xpos[self._tcp]
            error[3:] = rotation_error(target_rot, d.site_xmat[self._tcp].reshape(3, 3))
            if np.linalg.norm(error) < tolerance:
                break
            jac = self.tcp_jacobian(d)
            q += jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(6), error)
        return q, float(np.linalg.norm(error))


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world frame) rotating ``current`` onto ``target``."""
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, (target @ current.T).reshape(-1))
    vel = np.zeros(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel
