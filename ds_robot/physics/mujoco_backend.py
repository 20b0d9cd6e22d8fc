"""MuJoCo as the world: the composed table scene, one compiled model per object."""

from __future__ import annotations

import warnings

import mujoco
import numpy as np

from ds_robot.model.params import N_ARM_JOINTS
from ds_robot.physics.backend import EpisodeSetup, PhysicsBackend, RobotState
from ds_robot.sim import scene
from ds_robot.sim.objects import ObjectSpec


class MuJoCoBackend(PhysicsBackend):
    """Runs the composed scene in MuJoCo.

    Object shapes differ between episodes, so a model is compiled per object shape and rest pose
    the first time it is used and cached; the object's mass (and inertia) and friction are
    written into it at every reset, so objects varied per episode (``ObjectVariation``) share
    it. ``model_hook`` (optional) is called on every freshly compiled model; a physics-shifted
    world changes parameters per episode in ``_episode_model``.
    """

    def __init__(self, variant: str = "ur5e", physics_dt_s: float = 0.002, model_hook=None):
        super().__init__(variant, physics_dt_s)
        self.model_hook = model_hook
        self._cache: dict[ObjectSpec, tuple[mujoco.MjModel, mujoco.MjData]] = {}
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self.instabilities = 0  # MuJoCo's restarts after blow-ups, this episode (_check_stable)
        self._badqacc = 0

    # -- model bookkeeping -------------------------------------------------------------

    def _load(self, obj: ObjectSpec) -> None:
        key = obj.geometry()  # mass and friction are written per episode: one model per shape and rest
        if key not in self._cache:
            model = self._build_model(obj)
            if self.model_hook is not None:
                self.model_hook(model)
            body = model.body(scene.OBJECT_BODY).id
            geoms = np.flatnonzero(model.geom_bodyid == body)
            compiled = {"obj": obj, "mass": model.body_mass[body].copy(), "inertia": model.body_inertia[body].copy(),
                        "friction": model.geom_friction[geoms, 0].copy(), "const_mass_kg": obj.mass_kg}
            self._cache[key] = (model, mujoco.MjData(model), body, geoms, compiled)
        self.model, self.data, body, geoms, c = self._cache[key]
        m = self.model
        # always from the compiled values (a shifted world scales them after this, every episode);
        # the listed object is a ratio of exactly 1, so its model is the compiled one bit for bit
        mass_ratio = obj.mass_kg / c["obj"].mass_kg
        m.body_mass[body] = c["mass"] * mass_ratio  # inertia scales with the mass at the same shape
        m.body_inertia[body] = c["inertia"] * mass_ratio
        m.geom_friction[geoms, 0] = c["friction"] * (obj.friction / c["obj"].friction)
        if obj.mass_kg != c["const_mass_kg"]:
            # the constants the compiler derived from the masses (the constraint solver's inverse
            # weights among them): left at another mass's, a heavier object's contacts went unstable
            mujoco.mj_setConst(m, self.data)
            c["const_mass_kg"] = obj.mass_kg
        self._arm_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in scene.ARM_JOINTS])
        arm_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in scene.ARM_JOINTS])
        if not (np.array_equal(arm_dof, np.arange(N_ARM_JOINTS)) and np.array_equal(self._arm_qpos, np.arange(N_ARM_JOINTS))):
            raise RuntimeError("scene layout changed: the arm's joints must be the first six dofs")
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._finger_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._arm_act = np.array([m.actuator(a).id for a in scene.ARM_ACTUATORS])
        self._grip_act = m.actuator(scene.GRIPPER_ACTUATOR).id
        self._tcp = m.site(scene.TCP_SITE).id
        self._obj_body = m.body(scene.OBJECT_BODY).id
        self._obj_qpos = m.jnt_qposadr[m.body_jntadr[self._obj_body]]
        self._pads = [m.geom(g).id for g in scene.PAD_GEOMS]
        self._obj_geom = m.geom(scene.OBJECT_GEOM).id
        self._force6 = np.zeros(6)
        d = self.data
        # Views into MjData's fixed-size buffers stay valid across steps; taking them once keeps
        # attribute lookups off the per-step path.
        self._qpos, self._qvel = d.qpos, d.qvel
        self._arm_ctrl = d.ctrl[: N_ARM_JOINTS]
        self._arm_qfrc_actuator = d.qfrc_actuator[:N_ARM_JOINTS]
        self._arm_qfrc_passive = d.qfrc_passive[:N_ARM_JOINTS]
        self._arm_qacc = d.qacc[:N_ARM_JOINTS]
        self._arm_armature = m.dof_armature[:N_ARM_JOINTS]
        self._arm_frictionloss = m.dof_frictionloss[:N_ARM_JOINTS]
        self._tcp_xpos, self._tcp_xmat = d.site_xpos[self._tcp], d.site_xmat[self._tcp]
        if not np.array_equal(self._arm_act, np.arange(N_ARM_JOINTS)):
            raise RuntimeError("scene layout changed: the arm's motors must be the first six actuators")

    def _build_model(self, obj: ObjectSpec) -> mujoco.MjModel:
        """The compiled scene for ``obj`` (a world with more bodies than the scene builds them here)."""
        return scene.build_scene(self.variant, obj, self.physics_dt_s)

    # -- interface ---------------------------------------------------------------------

    def reset(self, setup: EpisodeSetup) -> RobotState:
        self._load(setup.obj)
        self._episode_model(setup)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._badqacc = int(d.warning[mujoco.mjtWarning.mjWARN_BADQACC].number)
        d.qpos[self._arm_qpos] = setup.arm_qpos_rad
        finger = float(np.clip(setup.gripper_opening_m / 2, 0.0, self.finger_travel_m))
        d.qpos[self._finger_qpos] = finger
        d.ctrl[self._grip_act] = finger
        o = self._obj_qpos
        d.qpos[o : o + 3] = (setup.object_x_m, setup.object_y_m, setup.obj.resting_height_m)
        d.qpos[o + 3 : o + 7] = scene.object_quat(setup.object_yaw_rad)
        mujoco.mj_forward(m, d)
        self.instabilities = 0
        return self._read(0.0)

    def _check_stable(self) -> None:
        """MuJoCo, when the accelerations blow up, resets the simulation to its initial state and
        carries on: an episode would then silently go on from its start. Counted per episode
        (``instabilities``) and warned about, so a result that is not physics is not taken for it."""
        count = int(self.data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number)
        if count > self._badqacc:
            self.instabilities += count - self._badqacc
            warnings.warn(f"MuJoCo went unstable at t={self.data.time:.3f} s and restarted the simulation: "
                          "this episode's result is not physics", RuntimeWarning, stacklevel=3)
        self._badqacc = count

    def _episode_model(self, setup: EpisodeSetup) -> None:
        """Change the loaded model for this episode (after ``_load`` wrote the object's values;
        a shifted world draws its hidden physics here). The nominal world changes nothing."""

    def step(self, arm_torque_nm: np.ndarray, gripper_command: float, duration_s: float) -> RobotState:
        self._arm_ctrl[:] = arm_torque_nm  # MuJoCo clamps to the actuators' ctrlrange
        self.data.ctrl[self._grip_act] = self.finger_travel_m * (1.0 - gripper_command) / 2.0
        n_steps = max(1, round(duration_s / self.physics_dt_s))
        q_before = self._qpos[:N_ARM_JOINTS].copy()
        mujoco.mj_step(self.model, self.data, n_steps)
        self._check_stable()
        # The motor torques are held over the step, so each joint's work is exactly tau_j * dq_j;
        # |tau_j * dq_j| equals the integral of |tau_j * qd_j| dt unless the joint reverses
        # within the step (then it is a slight underestimate).
        q_before -= self._qpos[:N_ARM_JOINTS]
        q_before *= self._arm_qfrc_actuator
        return self._read(float(np.abs(q_before).sum()))

    def _read(self, work_j: float) -> RobotState:
        d = self.data
        tau_applied = self._arm_qfrc_actuator.copy()
        # Output-side torque: motor torque minus what the joint itself absorbs (viscous damping,
        # friction loss, rotor inertia); this is what reaches the links, loads included.
        tau_measured = tau_applied + self._arm_qfrc_passive
        tau_measured -= self._arm_armature * self._arm_qacc
        # Friction loss: the solver's FRICTION_DOF rows follow the ne equality rows, one per dof
        # with friction loss, in dof order; the arm's dofs come first. Read the model's current
        # friction so a corrected model is reported correctly.
        n_rows = np.count_nonzero(self._arm_frictionloss)  # friction loss is never negative
        if n_rows == N_ARM_JOINTS:
            tau_measured += d.efc_force[d.ne : d.ne + N_ARM_JOINTS]
        elif n_rows:
            tau_measured[self._arm_frictionloss > 0] += d.efc_force[d.ne : d.ne + n_rows]
        qpos, qvel = self._qpos.copy(), self._qvel.copy()  # one copy each; the fields below are views
        o = self._obj_qpos
        left, right = self._finger_qpos
        left_dof, right_dof = self._finger_dof
        return RobotState(
            time_s=d.time,
            q_rad=qpos[:N_ARM_JOINTS],
            qd_rad_s=qvel[:N_ARM_JOINTS],
            tau_measured_nm=tau_measured,
            tau_applied_nm=tau_applied,
            gripper_opening_m=float(qpos[left] + qpos[right]),
            gripper_speed_m_s=float(qvel[left_dof] + qvel[right_dof]),
            tcp_pos_m=self._tcp_xpos.copy(),
            tcp_rot=self._tcp_xmat.reshape(3, 3).copy(),
            object_pos_m=qpos[o : o + 3],
            object_quat=qpos[o + 3 : o + 7],
            step_work_j=work_j,
            **self._object_contacts(),
        )

    def _object_contacts(self) -> dict:
        """Which pads touch the object and the normal forces the robot puts on it (end of the step)."""
        d = self.data
        if d.ncon == 0:
            return {}
        pairs = d.contact.geom[: d.ncon]
        rows = np.flatnonzero((pairs == self._obj_geom).any(axis=1))
        if not len(rows):
            return {}
        pads, press = [0.0, 0.0], 0.0
        touching = [False, False]
        for i in rows:
            other = pairs[i, 1] if pairs[i, 0] == self._obj_geom else pairs[i, 0]
            body = self.model.geom_bodyid[other]
            if body == 0 or body == self._obj_body:  # the table (world body)
                continue
            mujoco.mj_contactForce(self.model, d, int(i), self._force6)
            if other == self._pads[0] or other == self._pads[1]:
                side = 0 if other == self._pads[0] else 1
                touching[side] = True
                pads[side] += self._force6[0]
            else:
                press = max(press, float(self._force6[0]))
        return {"pad_contact": (touching[0], touching[1]), "grip_force_n": float(max(pads)), "press_force_n": press}
