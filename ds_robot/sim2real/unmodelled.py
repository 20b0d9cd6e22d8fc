"""A "real" world outside the estimator's model class: MuJoCo with physics the model does not contain.

The ``shifted`` world changes exactly the fields the online estimator identifies (damping,
armature, constant friction loss, motor gain, a point payload, whole-step latency), so an
estimator that writes its estimate back into those fields can be exact. This world adds what a
real arm has and the model has not, drawn per episode (hidden; :attr:`UnmodelledMuJoCoBackend.physics`
holds the truth for scoring):

- **velocity- and load-dependent friction**: on top of the (drawn) constant friction loss, a
  Stribeck term (extra breakaway friction that decays with speed, ``exp(-(v / v_s)^2)``) and a
  term proportional to the joint's load torque (friction in gears rises with the load they
  carry: Bittencourt, Wernholt, Sander-Tavallaey, Brogardh, "An extended friction model to
  capture load and temperature effects in robot joints", IROS 2010). Both are applied as joint
  forces every physics step, smoothed around zero speed (``tanh(v / 0.05 rad/s)``) so the
  explicit term stays stable at the 2 ms step;
- **actuator bandwidth**: the torque follows the command through a first-order lag (time
  constant drawn per joint), then a torque-constant error (gain);
- **fractional command latency**: the command in force is the one sent ``latency_s`` ago, at
  the physics step's resolution (2 ms: a fraction of the 10 ms control period), not a whole
  number of control steps;
- **joint-torque sensing errors**: the measured torque has a per-joint bias, a scale error and
  white noise (a UR arm's joint torques come from motor currents, not torque sensors);
- **an off-centre payload with its own inertia**: a box of drawn mass whose centre of mass is
  off the flange axis, not a point mass at the gripper's centre;
- **joint elasticity** on the shoulder pan, shoulder lift and elbow joints (the harmonic drive
  and shaft between motor and link): each motor drives a rotor of its own, a hinge carrying
  the reflected rotor inertia (the link's armature moves onto it), coupled to its link by a
  spring-damper (a fixed tendon on ``q_link - q_rotor``), so each elastic joint adds a degree
  of freedom the controller's rigid model does not have. Stiffness is drawn per joint,
  3.1e4-1.2e5 N m/rad (``STIFFNESS_LOW``-``STIFFNESS_HIGH``): the Harmonic Drive catalogue's
  torsional stiffness for sizes 25-32 at ratios above 50, from K1 of size 25 to K3 of size 32
  (Harmonic Drive CHA actuator manual 1018854, table 50.4; the CSF/CSG catalogue, tables 41-42,
  agrees). The UR5e's base, shoulder and elbow are UR "size 3" joints (150 N m; UR's
  max-joint-torques article as quoted in ros-industrial/universal_robot PR 513); which gear size
  they hold is not published, so the range spans the two sizes that carry that torque. The
  rotor inertia is the model's armature (0.1 kg m^2, no published source); the spring's damping
  is a damping ratio against the rotor, 0.05-0.2 (assumed). The springs start wound up by the arm's weight. The wrists stay rigid: their link
  inertia about the joint (down to 0.001 kg m^2 at wrist 3) would need a step of a few
  microseconds at harmonic-drive stiffness;
- **another integrator and timestep than the controller's model** while a joint is elastic: the
  tendon spring is explicit in MuJoCo, so the world steps at ``ELASTIC_SUBSTEPS`` or more steps
  per 2 ms (the rotor mode at <= 0.6 rad per step) with semi-implicit Euler (implicitfast, the
  model's, bends a damped tendon spring: see ``_elasticity``);
- the object's mass and friction scaled as in the shifted world.

The magnitudes (``PER_JOINT_RANGES``) are assumptions of the right order for a UR-class arm, not
identified values: no public source gives per-joint friction curves for the UR5e, so they are
stated here and reported with every result, and the estimator never reads them (issue 15).
Not modelled: elasticity of the wrist joints and of the links themselves, backlash, temperature.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass

import mujoco
import numpy as np

from ds_robot.model.params import N_ARM_JOINTS
from ds_robot.physics.backend import EpisodeSetup, RobotState
from ds_robot.physics.mujoco_backend import MuJoCoBackend
from ds_robot.sim import scene

STIFFNESS_LOW, STIFFNESS_HIGH = 3.1e4, 1.2e5  # N m / rad; sources in the module docstring
BIG, WRIST = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
# (low, high) per joint: shoulder/elbow joints first, then the wrists
PER_JOINT_RANGES = {
    "coulomb_nm": ((0.5, 3.0), (0.1, 0.6)),  # the constant friction loss (the model's class; nominal 1.0 / 0.2)
    "stribeck_nm": ((0.3, 2.0), (0.05, 0.4)),  # breakaway friction above Coulomb
    "stribeck_speed_rad_s": ((0.05, 0.3), (0.05, 0.3)),
    "load_friction": ((0.0, 0.04), (0.0, 0.04)),  # friction per N m of load torque
    "damping_scale": ((0.7, 1.5), (0.7, 1.5)),
    "torque_lag_s": ((0.002, 0.008), (0.001, 0.004)),
    "gain": ((0.9, 1.1), (0.9, 1.1)),
    "sensor_bias_nm": ((-1.5, 1.5), (-0.3, 0.3)),
    "sensor_scale": ((0.95, 1.05), (0.95, 1.05)),
    "sensor_noise_nm": ((0.2, 0.8), (0.05, 0.15)),
    # joint elasticity (harmonic drive + shaft), shoulder/elbow joints only; the wrists stay rigid
    # (the module docstring)
    "stiffness_nm_rad": ((STIFFNESS_LOW, STIFFNESS_HIGH), (0.0, 0.0)),
    "transmission_damping_ratio": ((0.05, 0.2), (0.0, 0.0)),
}
SCALAR_RANGES = {"latency_s": (0.0, 0.016), "payload_kg": (0.0, 0.6), "payload_offset_m": (0.0, 0.05),
                 "payload_depth_m": (0.0, 0.08), "object_mass_scale": (0.5, 2.0), "object_friction_scale": (0.7, 1.3)}
SMOOTH_SPEED_RAD_S = 0.05  # the friction terms' sign function, tanh(v / this)
ROTOR_PREFIX, SPRING_PREFIX = "rotor/", "spring/"
ELASTIC_SUBSTEPS = 4  # at least this many physics steps per 2 ms while a joint is elastic (the spring is explicit in MuJoCo)


@dataclass(frozen=True)
class UnmodelledPhysics:
    """One episode's hidden physics (per-joint tuples of six)."""

    coulomb_nm: tuple[float, ...] = (1.0, 1.0, 1.0, 0.2, 0.2, 0.2)
    stribeck_nm: tuple[float, ...] = (0.0,) * N_ARM_JOINTS
    stribeck_speed_rad_s: tuple[float, ...] = (0.1,) * N_ARM_JOINTS
    load_friction: tuple[float, ...] = (0.0,) * N_ARM_JOINTS
    damping_scale: tuple[float, ...] = (1.0,) * N_ARM_JOINTS
    torque_lag_s: tuple[float, ...] = (0.0,) * N_ARM_JOINTS
    gain: tuple[float, ...] = (1.0,) * N_ARM_JOINTS
    sensor_bias_nm: tuple[float, ...] = (0.0,) * N_ARM_JOINTS
    sensor_scale: tuple[float, ...] = (1.0,) * N_ARM_JOINTS
    sensor_noise_nm: tuple[float, ...] = (0.0,) * N_ARM_JOINTS
    stiffness_nm_rad: tuple[float, ...] = (0.0,) * N_ARM_JOINTS  # 0: a rigid joint
    transmission_damping_ratio: tuple[float, ...] = (0.0,) * N_ARM_JOINTS
    latency_s: float = 0.0
    payload_kg: float = 0.0
    payload_com_m: tuple[float, float, float] = (0.0, 0.0, 0.0)  # from the gripper body's centre of mass
    object_mass_scale: float = 1.0
    object_friction_scale: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> UnmodelledPhysics:
        def per_joint(key):
            (lo_b, hi_b), (lo_w, hi_w) = PER_JOINT_RANGES[key]
            return tuple(float(v) for v in BIG * rng.uniform(lo_b, hi_b, N_ARM_JOINTS)
                         + WRIST * rng.uniform(lo_w, hi_w, N_ARM_JOINTS))

        draws = {key: per_joint(key) for key in PER_JOINT_RANGES}
        scalar = {key: float(rng.uniform(*r)) for key, r in SCALAR_RANGES.items()}
        offset, depth = scalar.pop("payload_offset_m"), scalar.pop("payload_depth_m")
        angle = float(rng.uniform(0, 2 * np.pi))  # off the tool axis by ``offset``, ``depth`` along it
        com = (offset * float(np.cos(angle)), offset * float(np.sin(angle)), depth)
        return cls(**draws, **scalar, payload_com_m=com)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class UnmodelledMuJoCoBackend(MuJoCoBackend):
    """MuJoCo with hidden :class:`UnmodelledPhysics` per episode (or a fixed ``physics`` for every
    episode); the per-episode draw is a function of ``seed`` and the episode's setup, like the
    shifted world's, so every controller on the same episode seeds meets the same physics."""

    def __init__(self, variant: str = "ur5e", physics_dt_s: float = 0.002, seed: int = 0,
                 physics: UnmodelledPhysics | None = None):
        super().__init__(variant, physics_dt_s)
        self.seed = seed
        self._fixed = physics
        self._substeps = 1
        self._set_physics(physics or UnmodelledPhysics())
        self._nominal: dict[int, dict[str, np.ndarray]] = {}
        self._commands: deque = deque()
        self._torque = np.zeros(N_ARM_JOINTS)
        self._noise = np.random.default_rng(seed)

    def _build_model(self, obj) -> mujoco.MjModel:
        """The scene plus one rotor per arm joint: a body of its own (at the end of the tree, so
        the scene's joints keep their addresses) whose hinge carries the motor's reflected
        inertia, coupled to its link joint by a spring-damper (a fixed tendon, length
        ``q_link - q_rotor``). A rigid joint leaves its rotor unactuated and uncoupled."""
        spec = scene.scene_spec(self.variant, obj, self.physics_dt_s)
        for joint in scene.ARM_JOINTS:
            body = spec.worldbody.add_body(name=ROTOR_PREFIX + joint, pos=[0.0, 0.0, -1.0])
            body.explicitinertial = True
            body.mass, body.inertia = 1e-3, [1e-6, 1e-6, 1e-6]  # the hinge's armature holds the inertia
            body.add_joint(name=ROTOR_PREFIX + joint, type=mujoco.mjtJoint.mjJNT_HINGE, axis=[0.0, 0.0, 1.0])
            spring = spec.add_tendon(name=SPRING_PREFIX + joint)
            spring.wrap_joint(joint, 1.0)
            spring.wrap_joint(ROTOR_PREFIX + joint, -1.0)
        return scene.compile_spec(spec)

    # -- per episode -------------------------------------------------------------------

    def _episode_model(self, setup: EpisodeSetup) -> None:
        from ds_robot.sim2real.worlds import episode_rng

        rng = episode_rng(self.seed, setup)
        self._set_physics(self._fixed or UnmodelledPhysics.sample(rng))
        self._noise = np.random.default_rng(rng.integers(2**63))
        self._apply(self.physics)
        self._commands.clear()
        self._torque[:] = 0.0

    def _set_physics(self, p: UnmodelledPhysics) -> None:
        """This episode's physics, and the per-joint arrays the physics steps use (converted once
        per episode, not per 2 ms step)."""
        self.physics = p
        self._stribeck, self._stribeck_speed = np.array(p.stribeck_nm), np.array(p.stribeck_speed_rad_s)
        self._load_friction, self._gain = np.array(p.load_friction), np.array(p.gain)
        self._elastic = np.array(p.stiffness_nm_rad) > 0
        self._sensor = (np.array(p.sensor_scale), np.array(p.sensor_bias_nm), np.array(p.sensor_noise_nm))

    def _apply(self, p: UnmodelledPhysics) -> None:
        m = self.model
        payload = m.body(scene.PAYLOAD_BODY).id
        obj = m.body(scene.OBJECT_BODY).id
        obj_geoms = np.flatnonzero(m.geom_bodyid == obj)
        if id(m) not in self._nominal:
            self._integrator = m.opt.integrator
            self._nominal[id(m)] = {"damping": m.dof_damping[:N_ARM_JOINTS].copy(), "mass": m.body_mass[payload].copy(),
                                    "ipos": m.body_ipos[payload].copy(), "inertia": m.body_inertia[payload].copy(),
                                    "armature": m.dof_armature[:N_ARM_JOINTS].copy()}
        n = self._nominal[id(m)]
        m.dof_damping[:N_ARM_JOINTS] = n["damping"] * np.array(p.damping_scale)
        self._elasticity(m, p, n["armature"])
        m.dof_frictionloss[:N_ARM_JOINTS] = p.coulomb_nm
        # the gripper body and a payload box (8 x 8 x 4 cm) at an offset: the combined mass, centre of
        # mass and the inertia about it (parallel axes; the body's principal axes are kept, which is
        # exact for the gripper's diagonal inertia and the box's own, and drops the off-diagonal terms
        # the offset adds: they are second order in the offset)
        m0, m1 = float(n["mass"][()]), p.payload_kg
        c0, c1 = n["ipos"], n["ipos"] + np.array(p.payload_com_m)
        total = m0 + m1
        com = (m0 * c0 + m1 * c1) / total
        box = m1 / 12 * np.array([0.08**2 + 0.04**2, 0.08**2 + 0.04**2, 2 * 0.08**2])

        def shifted(mass, inertia, at):
            d = at - com
            return inertia + mass * (np.dot(d, d) - d**2)

        m.body_mass[payload] = total
        m.body_ipos[payload] = com
        m.body_inertia[payload] = shifted(m0, n["inertia"], c0) + shifted(m1, box, c1)
        m.body_mass[obj] *= p.object_mass_scale  # after _load wrote this episode's object values
        m.body_inertia[obj] *= p.object_mass_scale
        m.geom_friction[obj_geoms, 0] *= p.object_friction_scale
        mujoco.mj_setConst(m, self.data)  # the solver's constants from the new masses

    def _elasticity(self, m: mujoco.MjModel, p: UnmodelledPhysics, armature: np.ndarray) -> None:
        """Elastic joints: the motor drives the rotor, the rotor carries the reflected inertia (the
        link's armature moves onto it) and the spring-damper carries the torque to the link;
        rigid joints: the motor drives the link as in the nominal scene."""
        rotor = np.array([m.joint(ROTOR_PREFIX + j).id for j in scene.ARM_JOINTS])
        spring = np.array([m.tendon(SPRING_PREFIX + j).id for j in scene.ARM_JOINTS])
        link_dof = np.arange(N_ARM_JOINTS)
        rotor_dof = m.jnt_dofadr[rotor]
        stiffness = np.array(p.stiffness_nm_rad)
        elastic = self._elastic
        # the physics step: the spring is explicit, so the rotor's mode (sqrt(k / J) with the link
        # held; up to ~1.2x that with the link free, the link at least as heavy as the rotor) is
        # kept at <= 0.6 rad per step, and no fewer than ELASTIC_SUBSTEPS steps per 2 ms
        fastest = float(np.sqrt(1.5 * stiffness / armature).max())
        self._substeps = max(ELASTIC_SUBSTEPS, math.ceil(self.physics_dt_s * fastest / 0.6)) if elastic.any() else 1
        self._dt = self.physics_dt_s / self._substeps
        lag = np.array(p.torque_lag_s)
        self._alpha = np.where(lag > 0, 1.0 - np.exp(-self._dt / np.maximum(lag, 1e-12)), 1.0)
        m.actuator_trnid[:N_ARM_JOINTS, 0] = np.where(elastic, rotor, link_dof)  # the arm joints are joints 0-5
        m.dof_armature[link_dof] = np.where(elastic, 0.0, armature)
        m.dof_armature[rotor_dof] = armature
        m.tendon_stiffness[spring] = stiffness
        # damping ratio of the rotor on the spring (the link held still): c = 2 zeta sqrt(k J)
        m.tendon_damping[spring] = 2.0 * np.array(p.transmission_damping_ratio) * np.sqrt(stiffness * armature)
        m.opt.timestep = self._dt
        # MuJoCo's implicitfast integrator (the scene's, and the controller model's) bends a damped
        # tendon spring: at 1e5 N m/rad and damping ratio 0.05 the stiff arm departs from the rigid
        # one by 1.6 mrad in 0.4 s where Euler and RK4 agree with it to 0.04 mrad; the elastic
        # world steps with (semi-implicit) Euler, another integrator than the controller's model.
        m.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER if elastic.any() else self._integrator
        self._motor_dof = np.where(elastic, rotor_dof, link_dof)
        self._motor_qpos = np.where(elastic, m.jnt_qposadr[rotor], link_dof)
        self._stiffness = np.where(elastic, stiffness, 1.0)

    # -- stepping ----------------------------------------------------------------------

    def reset(self, setup: EpisodeSetup) -> RobotState:
        super().reset(setup)
        # the springs start loaded with the arm's weight (as an arm that was holding this pose):
        # rotor = link + gravity torque / stiffness on the elastic joints
        d = self.data
        d.qpos[self._motor_qpos] = np.where(self._elastic, d.qpos[:N_ARM_JOINTS]
                                            + d.qfrc_bias[:N_ARM_JOINTS] / self._stiffness, d.qpos[self._motor_qpos])
        mujoco.mj_forward(self.model, d)
        return self._sensed(self._read(0.0))

    def _friction(self, qd: np.ndarray, load: np.ndarray) -> np.ndarray:
        sign = np.tanh(qd / SMOOTH_SPEED_RAD_S)
        stribeck = self._stribeck * np.exp(-((qd / self._stribeck_speed) ** 2))
        return -(stribeck + self._load_friction * np.abs(load)) * sign

    def step(self, arm_torque_nm: np.ndarray, gripper_command: float, duration_s: float) -> RobotState:
        m, d, latency_s = self.model, self.data, self.physics.latency_s
        self._commands.append((d.time, np.clip(np.asarray(arm_torque_nm, dtype=float),
                                               -self.joint_torque_limit_nm, self.joint_torque_limit_nm),
                               float(gripper_command)))
        work = 0.0
        motor_qpos, motor_dof = self._motor_qpos, self._motor_dof
        for _ in range(max(1, round(duration_s / self.physics_dt_s)) * self._substeps):
            # the newest command sent at least latency_s ago (the first one until then)
            while len(self._commands) > 1 and self._commands[1][0] <= d.time - latency_s + 1e-9:
                self._commands.popleft()
            _, target, gripper = self._commands[0]
            self._torque += self._alpha * (target - self._torque)
            self._arm_ctrl[:] = self._torque * self._gain
            d.ctrl[self._grip_act] = self.finger_travel_m * (1.0 - gripper) / 2.0
            d.qfrc_applied[:N_ARM_JOINTS] = self._friction(d.qvel[:N_ARM_JOINTS], d.qfrc_bias[:N_ARM_JOINTS])
            q_before = d.qpos[motor_qpos]
            mujoco.mj_step(m, d)
            work += float(np.abs((d.qpos[motor_qpos] - q_before) * d.qfrc_actuator[motor_dof]).sum())
        self._check_stable()
        return self._sensed(self._read(work))

    def _read(self, work_j: float) -> RobotState:
        """The nominal reading, with the motor torque taken where the motor acts (the rotor of an
        elastic joint). The output-side torque needs no change: the spring's torque on the link
        is part of the link's passive force, and the link has no armature of its own."""
        state = super()._read(work_j)
        return dataclasses.replace(state, tau_applied_nm=self.data.qfrc_actuator[self._motor_dof].copy())

    def _sensed(self, state: RobotState) -> RobotState:
        """The state as the arm's torque sensing reports it: the unmodelled friction is part of the
        output torque (as the friction loss is), then bias, scale error and noise."""
        scale, bias, noise = self._sensor
        true = state.tau_measured_nm + self.data.qfrc_applied[:N_ARM_JOINTS]
        measured = scale * true + bias + self._noise.normal(0.0, 1.0, N_ARM_JOINTS) * noise
        return dataclasses.replace(state, tau_measured_nm=measured)
