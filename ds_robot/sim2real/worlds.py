"""A "real" world that differs from the controller's model: MuJoCo with hidden physics shifts.

Each episode draws a :class:`PhysicsShift` (the truth the estimator is scored against) from
the ranges of the sim-to-real issue and applies it to the compiled scene before the reset:

- joint viscous damping x0.5–2 and armature (rotor inertia) x0.5–2, per arm joint;
- joint friction loss: the nominal value plus 0–1 N m (shoulder/elbow) or 0–0.2 N m (wrist);
- motor gain x0.8–1.2 per joint (the actuator's gear: commanded torque -> applied torque);
- a payload of 0–0.5 kg on the gripper body (at its centre of mass, just below the flange);
- object mass x0.5–2 and friction x0.7–1.3;
- control latency of 0–2 control steps (the command applied is the one sent ``latency`` steps
  earlier; a step is the env's control period, 10 ms by default).

The controller never sees the shift; :attr:`ShiftedMuJoCoBackend.shift` holds it for scoring.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import mujoco
import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.model.params import N_ARM_JOINTS
from ds_robot.physics.backend import EpisodeSetup, PhysicsBackend, RobotState
from ds_robot.physics.mujoco_backend import MuJoCoBackend
from ds_robot.sim import scene
from ds_robot.sim2real import WORLDS

RANGES = {"damping_scale": (0.5, 2.0), "armature_scale": (0.5, 2.0), "gain": (0.8, 1.2),
          "payload_kg": (0.0, 0.5), "object_mass_scale": (0.5, 2.0), "object_friction_scale": (0.7, 1.3)}
FRICTION_ADD_NM = np.array([1.0, 1.0, 1.0, 0.2, 0.2, 0.2])  # upper end of the added friction loss


@dataclass(frozen=True)
class PhysicsShift:
    damping_scale: tuple[float, ...] = (1.0,) * N_ARM_JOINTS
    armature_scale: tuple[float, ...] = (1.0,) * N_ARM_JOINTS
    friction_add_nm: tuple[float, ...] = (0.0,) * N_ARM_JOINTS
    gain: tuple[float, ...] = (1.0,) * N_ARM_JOINTS
    payload_kg: float = 0.0
    object_mass_scale: float = 1.0
    object_friction_scale: float = 1.0
    latency_steps: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, max_latency_steps: int = 2) -> PhysicsShift:
        def per_joint(key):
            lo, hi = RANGES[key]
            return tuple(float(v) for v in rng.uniform(lo, hi, N_ARM_JOINTS))

        return cls(damping_scale=per_joint("damping_scale"), armature_scale=per_joint("armature_scale"),
                   friction_add_nm=tuple(float(v) for v in rng.uniform(0.0, 1.0, N_ARM_JOINTS) * FRICTION_ADD_NM),
                   gain=per_joint("gain"), payload_kg=float(rng.uniform(*RANGES["payload_kg"])),
                   object_mass_scale=float(rng.uniform(*RANGES["object_mass_scale"])),
                   object_friction_scale=float(rng.uniform(*RANGES["object_friction_scale"])),
                   latency_steps=int(rng.integers(0, max_latency_steps + 1)))

    def as_dict(self) -> dict:
        return asdict(self)


class CommandDelay:
    """Whole-step command latency: ``delayed`` returns the command sent ``steps`` calls ago (at
    the start of an episode, the first command until the pipeline has filled)."""

    def __init__(self):
        self._pending: deque = deque()

    def clear(self) -> None:
        self._pending.clear()

    def delayed(self, arm_torque_nm, gripper_command: float, steps: int) -> tuple[np.ndarray, float]:
        self._pending.append((np.array(arm_torque_nm, dtype=float), float(gripper_command)))
        return self._pending.popleft() if len(self._pending) > steps else self._pending[0]


def episode_rng(seed: int, setup: EpisodeSetup) -> np.random.Generator:
    """A world's random stream for one episode: a function of the world's ``seed`` and the
    episode's setup (object and placement, which the episode seed determines)."""
    placement = np.array([setup.object_x_m, setup.object_y_m, setup.object_yaw_rad, *setup.arm_qpos_rad])
    words = np.frombuffer(placement.astype(np.float64).tobytes(), dtype=np.uint32)
    return np.random.default_rng([seed, *words.tolist(), *setup.obj.name.encode()])


