"""Online identification of what the world does differently from the controller's model.

Method: recursive least squares (RLS) on the inverse-dynamics residual. With the nominal
model's inverse dynamics ``tau_nom(q, qd, qdd) = M qdd + bias + d0 qd + f0 sign(qd)``, the world
obeys (per joint j, before contact)

    tau_nom_j = g_j tau_cmd_j(t - L) - dd_j qd_j - df_j sign(qd_j) - da_j qdd_j - m Y_j(q, qdd)

which is linear in theta = (motor gains g, extra damping dd, extra friction loss df, extra
armature da, payload mass m): 4 x 6 + 1 = 25 parameters. ``Y = J_c^T (J_c qdd + g_up)`` is the
torque a 1 kg point mass at the payload body's centre of mass needs (J_c: its translational
Jacobian; velocity-product terms dropped). One control step (10 ms: the torque is held over it)
gives 6 rows.

Filtered regressor (the default, ``filter_hz``): both sides of that equation go through the same
low-pass (:class:`LowPass`, critically damped, 4 Hz), the dynamics in momentum form
(``M qdd + C qd = d/dt(M qd) - Mdot qd + C qd``), so the filtered accelerations are the low-pass's
derivative state of the momentum and of ``qd``: no measured velocity is differentiated. Measured
velocities are noisy (the realistic task: 0.01 rad/s per joint, 1.4 rad/s^2 of finite-difference
acceleration noise at 10 ms), and with finite differences the estimate is then worse than the
nominal model (tests/test_sim2real_worlds.py). ``filter_hz=None``: the unfiltered regressor,
evaluated at the interval's midpoint with ``qdd = (qd(t+1) - qd(t)) / dt``: better with
noise-free velocities (in the in-class shifted world, noise-free, its one-step prediction is
~60x better than the nominal model's against ~9x filtered, and the latency is identified far
more often: a one-period delay is a high-frequency difference the low-pass removes with the
noise), so choose it only for sensors with well under 1e-3 rad/s of velocity noise.

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
prior holds it near nominal, and its estimate should not be trusted. The low-pass costs the
latency candidates their contrast: with it the latency is often misidentified (see above).
Cost per step: one model evaluation (mass matrix, bias, payload Jacobian), the low-passes, and
three 25-parameter block updates.

How good the estimate is gets measured by prediction (:class:`ModelPredictor`, benchmark only):
the controller's MuJoCo model, nominal or with the estimate written in, is stepped over one
control period exactly as the world is, and its joint velocities are compared with the measured
ones at the next step.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import mujoco
import numpy as np

from ds_robot.control.robot_model import RobotModel
from ds_robot.errors import ConfigError
from ds_robot.model.params import N_ARM_JOINTS
from ds_robot.sim import scene

GRAVITY_UP = np.array([0.0, 0.0, 9.81])
N_PARAMS = 4 * N_ARM_JOINTS + 1
SLICES = {"gain": slice(0, 6), "damping": slice(6, 12), "friction": slice(12, 18), "armature": slice(18, 24),
          "payload_kg": slice(24, 25)}
_ROWS = np.arange(N_ARM_JOINTS)
_GAIN_COLS = SLICES["gain"].start + _ROWS
# the filtered regressor's per-joint columns (damping, friction, armature), in one index
_DIAG_ROWS = np.tile(_ROWS, 3)
_DIAG_COLS = np.concatenate([SLICES[k].start + _ROWS for k in ("damping", "friction", "armature")])
# Prior standard deviations (per joint where a list), from what is published about arms of this
# class, not from the simulated worlds' ranges:
# - gain 0.2: the current-to-torque path of a joint: a servo motor's torque constant has a +-10%
#   datasheet tolerance (e.g. Beckhoff AM8100 technical data) and drops 0.1-0.2 %/K with magnet
#   temperature (FANUC alpha-i descriptions, B-65262EN/03 sec. 3), and a harmonic drive's efficiency
#   moves with load, speed and temperature (Harmonic Drive CSD-2A engineering data, sec. 4.3.1:
#   78% at rated torque, 73% at 57% of it);
# - damping (N m s/rad) and friction (N m): the friction a torque command meets on a UR e-Series
#   is what the controller's own compensation leaves: by default it compensates 80-90% of the
#   viscous and 70-80% of the Coulomb friction (ur_msgs/FrictionModelParameters, docs.ros.org,
#   the UR ROS 2 driver's defaults), of joint friction identified on a UR10e at fv 21/20/10/3.6/2.5/3.0
#   N m s/rad and fc 12.6/13.3/5.0/2.0/2.7/2.3 N m (Mamedov et al., Front. Robot. AI 2020; code
#   shamilmamedov/dynamic_calibration, UR10E_parameters.txt; the UR5e's joints are a size smaller,
#   so these are an upper side): 10-20% and 20-30% of those;
# - armature 0.08 kg m^2 and payload 0.4 kg: no public per-unit source found (the payload's range is
#   the tool's, not the 5 kg rated payload: a datasheet-wide payload prior was measured worse, BENCHMARKS.md).
PRIOR_STD = {"gain": 0.2, "damping": [3.0, 3.0, 2.0, 0.7, 0.5, 0.6], "friction": [3.0, 3.0, 1.5, 0.6, 0.8, 0.7],
             "armature": 0.08, "payload_kg": 0.4}
# The object in the hand (``OnlineEstimator.load``): from nothing to the arm's rated payload
# (UR5e: 5 kg, UR5e datasheet), so a wide prior around 0.
LOAD_PRIOR_STD_KG = 1.5


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
    # Cut-off of the regressor's low-pass (Hz; see LowPass). None: the unfiltered regressor, with
    # finite-difference accelerations (exact without noise, badly biased at 0.01 rad/s of noise).
    filter_hz: float | None = 4.0
    # True: while the gripper holds something (``update(..., holding=True)``) the arm's parameters
    # hold and the load is a parameter of its own (``load``), instead of contact and the object's
    # weight being absorbed by the arm's gains and payload. Measured (shifted world, realistic test
    # set, 30 episodes each): the arm's end-of-episode errors halve (hier: gain 0.42 -> 0.24, payload
    # 1.01 -> 0.44 kg; scripted: 0.35 -> 0.21, 1.00 -> 0.40 kg) and the load ends near the object's
    # mass, but success does not follow (hier 0.933 -> 0.967, scripted 0.767 -> 0.733) and on the
    # shifted PyBullet world one grasp is lost (76 J success -> 163 J failure): off by default.
    separate_load: bool = False

    def __post_init__(self):
        if self.filter_hz is not None and not (math.isfinite(self.filter_hz) and self.filter_hz > 0):
            raise ConfigError(f"estimator filter_hz must be a positive frequency (or None: no filter), got {self.filter_hz!r}")


def _gate(theta: np.ndarray, P: np.ndarray, phi: np.ndarray, y: np.ndarray, r: float, sigma: float):
    """Filters stacked on the first axis: a-priori innovations ``(L, k)``, ``phi P`` ``(L, k, n)``,
    and which rows pass the innovation gate ``(L, k)``."""
    e = y - (phi @ theta[:, :, None])[:, :, 0]
    ph = phi @ P
    return e, ph, e * e <= (sigma ** 2) * ((ph * phi).sum(axis=2) + r)


class RLSBank:
    """RLS filters with the same prior (one per latency candidate) stacked in one array each, so
    that one step's updates of all of them are one set of batched NumPy operations: forgetting,
    innovation gating (a gated row is zeroed, which removes it exactly), the block update, and
    the restart rule's record of rejected rows (a ring buffer per filter).
    ``filters[i]`` (:class:`RLS`) are the filters themselves, living in the stack."""

    def __init__(self, count: int, theta0: np.ndarray, p0_std: np.ndarray, config: EstimatorConfig,
                 members: bool = True):
        n = len(theta0)
        self.theta, self.P = np.empty((count, n)), np.empty((count, n, n))
        self.P0_diag = p0_std.astype(float) ** 2
        self.config = config
        self._all = np.arange(count)
        # Per filter: rows rejected and steps with a row accepted (totals), and the rejections of
        # the last restart_window_steps steps per row (ring buffer, its running sum, steps recorded).
        self.rejected, self.updates = np.zeros(count, dtype=int), np.zeros(count, dtype=int)
        self._window: np.ndarray | None = None  # (count, window, rows): sized by the first update
        self._recent = np.zeros((count, 1), dtype=int)
        self._recorded = np.zeros(count, dtype=int)
        self.filters = [RLS(theta0, p0_std, config, self, i) for i in range(count)] if members else []

    def clear_record(self, i: int) -> None:
        """Filter ``i``'s window of rejections starts empty (a restart)."""
        if self._window is not None:
            self._window[i] = False
        self._recent[i] = 0
        self._recorded[i] = 0

    def record_rejections(self, which: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Count one step's gated rows ``keep (len(which), k)``; which of the filters must restart
        (most of a joint's rows rejected over a full window)."""
        window = self.config.restart_window_steps
        bad = ~keep
        if self._window is None or self._window.shape[2] != bad.shape[1]:
            self._window = np.zeros((len(self._all), window, bad.shape[1]), dtype=bool)
            self._recent = np.zeros((len(self._all), bad.shape[1]), dtype=int)
            self._recorded[:] = 0
        slot = self._recorded[which] % window
        self.rejected[which] += bad.sum(axis=1)
        cells = (self._all[which], slot)  # each filter's oldest entry
        self._recent[which] += bad.astype(int) - self._window[cells]
        self._window[cells] = bad
        self._recorded[which] += 1
        return (self._recorded[which] >= window) & (2 * self._recent[which] > window).any(axis=1)

    def _select(self, which: np.ndarray) -> np.ndarray | slice:
        """``which`` (increasing indices) as an index: a slice when it is every filter (the
        estimator's usual step; basic indexing instead of gathering copies)."""
        return slice(None) if len(which) == len(self._all) else which

    def forget(self, which: np.ndarray) -> None:
        """Exponential forgetting, bounded: no parameter's variance may grow past its prior's
        (otherwise an unexcited direction winds up and then jumps on the next disturbance); the
        covariances kept symmetric."""
        which = self._select(which)
        P = self.P[which]
        P = (0.5 / self.config.forgetting) * (P + P.transpose(0, 2, 1))
        ratio = np.diagonal(P, axis1=1, axis2=2) / self.P0_diag
        if (ratio > 1.0).any():
            scale = np.where(ratio > 1.0, 1.0 / np.sqrt(np.maximum(ratio, 1e-300)), 1.0)
            P *= scale[:, :, None] * scale[:, None, :]
        self.P[which] = P

    def update(self, which: np.ndarray, phi: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Filters ``which`` (increasing indices), their rows ``phi (len(which), k, n)``, the shared
        measurements ``y (k,)``; returns their a-priori innovations ``(len(which), k)``, all rows."""
        cfg, r = self.config, self.config.noise_std_nm ** 2
        which = self._select(which)
        theta, P = self.theta[which], self.P[which]
        e, ph, keep = _gate(theta, P, phi, y, r, cfg.outlier_sigma)
        restart = self.record_rejections(which, keep)
        for row in np.flatnonzero(restart):  # the restart rule per filter (rare)
            i = self._all[which][row]
            self.filters[i].restart()
            theta[row], P[row] = self.theta[i], self.P[i]
            e_i, ph_i, keep_i = _gate(theta[row:row + 1], P[row:row + 1], phi[row:row + 1], y, r, cfg.outlier_sigma)
            e[row], ph[row], keep[row] = e_i[0], ph_i[0], keep_i[0]
        mask = keep[:, :, None]
        phi_k, ph_k = phi * mask, ph * mask
        s = ph_k @ phi_k.transpose(0, 2, 1)
        s[:, np.arange(s.shape[1]), np.arange(s.shape[1])] += r
        gain_t = np.linalg.solve(s, ph_k)  # (P phi^T S^-1)^T
        self.theta[which] = theta + ((e * keep)[:, None, :] @ gain_t)[:, 0]
        self.P[which] = P - gain_t.transpose(0, 2, 1) @ ph_k
        self.updates[which] += keep.any(axis=1)
        return e

    def step(self, which: np.ndarray, phi: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Forget, then update (one control step)."""
        self.forget(which)
        return self.update(which, phi, y)


class RLS:
    """One RLS filter with forgetting, a prior and innovation gating; the 6 rows of one step in
    one block update (rows whose innovation fails the gate are dropped first). Its arithmetic and
    its record of rejected rows are its :class:`RLSBank`'s (a bank of one when built alone)."""

    def __init__(self, theta0: np.ndarray, p0_std: np.ndarray, config: EstimatorConfig,
                 bank: RLSBank | None = None, index: int = 0):
        if bank is None:
            bank = RLSBank(1, theta0, p0_std, config, members=False)
            bank.filters.append(self)
        self._bank, self._index = bank, np.array([index])
        self.theta, self.P = bank.theta[index], bank.P[index]  # views into the stack: updated in place only
        self.P0_diag = bank.P0_diag
        self.theta0 = theta0.astype(float).copy()
        self.theta[:] = self.theta0
        self.P[:] = np.diag(self.P0_diag)
        self.config = config
        self.restarts = 0

    @property
    def rejected(self) -> int:
        """Rows gated out so far."""
        return int(self._bank.rejected[self._index[0]])

    @property
    def updates(self) -> int:
        """Steps in which at least one row was accepted."""
        return int(self._bank.updates[self._index[0]])

    def restart(self) -> None:
        self.theta[:] = self.theta0
        self.P[:] = np.diag(self.P0_diag)
        self._bank.clear_record(self._index[0])
        self.restarts += 1

    def update(self, phi: np.ndarray, y: np.ndarray) -> np.ndarray:
        """One block of rows ``phi (k x n)``, measurements ``y (k,)``; returns the a-priori
        innovations (all rows, gated or not)."""
        return self._bank.update(self._index, phi[None], y)[0]

    def forget(self) -> None:
        self._bank.forget(self._index)


class LowPass:
    """A critically damped second-order low-pass (natural frequency ``w = 2 pi f``, both poles at
    ``-w``) on many channels at once, with its state ``(y, y')``: the filtered signal and the
    filtered signal's derivative, so a filtered velocity comes with a filtered acceleration and no
    finite difference. Discretised exactly for an input held over each interval:
    ``exp(A T) = e^{-wT} [[1 + wT, T], [-w^2 T, 1 - wT]]``, ``B_d = [1 - e^{-wT}(1 + wT), w^2 T e^{-wT}]``
    (a held input ``u`` is a fixed point at ``(u, 0)``). Any interval length may be passed (time
    stamps of a real loop)."""

    def __init__(self, cutoff_hz: float):
        if not (math.isfinite(cutoff_hz) and cutoff_hz > 0):
            raise ConfigError(f"estimator filter_hz must be a positive frequency (or None: no filter), got {cutoff_hz!r}")
        self.w = 2.0 * math.pi * cutoff_hz
        self.y: np.ndarray | None = None
        self.dy: np.ndarray | None = None
        self._cache: dict[float, tuple[float, float, float, float, float, float]] = {}

    def reset(self, u: np.ndarray) -> None:
        """At rest at ``u`` (as if held there for ever)."""
        self.y, self.dy = np.array(u, dtype=float), np.zeros(np.shape(u))

    def _coefficients(self, dt: float) -> tuple[float, float, float, float, float, float]:
        key = round(dt, 5)  # 10 us: stamped intervals jitter; a few cached discretisations
        if key not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            w, t = self.w, key
            e = math.exp(-w * t)
            self._cache[key] = (e * (1 + w * t), e * t, -e * w * w * t, e * (1 - w * t), 1 - e * (1 + w * t), e * w * w * t)
        return self._cache[key]

    def step(self, u: np.ndarray, dt: float) -> None:
        """``u`` held over the next ``dt`` seconds."""
        a11, a12, a21, a22, b1, b2 = self._coefficients(dt)
        y, dy = self.y, self.dy
        self.y, self.dy = a11 * y + a12 * dy + b1 * u, a21 * y + a22 * dy + b2 * u


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
        m.body_mass[self._payload] = (self._payload_mass + max(float(estimate["payload_kg"]), 0.0)
                                      + max(float(estimate.get("load_kg", 0.0)), 0.0))

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

    def rollout(self, q, qd, commands, estimate: dict | None, gripper: GripperState | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Joint positions and velocities after ``len(commands)`` control steps, each command held
        for one step, oldest first (the commands already sent and not yet in force, when the
        loop has latency). No commands: ``(q, qd)`` as given."""
        q, qd = np.asarray(q, dtype=float), np.asarray(qd, dtype=float)
        if not len(commands):
            return q.copy(), qd.copy()
        d = self.data
        for i, tau in enumerate(commands):
            if i == 0:
                self.predict(q, qd, tau, estimate, gripper)
            else:  # on from where the last step left the model (fingers included)
                d.ctrl[:N_ARM_JOINTS] = tau
                mujoco.mj_step(self.model, d, self.substeps)
        return d.qpos[:N_ARM_JOINTS].copy(), d.qvel[:N_ARM_JOINTS].copy()


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
        self._mass, self._bias = np.zeros((m.nv, m.nv)), np.zeros(m.nv)
        theta0 = np.zeros(N_PARAMS)
        theta0[SLICES["gain"]] = 1.0
        p0 = np.concatenate([np.broadcast_to(np.asarray(PRIOR_STD[k], dtype=float), (s.stop - s.start,))
                             for k, s in SLICES.items()])
        self.bank = RLSBank(len(self.config.latencies), theta0, p0, self.config)
        self.filters = dict(zip(self.config.latencies, self.bank.filters, strict=True))
        # the load in the hand: a point mass on the payload column, on the residual of the arm's
        # estimate (which holds meanwhile); restarted at every new hold
        self.load = RLS(np.zeros(1), np.array([LOAD_PRIOR_STD_KG]), self.config)
        self.holding = False
        self.residual = {lat: 0.0 for lat in self.config.latencies}
        self._commands: list[np.ndarray] = []
        # The filtered regressor (config.filter_hz): one low-pass over the momentum-form signals (_sample),
        # one over the command, and the filtered commands of the last steps (one per latency).
        hz = self.config.filter_hz
        self._lowpass = None if hz is None else LowPass(hz)
        self._command_lowpass = None if hz is None else LowPass(hz)
        self._filtered_commands: list[np.ndarray] = []
        self._filter_start: np.ndarray | None = None  # the command at the filters' start
        self._filter_sample: np.ndarray | None = None  # the last measurement's _sample()
        self._filtered_count = 0
        # Steps of filter transient not used: about one time constant past the command's settle
        # steps (the start's torque step is smoothed, not removed, by the filter).
        self._settle_filtered = 0 if hz is None else self.config.settle_steps + math.ceil(1.0 / (2 * math.pi * hz * control_dt_s))
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
        self.pred_error_true = {"nominal": [], "corrected": []}  # from the true state (flush_prediction)
        self._pred: dict | None = None
        self._pred_inputs: tuple | None = None
        self.estimate_2s: dict | None = None
        self.history: list[dict] = []  # the estimate after every step (tracking only)

    def set_torque_limit(self, limit_nm: np.ndarray) -> None:
        self.limit = np.asarray(limit_nm, dtype=float)

    def regressor(self, q, qd, qdd, tau_cmd, friction_signs: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``(Phi (6 x 25), tau_nom (6,))`` at one state. ``friction_signs``: the friction terms'
        ``(sign(qd), sign(qd) where |qd| >= min_speed_for_friction)`` where they are not those of
        ``qd`` itself (the filtered regressor passes the filtered signs)."""
        m, d = self.model.model, self.model.data
        mass, bias = self._dynamics(q, qd)
        if friction_signs is None:
            friction_signs = np.sign(qd), np.sign(qd) * (np.abs(qd) >= self.config.min_speed_for_friction)
        sign, sign_moving = friction_signs
        tau_nom = mass @ qdd + bias + self.nominal_damping * qd + self.nominal_friction * sign
        mujoco.mj_jac(m, d, self._jacp, None, d.xipos[self._payload], self._payload)
        jc = self._jacp[:, :N_ARM_JOINTS]
        payload = jc.T @ (jc @ qdd + GRAVITY_UP)
        phi = np.zeros((N_ARM_JOINTS, N_PARAMS))
        rows = np.arange(N_ARM_JOINTS)
        phi[rows, SLICES["gain"].start + rows] = tau_cmd
        phi[rows, SLICES["damping"].start + rows] = -qd
        phi[rows, SLICES["friction"].start + rows] = -sign_moving
        phi[rows, SLICES["armature"].start + rows] = -qdd
        phi[:, SLICES["payload_kg"].start] = -payload
        return phi, tau_nom

    def update(self, q, qd, tau_cmd, gripper: GripperState | None = None, interval_s: float | None = None,
               learn: bool = True, holding: bool = False) -> bool:
        """One control step: the measured state after the previous step, and the torque command
        sent now (``gripper``: the gripper's state and command, used by the prediction tracking
        only). ``interval_s``: the time between this measurement and the previous one where it
        is known (a real loop's joint states are not exactly one period apart: the accelerations
        use it; an interval outside [0.5, 2] periods adds no rows). ``learn=False``: the step is
        recorded (state, command) but adds no rows — the estimate holds (the caller knows of
        contact the regressor does not model). ``holding``: the gripper holds something; with
        ``separate_load`` its rows go to the load, not to the arm. Returns False (and changes
        nothing) for non-finite inputs."""
        self.flush_prediction()  # tracking only, before the timed part
        start = time.perf_counter()
        q, qd, tau_cmd = (np.asarray(a, dtype=float) for a in (q, qd, tau_cmd))
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd)) and np.all(np.isfinite(tau_cmd))):
            self.skipped += 1
            return False
        if self.limit is not None:
            tau_cmd = np.clip(tau_cmd, -self.limit, self.limit)
        holding = bool(holding) and self.config.separate_load
        if holding and not self.holding:  # a new hold: whatever was held before is not this
            self.load.restart()
        self.holding = holding
        if self._pred is not None:
            for key, pred in self._pred.items():
                self.pred_error[key].append(float(np.linalg.norm(qd - pred)))
        dt = self.dt if interval_s is None else float(interval_s)
        rows_ready = self._last is not None
        if rows_ready and not 0.5 * self.dt <= dt <= 2.0 * self.dt:
            self.irregular += 1
            rows_ready = False
            self._filter_start, self._filtered_commands = None, []  # the filters' history no longer fits: start again
        if self._lowpass is not None:
            rows_ready = self._step_filters(q, qd, dt) and rows_ready
        if rows_ready and learn:
            if self._lowpass is None:  # finite differences over the interval, at its midpoint
                q0, qd0 = self._last
                qm, qdm, qdd = 0.5 * (q0 + q), 0.5 * (qd0 + qd), (qd - qd0) / dt
                phi, tau_nom = self.regressor(qm, qdm, qdd, np.zeros(N_ARM_JOINTS))
                commands, count, settle = self._commands, self.steps, self.config.settle_steps
            else:  # both sides of the dynamics through the same low-pass (see _step_filters)
                phi, tau_nom = self._filtered_regressor()
                commands, count, settle = self._filtered_commands, self._filtered_count, self._settle_filtered
            # the applied command's index < settle steps: that candidate adds no rows yet
            which = [i for i, lat in enumerate(self.config.latencies) if count > lat + settle]
            if holding:
                lat = self.latency_steps
                if count > lat + settle:
                    self._update_load(phi, tau_nom, commands[-1 - lat], self.filters[lat].theta)
            elif which:
                phis = np.repeat(phi[None], len(which), axis=0)
                # only the command column differs: each candidate's applied command
                phis[:, _ROWS, _GAIN_COLS] = [commands[-1 - self.config.latencies[i]] for i in which]
                restarts = [self.bank.filters[i].restarts for i in which]
                errors = np.sum(self.bank.step(np.array(which), phis, tau_nom) ** 2, axis=1)
                for row, i in enumerate(which):
                    lat = self.config.latencies[i]
                    if self.bank.filters[i].restarts != restarts[row]:  # its record was of the wrong estimate: start level with the best
                        self.residual[lat] = min(v for k, v in self.residual.items() if k != lat) if len(self.residual) > 1 else 0.0
                    self.residual[lat] = 0.98 * self.residual[lat] + 0.02 * float(errors[row])
        self._commands.append(tau_cmd)
        del self._commands[:-(max(self.config.latencies) + 2)]
        if self._lowpass is not None and self._filter_start is None:
            self._filter_start, self._filter_sample = tau_cmd, self._sample(q, qd)  # they start at the next step
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

    def _update_load(self, phi: np.ndarray, tau_nom: np.ndarray, command: np.ndarray, theta: np.ndarray) -> None:
        """The load's rows: what the arm's (held) estimate leaves unexplained, on the payload
        column (a mass at the gripper's centre of mass, the object between the pads near it)."""
        rows = np.arange(N_ARM_JOINTS)
        phi = phi.copy()
        phi[rows, SLICES["gain"].start + rows] = command
        column = SLICES["payload_kg"]
        self.load.forget()
        self.load.update(phi[:, column], tau_nom - phi @ theta)

    def _sample(self, q, qd) -> np.ndarray:
        """What the filtered regressor needs of one measurement, in one vector (6 each): the
        momentum ``M(q) qd``, the bias torque with the nominal damping and friction, ``qd``, the
        friction columns' sign, and for the 1 kg payload ``M_p qd`` and its gravity torque, plus
        the raveled ``M`` and ``M_p`` (for their rates of change)."""
        mass, bias = self._dynamics(q, qd)
        m, d = self.model.model, self.model.data
        sign = np.sign(qd)
        moving = sign * (np.abs(qd) >= self.config.min_speed_for_friction)
        bias = bias + self.nominal_damping * qd + self.nominal_friction * sign
        mujoco.mj_jac(m, d, self._jacp, None, d.xipos[self._payload], self._payload)
        jc = self._jacp[:, :N_ARM_JOINTS]
        mass_p = jc.T @ jc
        return np.concatenate([mass @ qd, bias, qd, moving, mass_p @ qd, jc.T @ GRAVITY_UP, mass.ravel(), mass_p.ravel()])

    def _dynamics(self, q, qd) -> tuple[np.ndarray, np.ndarray]:
        """``M(q)`` and the bias torque ``C(q, qd) qd + g(q)`` of the arm (fingers closed, at rest),
        by the MuJoCo stages they need (kinematics, composite inertia, recursive Newton-Euler)
        rather than a whole ``mj_forward`` (collisions, constraints, actuation): the same values,
        in less time (test_sim2real)."""
        m, d = self.model.model, self.model.data
        d.qpos[:] = m.qpos0
        d.qvel[:] = 0.0
        d.qpos[:N_ARM_JOINTS], d.qvel[:N_ARM_JOINTS] = q, qd
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_crb(m, d)
        mujoco.mj_fullM(m, d, self._mass)
        mujoco.mj_comVel(m, d)
        mujoco.mj_rne(m, d, 0, self._bias)
        return self._mass[:N_ARM_JOINTS, :N_ARM_JOINTS].copy(), self._bias[:N_ARM_JOINTS].copy()

    def _step_filters(self, q, qd, dt) -> bool:
        """Advance the low-passes over the interval that just ended, with the momentum form of
        the dynamics, ``M qdd + C qd = d/dt (M qd) - Mdot qd + C qd``: the momentum goes through the
        low-pass and its filtered derivative is the low-pass's own derivative state, so no measured
        velocity is differentiated. Inputs held over the interval: the mean of its two measurements
        (``Mdot`` from their difference), and the command sent at its start, as the motors hold it.
        False while the filters are starting (their first interval after a start or a gap)."""
        f, cmd_f = self._lowpass, self._command_lowpass
        if self._filter_start is None:
            return False
        sample = self._sample(q, qd)
        if not self._filtered_commands:  # at rest at the first measurement, the command held before
            first = self._filter_sample
            f.reset(self._interval_input(first, first, dt))
            cmd_f.reset(self._filter_start)
            self._filtered_commands, self._filtered_count = [cmd_f.y.copy()], 1
        f.step(self._interval_input(self._filter_sample, sample, dt), dt)
        self._filter_sample = sample
        cmd_f.step(self._commands[-1], dt)
        self._filtered_commands.append(cmd_f.y.copy())
        self._filtered_count += 1
        del self._filtered_commands[:-(max(self.config.latencies) + 2)]
        return True

    @staticmethod
    def _interval_input(s0: np.ndarray, s1: np.ndarray, dt: float) -> np.ndarray:
        """The filters' input over one interval from the samples at its ends: momentum, bias
        ``- Mdot qd``, qd, friction sign, payload momentum, payload gravity ``- Mdot_p qd``."""
        n = N_ARM_JOINTS
        mid = 0.5 * (s0 + s1)
        qd = mid[2 * n:3 * n]
        mdot = (s1[6 * n:6 * n + n * n] - s0[6 * n:6 * n + n * n]).reshape(n, n) / dt
        mdot_p = (s1[6 * n + n * n:] - s0[6 * n + n * n:]).reshape(n, n) / dt
        out = mid[:6 * n].copy()
        out[n:2 * n] -= mdot @ qd
        out[5 * n:6 * n] -= mdot_p @ qd
        return out

    def _filtered_regressor(self) -> tuple[np.ndarray, np.ndarray]:
        """``(Phi, tau_nom)`` of the filtered dynamics (the command column left to the caller)."""
        n, f = N_ARM_JOINTS, self._lowpass
        y, dy = f.y, f.dy
        phi = np.zeros((n, N_PARAMS))
        # damping: filtered qd; friction: filtered sign; armature: filtered qdd (all negated)
        phi[_DIAG_ROWS, _DIAG_COLS] = -np.concatenate([y[2 * n:4 * n], dy[2 * n:3 * n]])
        phi[:, SLICES["payload_kg"].start] = -(dy[4 * n:5 * n] + y[5 * n:6 * n])
        return phi, dy[:n] + y[n:2 * n]

    def flush_prediction(self, truth: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """Make the pending one-step predictions (tracking only). ``update`` does it itself when
        needed; a benchmark calls it between control steps so that the prediction's cost stays
        out of the timed control step. ``truth``: a simulated world's true ``(q, qd)`` at the
        last measurement and true ``qd`` one step later (scoring only: the controller never sees
        it): the same two models then also predict from the true state, and their errors against
        the true next velocities go into ``pred_error_true`` — the models' error without the
        sensor noise, which bounds the measured one from below (with 0.01 rad/s per joint, a
        perfect model's measured error is about 0.035 rad/s)."""
        if self._pred_inputs is not None:
            q, qd, tau_cmd, applied, estimate, gripper = self._pred_inputs
            self._pred = {"nominal": self.predictor.predict(q, qd, tau_cmd, None, gripper),
                          "corrected": self.predictor.predict(q, qd, applied, estimate, gripper)}
            if truth is not None:
                q_true, qd_true, qd_next = (np.asarray(a, dtype=float) for a in truth)
                for key, (command, model) in (("nominal", (tau_cmd, None)), ("corrected", (applied, estimate))):
                    pred = self.predictor.predict(q_true, qd_true, command, model, gripper)
                    self.pred_error_true[key].append(float(np.linalg.norm(qd_next - pred)))
            self._pred_inputs = None

    @property
    def latency_steps(self) -> int:
        ready = [lat for lat in self.config.latencies if self.filters[lat].updates > 0]
        return min(ready, key=lambda lat: self.residual[lat]) if ready else 0

    def relative_std(self) -> dict:
        """Each parameter's posterior standard deviation over its prior's (1: nothing learnt about
        it; 0: known exactly), in the chosen latency's filter."""
        rls = self.filters[self.latency_steps]
        rel = np.sqrt(np.maximum(rls.P.diagonal(), 0.0) / rls.P0_diag)
        return {k: rel[s] for k, s in SLICES.items()}

    def estimate(self) -> dict:
        latency = self.latency_steps
        theta = self.filters[latency].theta
        out = {k: theta[s].copy() for k, s in SLICES.items()}
        out["payload_kg"] = float(out["payload_kg"][0])
        out["latency_steps"] = latency
        out["load_kg"] = float(self.load.theta[0]) if self.holding else 0.0
        return out
