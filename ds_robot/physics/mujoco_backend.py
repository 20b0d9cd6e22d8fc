"""MuJoCo as the world: the composed table scene, one compiled model per object."""

from __future__ import annotations

import mujoco
import numpy as np

from ds_robot.model.params import default_description
from ds_robot.physics.backend import EpisodeSetup, PhysicsBackend, RobotState
from ds_robot.sim import scene
from ds_robot.sim.objects import ObjectSpec

N_ARM = 6


class MuJoCoBackend(PhysicsBackend):
    """Runs the composed scene in MuJoCo.

    Object shapes differ between episodes, so a model is compiled per object the first time
    it is used and cached. ``model_hook`` (optional) is called on every freshly compiled
    model, which is where a physics-shifted world changes parameters.
    """

    def __init__(self, variant: str = "ur5e", physics_dt_s: float = 0.002, model_hook=None):
        if not (1e-4 <= physics_dt_s <= 0.01):
            raise ValueError(f"physics_dt_s={physics_dt_s} is outside [0.0001, 0.01] s")
        desc = default_description()
        self.variant = variant
        self.physics_dt_s = physics_dt_s
        self.joint_torque_limit_nm = np.array(desc.variant(variant).joint_torque_limit_nm)
        self.max_gripper_opening_m = desc.gripper.max_opening_m
        self.finger_travel_m = desc.gripper.finger_travel_m
        self.model_hook = model_hook
        self._cache: dict[ObjectSpec, tuple[mujoco.MjModel, mujoco.MjData]] = {}
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None

    # -- model bookkeeping -------------------------------------------------------------

    def _load(self, obj: ObjectSpec) -> None:
        if obj not in self._cache:
            model = scene.build_scene(self.variant, obj, self.physics_dt_s)
            if self.model_hook is not None:
                self.model_hook(model)
            self._cache[obj] = (model, mujoco.MjData(model))
        self.model, self.data = self._cache[obj]
        m = self.model
        self._arm_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in scene.ARM_JOINTS])
        arm_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in scene.ARM_JOINTS])
        if not (np.array_equal(arm_dof, np.arange(N_ARM)) and np.array_equal(self._arm_qpos, np.arange(N_ARM))):
            raise RuntimeError("scene layout changed: the arm's joints must be the first six dofs")
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._finger_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._arm_act = np.array([m.actuator(a).id for a in scene.ARM_ACTUATORS])
        self._grip_act = m.actuator(scene.GRIPPER_ACTUATOR).id
        self._tcp = m.site(scene.TCP_SITE).id
        self._obj_body = m.body(scene.OBJECT_BODY).id
        self._obj_qpos = m.jnt_qposadr[m.body_jntadr[self._obj_body]]
        self._armature = m.dof_armature[:N_ARM].copy()
        self._friction_arm_dofs = np.flatnonzero(m.dof_frictionloss[:N_ARM] > 0)

    # -- interface ---------------------------------------------------------------------

    def reset(self, setup: EpisodeSetup) -> RobotState:
        self._load(setup.obj)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self._arm_qpos] = setup.arm_qpos_rad
        finger = float(np.clip(setup.gripper_opening_m / 2, 0.0, self.finger_travel_m))
        d.qpos[self._finger_qpos] = finger
        d.ctrl[self._grip_act] = finger
        o = self._obj_qpos
        d.qpos[o : o + 3] = (setup.object_x_m, setup.object_y_m, setup.obj.resting_height_m)
        d.qpos[o + 3 : o + 7] = scene.object_quat(setup.object_yaw_rad)
        mujoco.mj_forward(m, d)
        return self._read(0.0)

    def step(self, arm_torque_nm: np.ndarray, gripper_command: float, duration_s: float) -> RobotState:
        m, d = self.model, self.data
        d.ctrl[self._arm_act] = arm_torque_nm  # MuJoCo clamps to the actuators' ctrlrange
        d.ctrl[self._grip_act] = self.finger_travel_m * (1.0 - gripper_command) / 2.0
        n_steps = max(1, round(duration_s / self.physics_dt_s))
        q_before = d.qpos[:N_ARM].copy()
        mujoco.mj_step(m, d, n_steps)
        # The motor torques are held over the step, so each joint's work is exactly tau_j * dq_j;
        # |tau_j * dq_j| equals the integral of |tau_j * qd_j| dt unless the joint reverses
        # within the step (then it is a slight underestimate).
        work = float(np.abs(d.qfrc_actuator[:N_ARM] * (d.qpos[:N_ARM] - q_before)).sum())
        return self._read(work)

    def _read(self, work_j: float) -> RobotState:
        d = self.data
        tau_applied = d.qfrc_actuator[:N_ARM].copy()
        # Output-side torque: motor torque minus what the joint itself absorbs (viscous damping,
        # friction loss, rotor inertia); this is what reaches the links, loads included.
        tau_measured = tau_applied + d.qfrc_passive[:N_ARM] - self._armature * d.qacc[:N_ARM]
        # Friction-loss forces: the solver's FRICTION_DOF rows follow the ne equality rows, one per
        # dof with friction loss, in dof order (the arm's dofs come first).
        start = d.ne
        tau_measured[self._friction_arm_dofs] += d.efc_force[start : start + len(self._friction_arm_dofs)]
        o = self._obj_qpos
        qpos, qvel = d.qpos.copy(), d.qvel.copy()  # one copy each; the fields below are views of it
        left, right = self._finger_qpos
        left_dof, right_dof = self._finger_dof
        return RobotState(
            time_s=d.time,
            q_rad=qpos[:N_ARM],
            qd_rad_s=qvel[:N_ARM],
            tau_measured_nm=tau_measured,
            tau_applied_nm=tau_applied,
            gripper_opening_m=float(qpos[left] + qpos[right]),
            gripper_speed_m_s=float(qvel[left_dof] + qvel[right_dof]),
            tcp_pos_m=d.site_xpos[self._tcp].copy(),
            tcp_rot=d.site_xmat[self._tcp].reshape(3, 3).copy(),
            object_pos_m=qpos[o : o + 3],
            object_quat=qpos[o + 3 : o + 7],
            step_work_j=work_j,
        )