class ShiftedMuJoCoBackend(MuJoCoBackend):
    """MuJoCo with a hidden :class:`PhysicsShift` per episode, or a fixed ``shift`` for every
    episode. The per-episode shift is a function of the world's ``seed`` and the episode's setup
    (object and placement, which the episode seed determines): every controller evaluated on the
    same episode seeds meets the same physics."""

    def __init__(self, variant: str = "ur5e", physics_dt_s: float = 0.002, seed: int = 0,
                 shift: PhysicsShift | None = None, max_latency_steps: int = 2):
        super().__init__(variant, physics_dt_s)
        self.seed = seed
        self._fixed = shift
        self.max_latency_steps = max_latency_steps
        self.shift = shift or PhysicsShift()
        self._nominal: dict[int, dict[str, np.ndarray]] = {}
        self._delay = CommandDelay()

    def _episode_model(self, setup: EpisodeSetup) -> None:
        self.shift = self._fixed or PhysicsShift.sample(self._episode_rng(setup), self.max_latency_steps)
        self._apply(self.shift)
        self._delay.clear()

    def _episode_rng(self, setup: EpisodeSetup) -> np.random.Generator:
        return episode_rng(self.seed, setup)

    def _apply(self, shift: PhysicsShift) -> None:
        m = self.model
        key = id(m)
        payload = m.body(scene.PAYLOAD_BODY).id
        obj = m.body(scene.OBJECT_BODY).id
        obj_geoms = np.flatnonzero(m.geom_bodyid == obj)
        if key not in self._nominal:  # the compiled values, before any shift
            self._nominal[key] = {"damping": m.dof_damping[:N_ARM_JOINTS].copy(), "armature": m.dof_armature[:N_ARM_JOINTS].copy(),
                                  "friction": m.dof_frictionloss[:N_ARM_JOINTS].copy(), "gear": m.actuator_gear[:N_ARM_JOINTS, 0].copy(),
                                  "payload": m.body_mass[payload].copy()}
        n = self._nominal[key]
        # the object's own values: the base class wrote this episode's into the model at _load
        n = {**n, "object": m.body_mass[obj].copy(), "object_inertia": m.body_inertia[obj].copy(),
             "object_friction": m.geom_friction[obj_geoms, 0].copy()}
        # The object's new mass first, then the solver's constants for it, every episode (left at
        # another mass's, a heavy object's contacts go unstable: one shifted episode in 30 with an
        # object x1.8 blew up, and MuJoCo restarted it from the initial state mid-episode), from
        # the arm's nominal values: the arm's shift below is written without them, as the estimate
        # is written into the predictor's model, so a predictor with the true shift stays exact.
        m.dof_damping[:N_ARM_JOINTS], m.dof_armature[:N_ARM_JOINTS] = n["damping"], n["armature"]
        m.dof_frictionloss[:N_ARM_JOINTS], m.actuator_gear[:N_ARM_JOINTS, 0] = n["friction"], n["gear"]
        m.body_mass[payload] = n["payload"]
        m.body_mass[obj] = n["object"] * shift.object_mass_scale
        m.body_inertia[obj] = n["object_inertia"] * shift.object_mass_scale
        m.geom_friction[obj_geoms, 0] = n["object_friction"] * shift.object_friction_scale
        mujoco.mj_setConst(m, self.data)  # also after an x1 episode: the last one's may be scaled
        m.dof_damping[:N_ARM_JOINTS] = n["damping"] * np.array(shift.damping_scale)
        m.dof_armature[:N_ARM_JOINTS] = n["armature"] * np.array(shift.armature_scale)
        m.dof_frictionloss[:N_ARM_JOINTS] = n["friction"] + np.array(shift.friction_add_nm)
        m.actuator_gear[:N_ARM_JOINTS, 0] = n["gear"] * np.array(shift.gain)
        m.body_mass[payload] = n["payload"] + shift.payload_kg

    def step(self, arm_torque_nm: np.ndarray, gripper_command: float, duration_s: float) -> RobotState:
        """Apply the command sent ``latency_steps`` calls ago (at the start of an episode, the
        first command until the pipeline has filled)."""
        torque, gripper = self._delay.delayed(arm_torque_nm, gripper_command, self.shift.latency_steps)
        return super().step(torque, gripper, duration_s)



def build_world(name: str, variant: str = "ur5e", physics_dt_s: float = 0.002, seed: int = 0,
                max_latency_steps: int = 2) -> PhysicsBackend:
    """The world a controller is evaluated in: ``nominal`` (MuJoCo, the controller's own model),
    ``shifted`` (MuJoCo with hidden per-episode physics shifts drawn from ``seed``), ``unmodelled``
    (MuJoCo with per-episode physics outside the estimator's model class, ``sim2real.unmodelled``) or
    ``pybullet`` (another engine from the same URDF, with a hidden per-episode shift of the shifted
    world's kind drawn from ``seed``)."""
    if name == "nominal":
        return MuJoCoBackend(variant, physics_dt_s)
    if name == "shifted":
        return ShiftedMuJoCoBackend(variant, physics_dt_s, seed=seed, max_latency_steps=max_latency_steps)
    if name == "unmodelled":
        from ds_robot.sim2real.unmodelled import UnmodelledMuJoCoBackend

        return UnmodelledMuJoCoBackend(variant, physics_dt_s, seed=seed)
    if name == "pybullet":
        from ds_robot.sim2real.pybullet_world import ShiftedPyBulletBackend

        return ShiftedPyBulletBackend(variant, physics_dt_s, seed=seed, max_latency_steps=max_latency_steps)
    raise ConfigError(f"world {name!r}: choose one of {', '.join(WORLDS)}")
