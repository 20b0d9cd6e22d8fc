"""Typed view of ``models/ur5/ur5.yaml``, the single source of truth for the arm."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ds_robot.paths import models_dir
from ds_robot.yamlio import Fields, load_yaml

N_ARM_JOINTS = 6
ARM_JOINT_NAMES = (
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
)
LINK_NAMES = ("shoulder_link", "upper_arm_link", "forearm_link", "wrist_1_link", "wrist_2_link", "wrist_3_link")
ARM_VARIANTS = ("ur5", "ur5e")


@dataclass(frozen=True)
class ArmVariant:
    name: str
    description: str
    dh_d_m: tuple[float, ...]
    dh_a_m: tuple[float, ...]
    dh_alpha_rad: tuple[float, ...]
    base_mass_kg: float
    link_mass_kg: tuple[float, ...]
    link_com_m: tuple[tuple[float, ...], ...]
    joint_torque_limit_nm: tuple[float, ...]
    joint_velocity_limit_rad_s: tuple[float, ...]
    joint_range_rad: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class JointDynamics:
    damping_nm_s_rad: tuple[float, ...]
    frictionloss_nm: tuple[float, ...]
    armature_kg_m2: tuple[float, ...]


@dataclass(frozen=True)
class Geometry:
    link_radius_m: tuple[float, ...]
    base_radius_m: float
    base_height_m: float


@dataclass(frozen=True)
class GripperParams:
    palm_mass_kg: float
    palm_half_size_m: tuple[float, ...]
    finger_mass_kg: float
    finger_pad_half_size_m: tuple[float, ...]
    finger_length_m: float
    finger_travel_m: float
    finger_damping_n_s_m: float
    finger_armature_kg: float
    actuator_kp_n_m: float
    actuator_kv_n_s_m: float
    grip_force_limit_n: float
    pad_friction: float

    @property
    def max_opening_m(self) -> float:
        return 2.0 * self.finger_travel_m

    @property
    def tcp_offset_m(self) -> float:
        """Distance from the flange to the tool centre point (between the pad centres)."""
        return 2.0 * self.palm_half_size_m[2] + self.finger_length_m - self.finger_pad_half_size_m[2]


@dataclass(frozen=True)
class RobotDescription:
    source: Path
    variants: dict[str, ArmVariant]
    joint_dynamics: JointDynamics
    geometry: Geometry
    home_qpos_rad: tuple[float, ...]
    gripper: GripperParams

    def variant(self, name: str) -> ArmVariant:
        from ds_robot.errors import ConfigError

        if name not in self.variants:
            raise ConfigError(f"unknown arm variant '{name}': choose one of {', '.join(self.variants)}")
        return self.variants[name]


def _variant(name: str, f: Fields) -> ArmVariant:
    n = N_ARM_JOINTS
    dh = f.sub("dh")
    return ArmVariant(
        name=name,
        description=f.string("description", ""),
        dh_d_m=dh.vector("d", n),
        dh_a_m=dh.vector("a", n),
        dh_alpha_rad=dh.vector("alpha", n, low=-math.pi, high=math.pi),
        base_mass_kg=f.number("base_mass_kg", low=0.0),
        link_mass_kg=f.vector("link_mass_kg", n, low=1e-3),
        link_com_m=f.matrix("link_com_m", n, 3),
        joint_torque_limit_nm=f.vector("joint_torque_limit_nm", n, low=1e-3),
        joint_velocity_limit_rad_s=f.vector("joint_velocity_limit_rad_s", n, low=1e-3),
        joint_range_rad=f.matrix("joint_range_rad", n, 2),
    )


def load_description(path: str | Path | None = None) -> RobotDescription:
    path = Path(path) if path is not None else models_dir() / "ur5.yaml"
    root = Fields(load_yaml(path, "robot parameter file"), str(path))
    variants_f = root.sub("variants")
    variants = {name: _variant(name, variants_f.sub(name)) for name in variants_f.data}
    jd = root.sub("joint_dynamics")
    geo = root.sub("geometry")
    g = root.sub("gripper")
    n = N_ARM_JOINTS
    return RobotDescription(
        source=path,
        variants=variants,
        joint_dynamics=JointDynamics(
            damping_nm_s_rad=jd.vector("damping_nm_s_rad", n, low=0.0),
            frictionloss_nm=jd.vector("frictionloss_nm", n, low=0.0),
            armature_kg_m2=jd.vector("armature_kg_m2", n, low=0.0),
        ),
        geometry=Geometry(
            link_radius_m=geo.vector("link_radius_m", n, low=1e-3),
            base_radius_m=geo.number("base_radius_m", low=1e-3),
            base_height_m=geo.number("base_height_m", low=1e-3),
        ),
        home_qpos_rad=root.vector("home_qpos_rad", n),
        gripper=GripperParams(
            palm_mass_kg=g.number("palm_mass_kg", low=1e-3),
            palm_half_size_m=g.vector("palm_half_size_m", 3, low=1e-3),
            finger_mass_kg=g.number("finger_mass_kg", low=1e-3),
            finger_pad_half_size_m=g.vector("finger_pad_half_size_m", 3, low=1e-3),
            finger_length_m=g.number("finger_length_m", low=1e-3),
            finger_travel_m=g.number("finger_travel_m", low=1e-3),
            finger_damping_n_s_m=g.number("finger_damping_n_s_m", low=0.0),
            finger_armature_kg=g.number("finger_armature_kg", low=0.0),
            actuator_kp_n_m=g.number("actuator_kp_n_m", low=1e-3),
            actuator_kv_n_s_m=g.number("actuator_kv_n_s_m", low=0.0),
            grip_force_limit_n=g.number("grip_force_limit_n", low=1e-3),
            pad_friction=g.number("pad_friction", low=0.0),
        ),
    )


# A lower bound on the force each pad presses with at the gripper's full grip (GraspOption's 0;
# the coupled actuator's grip_force_limit_n shared by two pads: 30 N measured at every width from
# 1.6 to 8 cm, tests/test_realistic.py): the unit of the planner's last_grip feature (policy
# files depend on it) and the full grip the stress objects' envelope assumes.
FULL_GRIP_N = 24.0


@lru_cache(maxsize=4)
def default_description() -> RobotDescription:
    return load_description()


# --- Kinematics straight from the DH table (the reference the generated models are tested against).


def rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def homogeneous(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


def dh_link_transform(arm: ArmVariant, i: int) -> np.ndarray:
    """Fixed part of DH link i: Tz(d_i) Tx(a_i) Rx(alpha_i)."""
    return homogeneous(rot_x(arm.dh_alpha_rad[i]), np.array([arm.dh_a_m[i], 0.0, arm.dh_d_m[i]]))


def dh_forward_kinematics(arm: ArmVariant, q: np.ndarray) -> np.ndarray:
    """Pose of the tool flange (DH frame 6) in the base frame, as a 4x4 matrix."""
    pose = np.eye(4)
    for i in range(N_ARM_JOINTS):
        pose = pose @ homogeneous(rot_z(float(q[i])), np.zeros(3)) @ dh_link_transform(arm, i)
    return pose


def cylinder_inertia(mass: float, radius: float, length: float, axis: np.ndarray) -> np.ndarray:
    """Inertia tensor (about the centre) of a solid cylinder whose axis is ``axis``."""
    axis = axis / np.linalg.norm(axis)
    i_axial = 0.5 * mass * radius**2
    i_transverse = mass * (3.0 * radius**2 + length**2) / 12.0
    return i_transverse * np.eye(3) + (i_axial - i_transverse) * np.outer(axis, axis)


def link_inertial(arm: ArmVariant, geometry: Geometry, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass and inertia tensor of link i, both in the link's body frame.

    The body frame of link i is DH frame i-1 rotated by theta_i (the joint sits at its origin,
    axis z); DH frame i is reached from it by ``dh_link_transform``. The published COM is in
    DH frame i. The inertia is that of a solid cylinder of the link's radius spanning the DH
    segment (or, for the short wrist links, the joint housing along z).
    """
    fixed = dh_link_transform(arm, i)
    com_body = fixed[:3, :3] @ np.asarray(arm.link_com_m[i]) + fixed[:3, 3]
    segment = fixed[:3, 3]
    radius = geometry.link_radius_m[i]
    length = float(np.linalg.norm(segment))
    axis = segment if length > 2.0 * radius else np.array([0.0, 0.0, 1.0])
    length = max(length, 2.0 * radius)
    return com_body, cylinder_inertia(arm.link_mass_kg[i], radius, length, axis)
