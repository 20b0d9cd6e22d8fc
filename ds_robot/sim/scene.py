"""Compose MuJoCo scenes from parts: arena + arm + gripper (+ object).

Each part is its own MJCF file (``sim/arena/table.xml``, ``models/ur5/<variant>.xml``,
``models/ur5/gripper.xml``); they are merged with ``mujoco.MjSpec.attach`` at load time,
and the object is added from its ``ObjectSpec``. Element names carry the part's prefix:
``arm/shoulder_pan_joint``, ``gripper/tcp``, ``object``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import mujoco
import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.model.params import ARM_JOINT_NAMES
from ds_robot.paths import models_dir, require_file, sim_dir
from ds_robot.sim.objects import ObjectSpec

ARM_PREFIX = "arm/"
GRIPPER_PREFIX = "gripper/"
ARM_JOINTS = tuple(ARM_PREFIX + name for name in ARM_JOINT_NAMES)
ARM_ACTUATORS = tuple(ARM_PREFIX + name.replace("_joint", "_motor") for name in ARM_JOINT_NAMES)
FINGER_JOINTS = (GRIPPER_PREFIX + "left_finger_joint", GRIPPER_PREFIX + "right_finger_joint")
PAYLOAD_BODY = GRIPPER_PREFIX + "gripper"  # where a payload at the flange is added (just below it)
GRIPPER_ACTUATOR = GRIPPER_PREFIX + "gripper"
TCP_SITE = GRIPPER_PREFIX + "tcp"
PAD_GEOMS = (GRIPPER_PREFIX + "left_pad", GRIPPER_PREFIX + "right_pad")
OBJECT_BODY = "object"
OBJECT_GEOM = "object_geom"
# Object contacts: contype 1, conaffinity 1|2|4 (table, arm links, gripper). Its friction wins
# over the pads' and the table's (higher priority), so an object set's friction is what counts.
OBJECT_CONTYPE, OBJECT_CONAFFINITY, OBJECT_PRIORITY = 1, 7, 1
SHAPES = {
    "box": mujoco.mjtGeom.mjGEOM_BOX,
    "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
    "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
    "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE,
}


def _load_spec(path, what: str) -> mujoco.MjSpec:
    require_file(path, what)
    try:
        return mujoco.MjSpec.from_file(str(path))
    except ValueError as exc:
        raise ConfigError(f"{path}: MuJoCo cannot read this {what}: {exc}") from exc


def _attach_robot(spec: mujoco.MjSpec, variant: str) -> None:
    arm_path = models_dir() / f"{variant}.xml"
    if not arm_path.is_file():
        raise ConfigError(f"unknown arm variant '{variant}': {arm_path} does not exist (choose ur5 or ur5e)")
    arm = _load_spec(arm_path, "arm model")
    gripper = _load_spec(models_dir() / "gripper.xml", "gripper model")
    spec.attach(arm, site=spec.site("robot_mount"), prefix=ARM_PREFIX)
    spec.attach(gripper, site=spec.site(ARM_PREFIX + "flange"), prefix=GRIPPER_PREFIX)


def object_quat(yaw_rad: float) -> np.ndarray:
    """Orientation (w, x, y, z) of a resting object turned by ``yaw_rad`` about the vertical."""
    return np.array([math.cos(yaw_rad / 2), 0.0, 0.0, math.sin(yaw_rad / 2)])


def _add_object(spec: mujoco.MjSpec, obj: ObjectSpec) -> None:
    body = spec.worldbody.add_body(name=OBJECT_BODY, pos=[0.5, 0.0, obj.resting_height_m])
    body.add_freejoint(name="object_joint")
    size = list(obj.size_m) + [0.0] * (3 - len(obj.size_m))
    # The body frame's z stays vertical in every rest pose; the geom is turned inside it (a
    # capsule to lie along the body's x axis, a box on its side, a lying cylinder), so
    # ObjectSpec.half_extents_m holds in the body frame.
    body.add_geom(
        name=OBJECT_GEOM,
        quat=list(obj.geom_quat_wxyz),
        type=SHAPES[obj.shape],
        size=size,
        mass=obj.mass_kg,
        friction=[obj.friction, 0.005, 0.0001],
        condim=4,
        priority=OBJECT_PRIORITY,
        contype=OBJECT_CONTYPE,
        conaffinity=OBJECT_CONAFFINITY,
        rgba=list(obj.rgba),
    )


def scene_spec(variant: str, obj: ObjectSpec | None, physics_dt_s: float = 0.002) -> mujoco.MjSpec:
    spec = _load_spec(sim_dir() / "arena" / "table.xml", "arena")
    _attach_robot(spec, variant)
    if obj is not None:
        _add_object(spec, obj)
    spec.option.timestep = physics_dt_s
    return spec


def compile_spec(spec: mujoco.MjSpec) -> mujoco.MjModel:
    try:
        return spec.compile()
    except ValueError as exc:
        raise ConfigError(f"MuJoCo could not compile the scene: {exc}") from exc


def build_scene(variant: str, obj: ObjectSpec | None, physics_dt_s: float = 0.002) -> mujoco.MjModel:
    """Arena + arm + gripper (+ object), compiled."""
    return compile_spec(scene_spec(variant, obj, physics_dt_s))


@lru_cache(maxsize=4)
def _robot_only_xml(variant: str) -> str:
    spec = mujoco.MjSpec.from_string(
        '<mujoco><option integrator="implicitfast"/><worldbody><site name="robot_mount"/></worldbody></mujoco>'
    )
    _attach_robot(spec, variant)
    return spec.to_xml()


def build_robot_model(variant: str) -> mujoco.MjModel:
    """Arm + gripper alone, mounted at the origin: the model controllers reason with."""
    return mujoco.MjModel.from_xml_string(_robot_only_xml(variant))
