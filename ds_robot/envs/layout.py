"""The grasp observation's layout: the one place it is encoded and decoded.

The training env (``GraspTask.observation``), the robot's control core
(``ds_robot.deploy.core.ControlCore.observation``), the scripted controller and the online
corrector all go through :class:`ObservationLayout`; ``tests/test_layout.py`` feeds one
physical state through the training path and the robot path and requires identical vectors.

35 float32 features (``OBS_SLICES`` names each part):

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

NumPy and MuJoCo only: the robot path imports this.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

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


def field_slices(fields) -> dict[str, slice]:
    """``{name: slice}`` of consecutive ``(name, size)`` fields."""
    out, start = {}, 0
    for name, size in fields:
        out[name] = slice(start, start + size)
        start += size
    return out


OBS_SLICES: dict[str, slice] = field_slices(OBS_FIELDS)
OBS_SIZE = sum(size for _, size in OBS_FIELDS)
ACTION_SIZE = 7  # the env action: 6 joint torques / joint torque limits, gripper command (-1 open .. 1 closed)
QD_SCALE = 1.0 / math.pi  # rad/s -> feature
GRIPPER_SPEED_SCALE = 10.0  # m/s -> feature


def goal_position(rest_pos_m: np.ndarray, goal_height_m: float) -> np.ndarray:
    """Where the object should go: ``goal_height_m`` straight above where it rested."""
    return np.array([rest_pos_m[0], rest_pos_m[1], rest_pos_m[2] + goal_height_m])


class ObservationLayout:
    """Encode a physical state into the observation, and read physical quantities back out.

    ``joint_torque_limit_nm`` scales the torque features, ``max_gripper_opening_m`` the opening.
    """

    def __init__(self, joint_torque_limit_nm: np.ndarray, max_gripper_opening_m: float):
        self.joint_torque_limit_nm = np.asarray(joint_torque_limit_nm, dtype=float)
        self._inv_torque_limit = 1.0 / self.joint_torque_limit_nm
        self.max_gripper_opening_m = float(max_gripper_opening_m)
        self._rows = np.empty((3, 3))
        self._object_mat = np.empty(9)

    # -- encode -----------------------------------------------------------------------------------

    def encode(self, *, q_rad: np.ndarray, qd_rad_s: np.ndarray, tau_nm: np.ndarray | None,
               gripper_opening_m: float, gripper_speed_m_s: float, tcp_pos_m: np.ndarray, tcp_rot: np.ndarray,
               object_pos_m: np.ndarray, object_quat_wxyz: np.ndarray, object_half_extents_m: np.ndarray,
               goal_m: np.ndarray) -> np.ndarray:
        """The observation of one state (poses in the robot base frame). ``tau_nm=None``: the
        torque features read 0 (a controller without torque features)."""
        s = OBS_SLICES
        obs = np.empty(OBS_SIZE, dtype=np.float32)
        obs[s["q"]] = q_rad
        obs[s["qd"]] = qd_rad_s * QD_SCALE
        obs[s["tau"]] = 0.0 if tau_nm is None else tau_nm * self._inv_torque_limit
        obs[s["gripper"]] = (gripper_opening_m / self.max_gripper_opening_m, gripper_speed_m_s * GRIPPER_SPEED_SCALE)
        # Rows: object offset, object x axis, object y axis (world); times R_tcp gives each in the
        # TCP frame, in the order object_pos, object_rot[:3], object_rot[3:].
        rows = self._rows
        np.subtract(object_pos_m, tcp_pos_m, out=rows[0])
        mujoco.mju_quat2Mat(self._object_mat, object_quat_wxyz)
        rows[1:] = self._object_mat.reshape(3, 3).T[:2]
        obs[s["object_pos"].start : s["object_rot"].stop] = (rows @ tcp_rot).ravel()
        obs[s["object_size"]] = object_half_extents_m
        obs[s["goal"]] = goal_m - object_pos_m
        return obs

    # -- decode -----------------------------------------------------------------------------------

    @staticmethod
    def joint_positions(obs: np.ndarray) -> np.ndarray:
        """Arm joint positions, rad (float64)."""
        return obs[..., OBS_SLICES["q"]].astype(float)

    @staticmethod
    def joint_velocities(obs: np.ndarray) -> np.ndarray:
        """Arm joint velocities, rad/s (float64)."""
        return obs[..., OBS_SLICES["qd"]].astype(float) * math.pi

    def measured_torque_nm(self, obs: np.ndarray) -> np.ndarray:
        return obs[..., OBS_SLICES["tau"]].astype(float) * self.joint_torque_limit_nm

    def gripper(self, obs: np.ndarray) -> tuple[float, float]:
        """(opening m, opening speed m/s)."""
        g = obs[OBS_SLICES["gripper"]].astype(float)
        return float(g[0]) * self.max_gripper_opening_m, float(g[1]) / GRIPPER_SPEED_SCALE

    @staticmethod
    def object_pose(obs: np.ndarray, tcp_pos_m: np.ndarray, tcp_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The object's position and rotation matrix in the base frame, given the TCP pose."""
        pos = tcp_pos_m + tcp_rot @ obs[OBS_SLICES["object_pos"]].astype(float)
        rot_tcp = obs[OBS_SLICES["object_rot"]].astype(float)
        c0, c1 = rot_tcp[:3], rot_tcp[3:]
        return pos, tcp_rot @ np.column_stack([c0, c1, np.cross(c0, c1)])

    @staticmethod
    def object_half_extents(obs: np.ndarray) -> np.ndarray:
        return obs[OBS_SLICES["object_size"]].astype(float)
