"""Online correction: the estimator runs beside a model-based controller and its estimates go
into the controller's MuJoCo model while the loop runs.

Each control step (:meth:`CorrectedController.act`):

1. the current estimate, clipped to physically plausible ranges, is written into the
   controller's ``RobotModel``: payload mass on the gripper body, armature per joint (both
   change M(q) and the bias torques the computed-torque law uses);
2. the wrapped controller computes its command on that model;
3. the command is corrected for what the model's torque law does not contain: the extra
   damping and friction are added (``+ dd qd + df sign(qd)``) and the result divided by the
   estimated motor gain, as far as the data have told it (:meth:`CorrectedController.gain_to_apply`);
4. the estimator is fed the measured state and the command actually sent. It keeps learning
   while the gripper closes on and holds the object: contact and the object's load are not in
   its regressor, so from then on the estimate is no longer the arm's physics alone (payload
   and gains absorb the load) — but it is what the controller needs to carry the object.
   ``hold_while_grasping=True`` freezes the estimate while the gripper command is > 0
   instead: cleaner parameters, worse grasps (measured on 200 shifted-world episodes:
   3 failures against 1, two of them with objects 1.8x heavier than nominal that were not
   lifted, and one 705 J shaking episode).

Correction starts after ``warmup_steps`` (the estimate needs some motion first). The
identified latency is compensated (``compensate_latency``, on by default; :meth:`CorrectedController.ahead`):
a command sent now acts ``L`` steps later, so the wrapped controller is shown the joint state
the corrected model predicts for then, rolled forward from the measurement under the ``L``
commands already in flight (a Smith predictor). Only a latency the data are clear about is
compensated (:meth:`CorrectedController.latency_to_compensate`): under velocity noise the
estimator names 1 or 2 steps in most steps of a world without latency, and compensating that
cost nominal-world grasps. Measured by ``bench sim2real`` (60 realistic test-set episodes per
row; BENCHMARKS.md, part 4), hier with correction, on the same code and episodes
(``--no-latency-compensation`` for the first column), success / energy / one-step prediction
ratio from the true state (1.5-2 s):

=============  ========================  ===========================
world          no compensation           gated compensation (shipped)
=============  ========================  ===========================
nominal        0.983 / 40 J              0.983 / 40 J
shifted        0.867 / 111 J / 5.48x     0.900 / 50 J / 3.89x
unmodelled     0.883 / 93 J / 4.07x      0.950 / 44 J / 3.21x
pybullet       0.967 / 257 J / 3.15x     0.983 / 53 J / 3.14x
=============  ========================  ===========================

Ungated (part 3, older code): nominal 0.967 / 58 J, and ratios of 2.92x / 2.68x on unmodelled /
pybullet.
Cost per step: the estimator's update plus a few NumPy operations (``cost_s``), and ``L``
control periods of the arm model's ``mj_step`` for the compensation.
"""

from __future__ import annotations

import math
import time
from collections import deque

import numpy as np

from ds_robot.control.contract import Controller
from ds_robot.control.robot_model import RobotModel
from ds_robot.envs.layout import OBS_SLICES, QD_SCALE, ObservationLayout
from ds_robot.errors import ConfigError
from ds_robot.model.params import default_description
from ds_robot.sim.scene import PAYLOAD_BODY
from ds_robot.sim2real.estimator import EstimatorConfig, GripperState, ModelPredictor, OnlineEstimator

# the load in the hand up to the UR5e's rated payload, 5 kg (UR5e datasheet)
PLAUSIBLE = {"gain": (0.75, 1.3), "payload_kg": (0.0, 1.0), "load_kg": (0.0, 5.0)}
# Holding: the fingers commanded further closed than they are by at least HOLD_SQUEEZE_M each
# (they press on something: a grip force is a position target inside the object) and stopped at
# least HOLD_MIN_OPENING_M apart (fully closed on nothing is a miss)
HOLD_MIN_OPENING_M, HOLD_SQUEEZE_M = 0.004, 0.001
# A latency is compensated only while its filter explains the data this many times better than the
# zero-latency one (exponentially weighted squared residuals, OnlineEstimator.residual)
LATENCY_EVIDENCE_RATIO = 1.25


def check_latency_evidence_ratio(ratio: float) -> float:
    """``ratio`` if it can be a latency evidence ratio (finite, >= 1), else ``ConfigError``."""
    if not (isinstance(ratio, int | float) and math.isfinite(ratio) and ratio >= 1.0):
        raise ConfigError(f"latency_evidence_ratio must be a finite ratio >= 1 (1: compensate whatever latency is "
                          f"identified), got {ratio!r}")
    return float(ratio)


