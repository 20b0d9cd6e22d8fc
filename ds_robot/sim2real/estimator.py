"""Online identification of what the world does differently from the controller's model.

Method: recursive least squares (RLS) on the inverse-dynamics residual. With the nominal
model's inverse dynamics ``tau_nom(q, qd, qdd) = M qdd + bias + d0 qd + f0 sign(qd)``, the world
obeys (per joint j, before contact)

    tau_nom_j = g_j tau_cmd_j(t - L) - dd_j qd_j - df_j sign(qd_j) - da_j qdd_j - m Y_j(q, qdd)

which is linear in theta = (motor gains g, extra damping dd, extra friction loss df, extra
armature da, payload mass m): 4 x 6 + 1 = 25 parameters. ``Y = J_c^T (J_c qdd + g_up)`` is the
torque a 1 kg point mass at the payload body's centre of mass needs (J_c: its translational
Jacobian; velocity-product terms dropped). One control step (10 ms: the torque is held over it)
gives 6 rows, evaluated at the interval's midpoint with ``qdd = (qd(t+1) - qd(t)) / dt``.

The control latency L (0, 1 or 2 steps) is not linear: one RLS filter runs per candidate and
the one whose a-priori residuals are smallest (exponentially weighted) is the estimate.

Robustness: a forgetting factor (0.995 per step: a memory of ~2 s) tracks slow change; the
prior (``theta0``, ``P0``) keeps unexcited parameters at their nominal values; a row whose
normalised innovation exceeds ``outlier_sigma`` is skipped (contact, impacts, saturation the
regressor does not model), as is any step with NaN/Inf inputs; commanded torques are clipped
to the motor limits before they enter the regressor; the covariance is kept symmetric and no
parameter's variance may exceed its prior's (no wind-up when excitation stops).
Gating has a failure mode: one wrong row accepted while the prior is wide makes the estimate
confidently wrong, and then every true row looks like an outlier. Two guards: the intervals
of the first ``settle_steps`` commands are not used (there the torque steps from the hold
command to the first one, so a command that lands a fraction of a period late — as in any real
loop — makes the row badly wrong), and a filter that rejects a joint's row in most of the last
``restart_window_steps`` steps restarts from the prior. Where the measurements are stamped
(a ROS loop: joint states are not exactly one period apart) the caller passes the measured
interval and the accelerations use it. A caller that knows of contact (grasping) can pass
``learn=False``: the step is recorded but the estimate holds.

Limits: contact forces and the object's load are not in the model (they show up as outliers
or bias the estimate while grasping); friction is Coulomb only (MuJoCo's friction loss is a
soft constraint, so near zero velocity the model is wrong: rows with |qd| < 0.02 rad/s drop
the friction column); the payload is a point mass at the gripper's centre of mass. Wrist 3
carries almost no gravity or coupling load, so its motor gain is not separable from its own
damping, friction and armature (its command is nearly a combination of those columns): the
prior holds it near nominal, and its estimate should not be trusted. Accelerations come from
finite differences of the measured velocities: with velocity noise of 1e-3 rad/s the estimates
hold; at 1e-2 rad/s (141 rad/s^2 of acceleration noise at 10 ms) they are badly biased, and a
filtered acceleration would be needed. Cost per
step: three filters, each one regressor and one 25-parameter block update.

How good the estimate is gets measured by prediction (:class:`ModelPredictor`, benchmark only):
the controller's MuJoCo model, nominal or with the estimate written in, is stepped over one
control period exactly as the world is, and its joint velocities are compared with the measured
ones at the next step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import mujoco
import numpy as np

from ds_robot.control.robot_model import RobotModel
from ds_robot.model.params import N_ARM_JOINTS
from ds_robot.sim import scene

GRAVITY_UP = np.array([0.0, 0.0, 9.81])
N_PARAMS = 4 * N_ARM_JOINTS + 1
SLICES = {"gain": slice(0, 6), "damping": slice(6, 12), "friction": slice(12, 18), "armature": slice(18, 24),
          "payload_kg": slice(24, 25)}
PRIOR_STD = {"gain": 0.2, "damping": 1.5, "friction": 0.6, "armature": 0.08, "payload_kg": 0.4}


@dataclass
class EstimatorConfig:
    forgetting: float = 0.995
    noise_std_nm: float = 0.5
    outlier_sigma: float = 5.0
    latencies: tuple[int, ...] = (0, 1, 2)
    # The intervals of the first commands after a start are not used: there the torque steps
    # from the hold command to the first one, and a command that lands even a fraction of a
    # period late (as in any real loop) makes that row badly wrong — while the prior is at its widest.
    settle_steps: int = 1
    min_speed_for_friction: float = 0.02
    # A filter that rejects a joint's row in more than half of the last this many steps no longer
    # explains the data (typically: one bad early row got in while the prior was wide, and the
    # now-confident wrong estimate gates out every true row of that joint): it restarts from the prior.
    restart_window_steps: int = 20


class RLS:
    """RLS with forgetting, a prior and innovation gating; the 6 rows of one step in one block
    update (rows whose innovation fails the gate are dropped first)."""

    def __init__(self, theta0: np.ndarray, p0_std: np.ndarray, config: EstimatorConfig):
        self.theta = theta0.astype(float).copy()
        self.P0_diag = p0_std.astype(float) ** 2
        self.P = np.diag(self.P0_diag)
        self.theta0 = self.theta.copy()
        self.config = config
        self.rejected = 0
        self.updates = 0
        self.restarts = 0
        self._recent: deque[np.ndarray] = deque(maxlen=config.restart_window_steps)  # rejected rows per step
        self._recent_count: np.ndarray | int = 0  # their sum per row

    def restart(self) -> None:
        self.theta = self.theta0.copy()
        self.P = np.diag(self.P0_diag)
        self._recent.clear()
        self._recent_count = 0
        self.restarts += 1

    def _gate(self, phi: np.ndarray, y: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A-priori innovations, ``phi P``, and which rows pass the innovation gate."""
        e = y - phi @ self.theta
        ph = phi @ self.P
        s_diag = np.einsum("ij,ij->i", ph, phi) + r
        return e, ph, e * e <= (self.config.outlier_sigma ** 2) * s_diag

    def update(self, phi: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One block of rows ``phi (k x n)``, measurements ``y (k,)``; returns the a-priori
        innovations (all rows, gated or not)."""
        r = self.config.noise_std_nm ** 2
        e, ph, keep = self._gate(phi, y, r)
        bad = (~keep).astype(int)
        self.rejected += int(bad.sum())
        # Rejections per row over the window, kept as a running count (this is the control loop).
        if len(self._recent) == self._recent.maxlen:
            self._recent_count = self._recent_count - self._recent[0]
        self._recent.append(bad)
        self._recent_count = self._recent_count + bad
        if len(self._recent) == self._recent.maxlen and (2 * self._recent_count > len(self._recent)).any():
            self.restart()
            e, ph, keep = self._gate(phi, y, r)
        if keep.any():
            phi_k, ph_k = phi[keep], ph[keep]
            s = ph_k @ phi_k.T + r * np.eye(int(keep.sum()))
            gain = np.linalg.solve(s, ph_k).T  # P phi^T S^-1
            self.theta += gain @ e[keep]
            self.P -= gain @ ph_k
            self.updates += 1
        return e

    def forget(self) -> None:
        """Exponential forgetting, bounded: no parameter's variance may grow past its prior's
        (otherwise an unexcited direction winds up and then jumps on the next disturbance)."""
        self.P /= self.config.forgetting
        self.P = 0.5 * (self.P + self.P.T)
        ratio = np.diag(self.P) / self.P0_diag
        over = ratio > 1.0
        if over.any():
            scale = np.where(over, 1.0 / np.sqrt(np.maximum(ratio, 1e-300)), 1.0)
            self.P *= np.outer(scale, scale)


@dataclass(frozen=True)
class GripperState:
    """What the controller knows of the gripper in one step: opening (m), opening speed (m/s) and
    the finger position it commands (m per finger)."""

    opening_m: float
    speed_m_s: float
    finger_target_m: float


class ModelPredictor:
    """Joint velocities one control step ahead, by stepping a MuJoCo model of the arm and gripper
    the way the world is stepped (same integrator, ``physics_dt_s`` substeps, the command held
    over the control period, motor torques clamped to the actuators' range), either the nominal
    model or the model with an estimate written into it: damping, friction loss and armature per
    joint, motor gain as the actuator's gear, the payload on the gripper body.

    This is the corrected *MuJoCo model* predicting, not a linearisation of it: its error on the
    nominal world, with the nominal model, is zero up to the finger state (the object and the table
    are not in it, so contact is not predicted). Cost: ``control_dt / physics_dt`` ``mj_step`` calls
    of the arm-and-gripper model (~10 µs each here)."""

    def __init__(self, variant: str = "ur5e", control_dt_s: float = 0.01, physics_dt_s: float = 0.002):
        self.model = scene.build_robot_model(variant)
        self.model.opt.timestep = physics_dt_s
        self.data = mujoco.MjData(self.model)
        self.substeps = max(1, round(control_dt_s / physics_dt_s))
        m = self.model
        self._nominal = {"damping": m.dof_damping[:N_ARM_JOINTS].copy(), "armature": m.dof_armature[:N_ARM_JOINTS].copy(),
                         "friction": m.dof_frictionloss[:N_ARM_JOINTS].copy(), "gear": m.actuator_gear[:N_ARM_JOINTS, 0].copy()}
        self._payload = m.body(scene.PAYLOAD_BODY).id
        self._payload_mass = float(m.body_mass[self._payload])
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._finger_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in scene.FINGER_JOINTS])
        self._grip_act = m.actuator(scene.GRIPPER_ACTUATOR).id

    def _write(self, estimate: dict | None) -> None:
        m, n = self.model, self._nominal
        if estimate is None:
            m.dof_damping[:N_ARM_JOINTS], m.dof_armature[:N_ARM_JOINTS] = n["damping"], n["armature"]
            m.dof_frictionloss[:N_ARM_JOINTS], m.actuator_gear[:N_ARM_JOINTS, 0] = n["friction"], n["gear"]
            m.body_mass[self._payload] = self._payload_mass
            return
        # Physically impossible values (negative damping, friction or mass) are clipped: MuJoCo
        # would otherwise integrate an unstable or ill-defined model.
        m.dof_damping[:N_ARM_JOINTS] = np.maximum(n["damping"] + estimate["damping"], 0.0)
        m.dof_armature[:N_ARM_JOINTS] = np.maximum(n["armature"] + estimate["armature"], 0.2 * n["armature"])
        m.dof_frictionloss[:N_ARM_JOINTS] = np.maximum(n["friction"] + estimate["friction"], 0.0)
        m.actuator_gear[:N_ARM_JOINTS, 0] = n["gear"] * np.maximum(estimate["gain"], 0.1)
        m.body_mass[self._payload] = self._payload_mass + max(float(estimate["payload_kg"]), 0.0)

    def predict(self, q, qd, tau_applied, estimate: dict | None, gripper: GripperState | None = None) -> np.ndarray:
        self._write(estimate)
        m, d = self.model, self.data
        d.qvel[:] = 0.0
        d.qpos[:N_ARM_JOINTS], d.qvel[:N_ARM_JOINTS] = q, qd
        d.ctrl[:N_ARM_JOINTS] = tau_applied
        if gripper is not None:
            d.qpos[self._finger_qpos] = gripper.opening_m / 2
            d.qvel[self._finger_dof] = gripper.speed_m_s / 2
            d.ctrl[self._grip_act] = gripper.finger_target_m
        else:  # hold the fingers where the last prediction left them
            d.ctrl[self._grip_act] = d.qpos[self._finger_qpos[0]]
        mujoco.mj_step(m, d, self.substeps)
        return d.qvel[:N_ARM_JOINTS].copy()


class OnlineEstimator:
    """Feed ``update(q, qd, tau_cmd)`` once per control step, in order; read ``estimate()``."""

    def __init__(self, variant: str = "ur5e", control_dt_s: float = 0.01, config: EstimatorConfig | None = None,
                 track_prediction: bool = False):
        self.config = config or EstimatorConfig()
        self.dt = control_dt_s
        self.model = RobotModel(variant)  # nominal: never corrected
        m = self.model.model
        self.nominal_damping = m.dof_damping[:N_ARM_JOINTS].copy()
        self.nominal_friction = m.dof_frictionloss[:N_ARM_JOINTS].copy()
        self.limit = None
        self._payload = m.body(scene.PAYLOAD_BODY).id
        self._jacp = np.zeros((3, m.nv))
        theta0 = np.zeros(N_PARAMS)
        theta0[SLICES["gain"]] = 1.0
        p0 = np.concatenate([np.full(s.stop - s.start, PRIOR_STD[k]) for k, s in SLICES.items()])
        self.filters = {lat: RLS(theta0, p0, self.config) for lat in self.config.latencies}
        self.residual = {lat: 0.0 for lat in self.config.latencies}
        self._commands: list[np.ndarray] = []
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self.steps = 0
        self.skipped = 0
        self.irregular = 0  # steps whose measured interval was too far from the period to use
        self.cost_s: deque[float] = deque(maxlen=100_000)  # bounded: a node runs for hours
        # One-step-ahead velocity prediction (benchmark only): the nominal model vs the model with
        # the current estimate; errors (rad/s, norm over the 6 joints) per step.
        self.track_prediction = track_prediction
        self.predictor = ModelPredictor(variant, control_dt_s) if track_prediction else None
        self.pred_error = {"nominal": [], "corrected": []}
        self._pred: dict | None = None
        self._pred_inputs: tuple | None = None
        self.estimate_2s: dict | None = None
        self.history: list[dict] = []  # the estimate after every step (tracking only)

    def set_torque_limit(self, limit_nm: np.ndarray) -> None:
        self.limit = np.asarray(limit_nm, dtype=float)

    def regressor(self, q, qd, qdd, tau_cmd) -> tuple[np.ndarray, np.ndarray]:
        """``(Phi (6 x 25), tau_nom (6,))`` at one state."""
        rm, m, d = self.model, self.model.model, self.model.data
        rm.update(q, qd)
        tau_nom = rm.mass_matrix() @ qdd + rm.bias_torque() + self.nominal_damping * qd \
            + self.nominal_friction * np.sign(qd)
        mujoco.mj_jac(m, d, self._jacp, None, d.xipos[self._payload], self._payload)
        jc = self._jacp[:, :N_ARM_JOINTS]
        payload = jc.T @ (jc @ qdd + GRAVITY_UP)
        phi = np.zeros((N_ARM_JOINTS, N_PARAMS))
        rows = np.arange(N_ARM_JOINTS)
        phi[rows, SLICES["gain"].start + rows] = tau_cmd
        phi[rows, SLICES["damping"].start + rows] = -qd
        moving = np.abs(qd) >= self.config.min_speed_for_friction
        phi[rows, SLICES["friction"].start + rows] = -np.sign(qd) * moving
        phi[rows, SLICES["armature"].start + rows] = -qdd
        phi[:, SLICES["payload_kg"].start] = -payload
        return phi, tau_nom

    def update(self, q, qd, tau_cmd, gripper: GripperState | None = None, interval_s: float | None = None,
               learn: bool = True) -> bool:
        """One control step: the measured state after the previous step, and the torque command
        sent now (``gripper``: the gripper's state and command, used by the prediction tracking
        only). ``interval_s``: the time between this measurement and the previous one where it
        is known (a real loop's joint states are not exactly one period apart: the accelerations
        use it; an interval outside [0.5, 2] periods adds no rows). ``learn=False``: the step is
        recorded (state, command) but adds no rows — the estimate holds (the caller knows of
        contact the regressor does not model). Returns False (and changes nothing) for non-finite
        inputs."""
        self.flush_prediction()  # tracking only, before the timed part
        start = time.perf_counter()
        q, qd, tau_cmd = (np.asarray(a, dtype=float) for a in (q, qd, tau_cmd))
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd)) and np.all(np.isfinite(tau_cmd))):
            self.skipped += 1
            return False
        if self.limit is not None:
            tau_cmd = np.clip(tau_cmd, -self.limit, self.limit)
        if self._pred is not None:
            for key, pred in self._pred.items():
                self.pred_error[key].append(float(np.linalg.norm(qd - pred)))
        dt = self.dt if interval_s is None else float(interval_s)
        if self._last is not None and not 0.5 * self.dt <= dt <= 2.0 * self.dt:
            self.irregular += 1
        elif self._last is not None and learn:
            q0, qd0 = self._last
            qdd = (qd - qd0) / dt
            qm, qdm = 0.5 * (q0 + q), 0.5 * (qd0 + qd)
            phi, tau_nom = self.regressor(qm, qdm, qdd, np.zeros(N_ARM_JOINTS))
            rows, gain_cols = np.arange(N_ARM_JOINTS), SLICES["gain"].start + np.arange(N_ARM_JOINTS)
            for lat, rls in self.filters.items():
                if len(self._commands) <= lat + self.config.settle_steps:  # the applied command's index < settle_steps
                    continue
                phi[rows, gain_cols] = self._commands[-1 - lat]  # only the command column differs
                rls.forget()
                restarts = rls.restarts
                err = float(np.sum(rls.update(phi, tau_nom) ** 2))
                if rls.restarts != restarts:  # its record was of the wrong estimate: start level with the best
                    self.residual[lat] = min(v for k, v in self.residual.items() if k != lat) if len(self.residual) > 1 else 0.0
                self.residual[lat] = 0.98 * self.residual[lat] + 0.02 * err
        self._commands.append(tau_cmd)
        del self._commands[:-(max(self.config.latencies) + 2)]
        self._last = (q, qd)
        self.steps += 1
        self.cost_s.append(time.perf_counter() - start)
        if self.track_prediction:
            estimate = self.estimate()
            self.history.append(estimate)
            if self.steps == round(2.0 / self.dt):
                self.estimate_2s = estimate  # before the grasp's contacts (benchmark scoring)
            lat = self.latency_steps
            applied = self._commands[-1 - lat] if len(self._commands) > lat else self._commands[0]
            self._pred_inputs = (q, qd, tau_cmd, applied, estimate, gripper)
        return True

    def flush_prediction(self) -> None:
        """Make the pending one-step predictions (tracking only). ``update`` does it itself when
        needed; a benchmark calls it between control steps so that the prediction's cost stays
        out of the timed control step."""
        if self._pred_inputs is not None:
            q, qd, tau_cmd, applied, estimate, gripper = self._pred_inputs
            self._pred = {"nominal": self.predictor.predict(q, qd, tau_cmd, None, gripper),
                          "corrected": self.predictor.predict(q, qd, applied, estimate, gripper)}
            self._pred_inputs = None

    @property
    def latency_steps(self) -> int:
        ready = [lat for lat in self.config.latencies if self.filters[lat].updates > 0]
        return min(ready, key=lambda lat: self.residual[lat]) if ready else 0

    def estimate(self) -> dict:
        theta = self.filters[self.latency_steps].theta
        out = {k: theta[s].copy() for k, s in SLICES.items()}
        out["payload_kg"] = float(out["payload_kg"][0])
        out["latency_steps"] = self.latency_steps
        return out
