"""Scripted, model-based grasp controller in joint torques: the baseline every learned
controller is compared with.

Each control step: a Cartesian TCP target from the current phase (minimum-jerk between
waypoints) -> joint target by damped-least-squares inverse kinematics on the controller's
own MuJoCo model (``RobotModel``) -> computed torque:
``tau = M(q) (Kp (q* - q) + Kd (qd* - qd)) + c(q, qd) + g(q)``.

Phases: plan -> pre-grasp (above the object, jaws across its narrower side) -> descend ->
close -> lift -> hold. A grasp that closes on nothing (jaws shut) re-opens, backs off and
re-plans with the object's new pose, up to ``max_attempts`` times; so does a lift that ends
with an empty hand (``replan_on_empty``): 0.2 s into the hold, the jaws are shut or the
perceived object rose less than half the lift (it slipped, or was never held; the second test
only where the camera sees the object in the hand, ``in_hand_vision``). Over that
window the measured joint torques are compared with the model's gravity torques, and the
difference, projected on the TCP's vertical Jacobian row (weighted by 1 / torque limit^2, the
sensor noise scale), is the payload ``m = (j W dtau) / (g j W j)``, averaged: what the object
weighs, for the next decision (without torque features, ``torque_available = False``, NaN).

A probe option (``GraspOption.probe``) weighs before it commits: a gentle grip, a 2 cm lift,
the payload check, then a decision with the object still between the pads (phase ``decide``):
the chosen option's grip takes over and its lift goes on (or, if the object stayed down, the
hand goes back down and squeezes again first).

Each attempt follows a ``GraspOption`` (which side the jaws close across, pre-grasp and lift
heights); the scripted controller always takes ``ScriptedConfig.option``. The hierarchical
controller (``ds_robot.hier``) runs this same machine as its skill layer and lets its learned
planner choose the option (``option_chooser``) and its skill policies add residual torques.

It sees only the observation (decoded with ``ds_robot.envs.layout``) plus what it knows of the scene: the table
height and its own arm model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ds_robot.control.contract import Controller
from ds_robot.control.robot_model import RobotModel
from ds_robot.envs.layout import ACTION_SIZE, ObservationLayout
from ds_robot.errors import ConfigError
from ds_robot.model.params import default_description


@dataclass(frozen=True)
class GraspOption:
    """One grasp candidate: a high-level planner's discrete choice for one attempt.

    ``axis``: the jaws close across the object's ``narrow`` or ``wide`` horizontal side (a
    round object has no preference); ``pregrasp_height_m``: how far above the grasp pose the
    approach ends before descending; ``lift_height_m``: how high the object is lifted;
    ``grip_force_n``: the normal force each pad presses with (0: the gripper's full force, about
    24 N per pad; a gentle grip holds a fragile object without breaking it, and lets a heavy
    one slip). ``probe``: the attempt only weighs the object: a gentle grip (``grip_force_n``,
    required), a ``PROBE_LIFT_M`` lift, the payload the joint torques show, then a new decision
    with the object still in the hand (``ScriptedGraspController``: the chosen option's grip and
    lift continue from there; a probe chosen in the hand continues as its own gentle grip).
    """

    axis: str = "narrow"
    pregrasp_height_m: float = 0.12
    lift_height_m: float = 0.12
    grip_force_n: float = 0.0
    probe: bool = False

    def __post_init__(self):
        from ds_robot.errors import ConfigError

        if self.axis not in ("narrow", "wide"):
            raise ConfigError(f"grasp option axis={self.axis!r}: choose 'narrow' or 'wide'")
        if not (0.02 <= self.pregrasp_height_m <= 0.3 and 0.055 <= self.lift_height_m <= 0.3):
            raise ConfigError(f"grasp option heights out of range: pregrasp {self.pregrasp_height_m} m "
                              f"(0.02-0.3), lift {self.lift_height_m} m (0.055-0.3; success needs 0.05)")
        if not (self.grip_force_n == 0.0 or 1.0 <= self.grip_force_n <= 30.0):
            raise ConfigError(f"grasp option grip_force_n={self.grip_force_n}: 0 (full force) or 1-30 N per pad")
        if self.probe and not self.grip_force_n:
            raise ConfigError("a probe option needs a gentle grip_force_n (1-30 N per pad): the full grip "
                              "would break what it is meant to weigh")

    def describe(self) -> str:
        grip = f"/grip{self.grip_force_n:.0f}N" if self.grip_force_n else ""
        if self.probe:
            return f"{self.axis}/pre{self.pregrasp_height_m * 100:.0f}cm/probe{grip}"
        return f"{self.axis}/pre{self.pregrasp_height_m * 100:.0f}cm/lift{self.lift_height_m * 100:.0f}cm{grip}"


PROBE_LIFT_M = 0.02  # how high a probe lifts the object to weigh it
PROBE_LIFT_S = 0.5


@dataclass(frozen=True)
class ScriptedConfig:
    option: GraspOption = field(default_factory=GraspOption)
    table_height_m: float = 0.0
    pad_clearance_m: float = 0.006  # lowest pad edge above the table
    # Lowest palm face above the object's top. A top-down grasp at the object's centre puts the
    # palm (the pad centres are 4.8 cm below it) into anything over 9.6 cm tall: the PD loop
    # then presses the object into the table, the torques weigh -7 to -9 kg, and a 4 N probe of
    # the unseen 20 cm bottle slipped. With the pads raised to clear the top, the shipped round-9
    # hier went from 2/12 to 12/12 on it upright (BENCHMARKS.md, issue 16 round 10).
    # None: grasp at the centre (the machine before round 10; policies trained with it).
    palm_clearance_m: float | None = 0.01
    approach_s: float = 1.4
    descend_s: float = 0.9
    settle_s: float = 0.15
    # The jaws close for at least close_s and then until the fingers stop (opening speed under
    # closed_speed_m_s: on the object, or shut), at most close_max_s: a gentle grip closes slower
    # than the full one (its force, not the servo's limit, drives the fingers), and a fixed 0.5 s
    # lifted before a 4 N probe had reached a 2.2 cm sphere (BENCHMARKS.md, issue 16 round 15).
    # Grippers report the same (e.g. the Robotiq 2F-85's "object detected" status).
    close_s: float = 0.5
    close_max_s: float = 1.5
    closed_speed_m_s: float = 0.005
    lift_s: float = 1.0
    retreat_s: float = 0.6
    natural_frequency_rad_s: float = 25.0
    damping_ratio: float = 1.0
    missed_opening_m: float = 0.004  # jaws closer than this after closing: nothing was grasped
    max_attempts: int = 3
    # Re-plan when the lifted hand is empty: 0.2 s into the hold, the jaws shut or the object
    # seen less than half the lift above where it was starts a new attempt. The payload the
    # measured joint torques show over that window is recorded for the next decision (what the
    # object weighs); it does not decide emptiness: its noise (~0.03 kg on the window's mean) is
    # a light object's weight, and the first versions' 20 g threshold called a held 40 g paper
    # box empty and re-gripped it at full force.
    replan_on_empty: bool = True
    payload_check_s: float = 0.2
    regrip_descend_s: float = 0.4  # after a probe that slipped: back down to the grasp pose to squeeze again
    # Where the machine goes. The TCP moves in straight lines, and near the base's z axis the
    # shoulder is singular: measured with this machine (a cube placed at 8-20 cm from the axis,
    # ``BENCHMARKS.md``, issue 16 round 16), every grasp at 13 cm or less ran away (joints at
    # 30-50 rad/s, 2-12 kJ), at 16-20 cm it lifted the cube, except from behind the base,
    # where the straight approach from the front crosses the axis. So an attempt is planned only
    # where the perceived object lies ``reach_m`` (inner, outer) from the axis, horizontally, and
    # the straight line there from the hand keeps the inner distance; otherwise (or for a pose
    # that is not a number) the arm holds where it is, jaws open (phase ``out_of_reach``), and
    # plans once the object is seen in reach. A lying capsule that rolled to 10 cm from the axis
    # had cost one scripted stress episode 4 kJ. Outer: a cube at 90 cm was lifted (the UR5e's
    # reach is 850 mm from the shoulder, UR5e datasheet).
    reach_m: tuple[float, float] = (0.18, 0.9)

    def __post_init__(self):
        if not (0.0 < self.close_s <= self.close_max_s and self.closed_speed_m_s > 0.0):
            raise ConfigError(f"close_s={self.close_s}, close_max_s={self.close_max_s}, closed_speed_m_s="
                              f"{self.closed_speed_m_s}: need 0 < close_s <= close_max_s and a positive speed")
        lo, hi = self.reach_m
        if not (0.0 <= lo < hi <= 1.0):
            raise ConfigError(f"reach_m={self.reach_m}: need 0 <= inner < outer <= 1 m")
        if not valid_palm_clearance(self.palm_clearance_m):
            raise ConfigError(f"palm_clearance_m must be None or a distance of 0-0.1 m, got {self.palm_clearance_m!r}")


def valid_palm_clearance(value) -> bool:
    """None (the grasp at the object's centre) or a number of metres in 0-0.1."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 0.1)


def min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s**3 * (10 - 15 * s + 6 * s**2)


def interpolate_rotation(start: np.ndarray, end: np.ndarray, s: float) -> np.ndarray:
    """Rotation a fraction ``s`` of the way from ``start`` to ``end`` (about a fixed axis)."""
    from ds_robot.control.robot_model import rotation_error

    axis_angle = rotation_error(end, start) * s
    angle = float(np.linalg.norm(axis_angle))
    if angle < 1e-12:
        return start.copy()
    k = axis_angle / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx
    return rot @ start


@dataclass
class Segment:
    """Minimum-jerk motion of the TCP from one pose to another."""

    start_s: float
    duration_s: float
    pos_from: np.ndarray
    pos_to: np.ndarray
    rot_from: np.ndarray
    rot_to: np.ndarray

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        s = min_jerk((t - self.start_s) / self.duration_s) if self.duration_s > 0 else 1.0
        return self.pos_from + s * (self.pos_to - self.pos_from), interpolate_rotation(self.rot_from, self.rot_to, s)

    def done(self, t: float) -> bool:
        return t >= self.start_s + self.duration_s


class ScriptedGraspController(Controller):
    name = "scripted"
    uses_torque_features = False

    def __init__(
        self,
        control_dt_s: float = 0.01,
        variant: str = "ur5e",
        config: ScriptedConfig | None = None,
    ):
        desc = default_description()
        self.config = config or ScriptedConfig()
        self.control_dt_s = control_dt_s
        self.robot = RobotModel(variant)
        self.torque_limit_nm = np.array(desc.variant(variant).joint_torque_limit_nm)
        self.max_opening_m = desc.gripper.max_opening_m
        self.layout = ObservationLayout(self.torque_limit_nm, self.max_opening_m)
        self.pad_half_height_m = desc.gripper.finger_pad_half_size_m[2]
        self.palm_to_tcp_m = desc.gripper.finger_length_m - desc.gripper.finger_pad_half_size_m[2]
        w, z = self.config.natural_frequency_rad_s, self.config.damping_ratio
        self.kp, self.kd = w * w, 2.0 * z * w
        self.phase = "idle"
        self.option = self.config.option
        self.torque_available = True  # False: the observation's torque slice is zeroed (no payload check)
        # False: the object's perceived pose does not follow it in the hand (a camera over the table
        # is occluded by the gripper): the empty-hand check reads the jaws alone, and a probe's
        # outcome the jaws and, with torque features, the weighed payload (the planner's to read)
        self.in_hand_vision = True
        self.grip_gain_n_m = desc.gripper.actuator_kp_n_m / 2.0  # pad force per metre of finger lag
        self.finger_travel_m = desc.gripper.finger_travel_m
        self.payload_kg = float("nan")  # the last payload estimate (kg), for diagnostics
        self.replans = 0  # attempts started because the lifted hand was empty
        # (obs, attempts so far) -> GraspOption; None: always ``config.option``.
        self.option_chooser: Callable[[np.ndarray, int], GraspOption] | None = None
        self._planning_s: list[float] = []

    @classmethod
    def for_env(cls, env, config: ScriptedConfig | None = None) -> ScriptedGraspController:
        env = env.unwrapped
        machine = cls(env.control_dt_s, env.backend.variant, config)
        machine.in_hand_vision = getattr(env, "in_hand_vision", True)
        return machine

    @property
    def robot_model(self) -> RobotModel:
        return self.robot

    @property
    def planning_s(self) -> list[float]:
        """Wall time of each attempt's planning (option choice, grasp pose, segments), all episodes."""
        return self._planning_s

    # -- observation decoding ---------------------------------------------------------------

    def _decode(self, obs: np.ndarray) -> None:
        layout = self.layout
        self.q = layout.joint_positions(obs)
        self.qd = layout.joint_velocities(obs)
        self.opening = layout.gripper(obs)[0]
        self.robot.update(self.q, self.qd, self.opening)
        self.tcp_pos, self.tcp_rot = self.robot.tcp_pose()

    # -- planning ---------------------------------------------------------------------------

    def _grasp_pose(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP pose for grasping: pointing down, jaws closing across the option's side."""
        obj_pos, obj_rot = self.layout.object_pose(obs, self.tcp_pos, self.tcp_rot)
        self.object_z_m = float(obj_pos[2])  # where the object was seen when this attempt was planned
        half = self.layout.object_half_extents(obs)
        narrow_is_x = half[0] <= half[1]
        across_x = narrow_is_x if self.option.axis == "narrow" else not narrow_is_x
        closing = obj_rot[:, 0] if across_x else obj_rot[:, 1]
        closing = np.array([closing[0], closing[1], 0.0])
        closing /= np.linalg.norm(closing)
        if closing @ self.tcp_rot[:, 1] < 0:  # the jaws are symmetric: turn the wrist the short way
            closing = -closing
        down = np.array([0.0, 0.0, -1.0])
        rot = np.column_stack([np.cross(closing, down), closing, down])
        lowest_tcp_z = self.config.table_height_m + self.pad_half_height_m + self.config.pad_clearance_m
        z = max(obj_pos[2], lowest_tcp_z)
        if self.config.palm_clearance_m is not None:
            z = max(z, obj_pos[2] + half[2] + self.config.palm_clearance_m - self.palm_to_tcp_m)
        pos = np.array([obj_pos[0], obj_pos[1], z])
        return pos, rot

    def _plan_attempt(self, obs: np.ndarray, t: float) -> None:
        start = time.perf_counter()
        self._plan(obs, t)
        if self.phase != "out_of_reach":  # a refused plan is no decision
            self._planning_s.append(time.perf_counter() - start)

    def reachable(self, obs: np.ndarray) -> bool:
        """Whether the perceived object lies where the machine goes (``ScriptedConfig.reach_m``):
        inside the annulus, with the straight line from the hand's reference there clear of
        the inner cylinder. False for a pose that is not a number."""
        goal = self.layout.object_pose(obs, self.tcp_pos, self.tcp_rot)[0][:2]
        inner, outer = self.config.reach_m
        if not inner <= math.hypot(goal[0], goal[1]) <= outer:
            return False
        start = np.asarray(self.ref_pos[:2], dtype=float)
        path = goal - start
        along = min(max(-float(start @ path) / float(path @ path), 0.0), 1.0) if path @ path > 0 else 0.0
        return bool(np.linalg.norm(start + along * path) >= inner)

    def _plan(self, obs: np.ndarray, t: float) -> None:
        cfg = self.config
        if not self.reachable(obs):
            self.phase = "out_of_reach"  # hold here, jaws open; planned again once it is seen in reach
            self.gripper_command = -1.0
            return
        self.option = self.option_chooser(obs, self.attempt) if self.option_chooser else cfg.option
        self.grasp_pos, self.grasp_rot = self._grasp_pose(obs)
        above = self.grasp_pos + np.array([0.0, 0.0, self.option.pregrasp_height_m])
        # Shorter descents take proportionally less time (the default 12 cm takes descend_s).
        descend_s = cfg.descend_s * max(self.option.pregrasp_height_m / 0.12, 0.4)
        self.segments = {
            "approach": Segment(t, cfg.approach_s, self.ref_pos, above, self.ref_rot, self.grasp_rot),
            "descend": Segment(t + cfg.approach_s, descend_s, above, self.grasp_pos, self.grasp_rot,
                               self.grasp_rot),
        }
        self.phase = "approach"
        self.probing = self.option.probe
        self.attempt += 1

    def _continue_in_hand(self, obs: np.ndarray, t: float) -> None:
        """After a probe: the next decision's option takes over with the object in the hand. Held,
        its lift goes on from the probe height with its grip; slipped (the object stayed down),
        the hand goes back down to the grasp pose and squeezes again with its grip first. Without
        ``in_hand_vision`` nothing tells a held probe from one that slid down between the pads
        (the jaws stay on it either way), so the hand always goes back down first. Not a new
        attempt. Without re-planning (``replan_on_empty`` off) the probe goes on as its own grip."""
        start = time.perf_counter()
        cfg = self.config
        if self.option_chooser and cfg.replan_on_empty:
            self.option = self.option_chooser(obs, self.attempt)
        self.probing = False
        if self.last_outcome == "probed" and self.in_hand_vision:
            self._start_lift(t)
        else:
            self.segments["descend"] = Segment(t, cfg.regrip_descend_s, self.ref_pos, self.grasp_pos,
                                               self.ref_rot, self.grasp_rot)
            self.phase = "descend"
        self._planning_s.append(time.perf_counter() - start)

    def _start_lift(self, t: float) -> None:
        cfg = self.config
        self.phase = "lift"
        height = PROBE_LIFT_M if self.probing else self.option.lift_height_m
        lift_s = PROBE_LIFT_S if self.probing else cfg.lift_s * max(self.option.lift_height_m / 0.12, 0.5)
        top = self.grasp_pos + np.array([0.0, 0.0, height])
        self.segments["lift"] = Segment(t, lift_s, self.ref_pos, top, self.ref_rot, self.grasp_rot)

    def reset(self, obs: np.ndarray) -> None:
        self._decode(obs)
        self.t = 0.0
        self.attempt = 0
        self.q_des = self.q.copy()
        self.ref_pos, self.ref_rot = self.tcp_pos, self.tcp_rot
        self.gripper_command = -1.0
        self.option = self.config.option
        self.segments: dict[str, Segment] = {}
        self.phase = "plan"  # the first attempt is planned on the first act()
        self.probing = False  # this attempt is a probe's weighing lift
        self.payload_kg = float("nan")
        self.closed_tcp_z_m = float(self.tcp_pos[2])  # set again each time the jaws close
        self.replans = 0
        # how the last attempt ended, for the next decision: "" (none yet), "missed" (the jaws
        # shut on nothing) or "slipped" (the lifted hand was empty); its option and, after a
        # slip, the payload the torques showed (NaN without torque features)
        self.last_outcome = ""
        self.last_option: GraspOption | None = None
        self.last_payload_kg = float("nan")

    def decision_due(self, obs: np.ndarray | None = None) -> bool:
        """True when the next ``act`` plans an attempt (calls ``option_chooser``); out of reach,
        only when ``obs`` is given and shows the object back in reach."""
        return (self.phase in ("plan", "decide")
                or (self.phase == "out_of_reach" and obs is not None and self.reachable(obs))
                or (self.phase == "retreat" and self.segments["retreat"].done(self.t)))

    # -- control ----------------------------------------------------------------------------

    def _advance(self, obs: np.ndarray) -> None:
        cfg, t = self.config, self.t
        if self.phase == "plan" or (self.phase == "out_of_reach" and self.reachable(obs)):
            self._plan_attempt(obs, t)
        elif self.phase == "decide":
            self._continue_in_hand(obs, t)
        if self.phase == "approach" and self.segments["approach"].done(t):
            self.phase = "descend"
        elif self.phase == "descend" and self.segments["descend"].done(t + cfg.settle_s):
            self.phase, self.phase_start = "close", t
            self.gripper_command = 1.0
        elif self.phase == "close" and self._jaws_closed(obs, t - self.phase_start):
            if self.opening < cfg.missed_opening_m and self.attempt < cfg.max_attempts:
                self._retreat(t, "missed")
            else:
                self.closed_tcp_z_m = float(self.tcp_pos[2])  # where the hand was when the jaws closed
                self._start_lift(t)
        elif self.phase == "retreat" and self.segments["retreat"].done(t):
            self._plan_attempt(obs, t)
        elif self.phase == "lift" and self.segments["lift"].done(t):
            self.phase, self.phase_start = "hold", t
            self._checked = False
            self._payloads: list[float] = []
            self._object_zs: list[float] = []
        elif self.phase == "hold" and (cfg.replan_on_empty or self.probing) and not self._checked:
            if self.torque_available:
                self._payloads.append(self.payload_estimate(obs))
            if self.in_hand_vision:
                self._object_zs.append(float(self.layout.object_pose(obs, self.tcp_pos, self.tcp_rot)[0][2]))
            if t - self.phase_start < cfg.payload_check_s:
                return
            self._checked = True
            # means over the window: one sample's torque noise is ~0.1 kg, one camera frame's 1.5 mm
            self.payload_kg = float(np.mean(self._payloads)) if self._payloads else float("nan")
            # The perceived object rose less than half as far as the hand did since the jaws closed:
            # it slipped (or was never held). The hand's rise is measured (the planned lift less
            # what a contact pushed the hand up while closing: 5 mm for a 7 cm peach under a 2 cm
            # probe, whose held probe then read as a slip; BENCHMARKS.md, issue 16 round 15), kept
            # within half to all of the planned lift.
            lifted = PROBE_LIFT_M if self.probing else self.option.lift_height_m
            risen = min(max(float(self.tcp_pos[2]) - self.closed_tcp_z_m, 0.5 * lifted), lifted)
            behind = self.in_hand_vision and float(np.mean(self._object_zs)) - self.object_z_m < 0.5 * risen
            shut = self.opening < cfg.missed_opening_m
            empty = shut or behind
            if self.probing and not (shut and self.attempt < cfg.max_attempts):
                # weighed: decide with the object in the hand (held, or still between the pads)
                self.last_outcome = "slipped" if empty else "probed"
                self.last_option, self.last_payload_kg = self.option, self.payload_kg
                self.phase = "decide"
            elif empty and self.attempt < cfg.max_attempts:
                self.replans += 1
                self._retreat(t, "slipped")

    def _jaws_closed(self, obs: np.ndarray, elapsed_s: float) -> bool:
        cfg = self.config
        if elapsed_s < cfg.close_s - 1e-9:
            return False
        return elapsed_s >= cfg.close_max_s - 1e-9 or abs(self.layout.gripper(obs)[1]) < cfg.closed_speed_m_s

    def _retreat(self, t: float, outcome: str) -> None:
        """Open, back off to above the last grasp pose; the next attempt is planned when there."""
        self.last_outcome, self.last_option = outcome, self.option
        self.last_payload_kg = self.payload_kg if outcome == "slipped" else float("nan")
        self.phase, self.phase_start = "retreat", t
        self.gripper_command = -1.0
        above = self.grasp_pos + np.array([0.0, 0.0, self.option.pregrasp_height_m])
        self.segments["retreat"] = Segment(t, self.config.retreat_s, self.ref_pos, above, self.ref_rot, self.ref_rot)

    def payload_estimate(self, obs: np.ndarray) -> float:
        """The mass (kg) hanging from the TCP that the measured joint torques show (quasi-static)."""
        dtau = self.layout.measured_torque_nm(obs) - self.robot.gravity_torque()
        jz = self.robot.tcp_jacobian()[2]
        w = 1.0 / self.torque_limit_nm**2
        return float((jz * w) @ dtau / (9.81 * (jz * w) @ jz))  # the joints hold the load up: +m g j

    def _gripper(self) -> float:
        """The gripper command: open/close, or (a gentle option, while closed) the finger target
        that makes each pad press with ``grip_force_n``: the position actuator's force is its gain
        times the lag of the target behind the measured opening."""
        force = self.option.grip_force_n
        if self.gripper_command < 0 or not force:
            return self.gripper_command
        target = self.opening / 2.0 - force / self.grip_gain_n_m  # per-finger target, m
        return float(np.clip(1.0 - 2.0 * target / self.finger_travel_m, -1.0, 1.0))

    def command(self, obs: np.ndarray) -> tuple[np.ndarray, float]:
        """Advance one control step: the model-based joint torques (N m) and the gripper command."""
        self._decode(obs)
        self._advance(obs)
        segment = self.segments.get(self.phase)
        if segment is not None:
            self.ref_pos, self.ref_rot = segment.at(self.t)
        q_des, _ = self.robot.inverse_kinematics(self.ref_pos, self.ref_rot, self.q_des, iterations=4)
        qd_des = (q_des - self.q_des) / self.control_dt_s
        self.q_des = q_des
        acc = self.kp * (q_des - self.q) + self.kd * (qd_des - self.qd)
        torque = self.robot.mass_matrix() @ acc + self.robot.bias_torque()
        self.t += self.control_dt_s
        return torque, self._gripper()

    def phase_progress(self) -> float:
        """How far the current phase's motion is, 0..1 (1 for phases without a motion)."""
        segment = self.segments.get(self.phase)
        if segment is None or segment.duration_s <= 0:
            return 1.0
        return min(max((self.t - segment.start_s) / segment.duration_s, 0.0), 1.0)

    def act(self, obs: np.ndarray) -> np.ndarray:
        torque, gripper = self.command(obs)
        action = np.empty(ACTION_SIZE, dtype=np.float32)
        action[:6] = np.clip(torque / self.torque_limit_nm, -1.0, 1.0)
        action[6] = gripper
        return action