class CorrectedController(Controller):
    """``controller`` under online correction: it must declare the ``robot_model`` it computes
    its torques with (the scripted and hierarchical controllers do; a model-free one cannot be
    corrected: ``ConfigError``)."""

    def __init__(self, controller: Controller, variant: str = "ur5e", control_dt_s: float = 0.01, torque_limit_nm=None,
                 warmup_steps: int = 50, config: EstimatorConfig | None = None, track_prediction: bool = False,
                 hold_while_grasping: bool = False, command_limit_nm=None, compensate_latency: bool = True,
                 latency_evidence_ratio: float = LATENCY_EVIDENCE_RATIO):
        self.inner = controller
        self.name = f"{controller.name}+correction"
        self.variant, self.control_dt_s = variant, control_dt_s
        self.config = config
        self.limit = np.asarray(torque_limit_nm, dtype=float)  # action 1.0 = this torque
        # What the command is clipped to downstream, if tighter (a ROS node's max_torque_fraction):
        # the estimator must see the torque that reaches the motors.
        self.command_limit = self.limit if command_limit_nm is None else np.minimum(self.limit, command_limit_nm)
        self.warmup_steps = warmup_steps
        self.hold_while_grasping = hold_while_grasping
        self.track_prediction = track_prediction
        self.compensate_latency = compensate_latency
        self.latency_evidence_ratio = check_latency_evidence_ratio(latency_evidence_ratio)
        self._sent: deque[np.ndarray] = deque(maxlen=8)  # the last commands sent (N m), newest last
        self._ahead: ModelPredictor | None = None  # the model the latency compensation rolls forward
        gripper = default_description().gripper
        self._finger_travel_m = gripper.finger_travel_m
        self.layout = ObservationLayout(self.limit, gripper.max_opening_m)
        if controller.robot_model is None:
            raise ConfigError(f"the {controller.name} controller computes its torques without a model of the arm: "
                              "there is nothing for the online correction to correct (use hier or scripted)")
        self.model = controller.robot_model.model
        self._payload = self.model.body(PAYLOAD_BODY).id
        self._nominal = {"armature": self.model.dof_armature[:6].copy(), "payload": float(self.model.body_mass[self._payload])}
        self.cost_s: deque[float] = deque(maxlen=100_000)  # bounded: a node runs for hours
        self.estimator: OnlineEstimator | None = None  # a fresh one per episode, from reset()
        # Where the measurements carry time stamps (a ROS node): a callable that returns the
        # stamp (s) of the state the current observation was built from.
        self.state_stamp = None
        self._last_stamp: float | None = None

    @property
    def robot_model(self) -> RobotModel:
        return self.inner.robot_model

    @property
    def planning_s(self) -> list[float]:
        return self.inner.planning_s

    def set_command_limit(self, command_limit_nm) -> None:
        """The downstream clip changed (a node's ``max_torque_fraction`` was set while running)."""
        self.command_limit = np.minimum(self.limit, np.asarray(command_limit_nm, dtype=float))
        if self.estimator is not None:
            self.estimator.set_torque_limit(self.command_limit)

    @property
    def uses_torque_features(self) -> bool:
        return self.inner.uses_torque_features

    def reset(self, obs: np.ndarray) -> None:
        """A new episode: the world's hidden physics may have changed, so the estimate restarts
        from the nominal model."""
        self.estimator = OnlineEstimator(self.variant, self.control_dt_s, self.config, self.track_prediction)
        self.estimator.set_torque_limit(self.command_limit)
        self._write(None)
        self._last_stamp = None
        self._sent.clear()
        self.inner.reset(obs)

    def _write(self, estimate: dict | None) -> None:
        m = self.model
        if estimate is None:
            m.dof_armature[:6] = self._nominal["armature"]
            m.body_mass[self._payload] = self._nominal["payload"]
            return
        m.dof_armature[:6] = np.maximum(self._nominal["armature"] + estimate["armature"], 0.2 * self._nominal["armature"])
        m.body_mass[self._payload] = (self._nominal["payload"] + float(np.clip(estimate["payload_kg"], *PLAUSIBLE["payload_kg"]))
                                      + float(np.clip(estimate["load_kg"], *PLAUSIBLE["load_kg"])))

    def gain_to_apply(self, estimate: dict) -> np.ndarray:
        """The motor gains the command is divided by: the estimate clipped to ``PLAUSIBLE``, its
        deviation from 1 scaled by how much the data have told about it (``1 - posterior std /
        prior std``: nothing for a joint the motion has not excited, all of it for one known
        exactly). Dividing by a gain the estimator is unsure of made a delayed loop shake (issue
        15: with the unscaled gain, 0.767 success and 88.6 J on 30 unmodelled-world episodes;
        scaled, 0.867 and 69.5 J; no correction, 0.833 and 46.8 J)."""
        gain = np.clip(estimate["gain"], *PLAUSIBLE["gain"])
        known = 1.0 - np.clip(self.estimator.relative_std()["gain"], 0.0, 1.0)
        return 1.0 + (gain - 1.0) * known

    def latency_to_compensate(self, estimate: dict) -> int:
        """The identified latency (control steps) if the data are clear about it, else 0: its filter's
        residual must be ``latency_evidence_ratio`` times below the zero-latency filter's. Under the
        realistic task's velocity noise the candidates' residuals differ by a few percent where the
        latency is 0 (the estimator names 1 or 2 steps in most nominal-world episodes), and
        compensating a latency that is not there shook the arm (issue 15)."""
        lat = int(estimate["latency_steps"])
        residual = self.estimator.residual
        if lat == 0 or 0 not in residual:
            return lat
        return lat if residual[0] >= self.latency_evidence_ratio * residual[lat] else 0

    def ahead(self, obs: np.ndarray, estimate: dict) -> np.ndarray:
        """The observation with the arm's joint state replaced by where the corrected model puts it
        when a command sent now comes into force: ``latency_steps`` control steps ahead, under the
        commands already sent (a Smith predictor on the identified latency). The rest of the
        observation (the perceived object, already older than that) is left as measured."""
        lat = self.latency_to_compensate(estimate)
        if lat == 0 or len(self._sent) < lat:
            return obs
        if self._ahead is None:
            self._ahead = ModelPredictor(self.variant, self.control_dt_s)
        q, qd = self.layout.joint_positions(obs), self.layout.joint_velocities(obs)
        opening_m, speed_m_s = self.layout.gripper(obs)
        gripper = GripperState(opening_m, speed_m_s, opening_m / 2.0)  # the fingers held where they are
        q, qd = self._ahead.rollout(q, qd, list(self._sent)[-lat:], estimate, gripper)
        out = obs.copy()
        out[OBS_SLICES["q"]], out[OBS_SLICES["qd"]] = q, qd * QD_SCALE
        return out

    def act(self, obs: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        q = self.layout.joint_positions(obs)
        qd = self.layout.joint_velocities(obs)
        active = self.estimator.steps >= self.warmup_steps
        estimate = self.estimator.estimate() if active else None
        self._write(estimate)
        seen = self.ahead(obs, estimate) if (estimate is not None and self.compensate_latency) else obs
        overhead = time.perf_counter() - start
        action = np.array(self.inner.act(seen), dtype=np.float32)
        start = time.perf_counter()
        tau = action[:6].astype(float) * self.limit
        if estimate is not None:
            gain = self.gain_to_apply(estimate)
            qd_then = qd if seen is obs else self.layout.joint_velocities(seen)  # when the command acts
            moving = np.abs(qd_then) >= self.estimator.config.min_speed_for_friction
            tau = (tau + estimate["damping"] * qd_then + estimate["friction"] * np.sign(qd_then) * moving) / gain
            tau = np.clip(tau, -self.limit, self.limit)
            action[:6] = tau / self.limit
        gripper = None
        opening_m, speed_m_s = self.layout.gripper(obs)
        finger_target_m = self._finger_travel_m * (1.0 - float(np.clip(action[6], -1.0, 1.0))) / 2.0
        holding = bool(opening_m >= HOLD_MIN_OPENING_M and finger_target_m <= opening_m / 2.0 - HOLD_SQUEEZE_M)
        if self.track_prediction:
            gripper = GripperState(opening_m, speed_m_s, finger_target_m)
        interval = None
        if self.state_stamp is not None:
            stamp = float(self.state_stamp())
            interval = None if self._last_stamp is None else stamp - self._last_stamp
            self._last_stamp = stamp
        # Optionally freeze while closing on or holding the object (see the module docstring).
        learn = not (self.hold_while_grasping and action[6] > 0.0)
        self.estimator.update(q, qd, tau, gripper, interval, learn, holding)
        self._sent.append(np.clip(tau, -self.command_limit, self.command_limit))
        self.cost_s.append(overhead + time.perf_counter() - start)
        return action
