"""The policy node's control core: pure Python, no ROS, tested on its own.

The rclpy node (``policy_node.py``) is a thin shell: it turns messages into calls to
:class:`ControlCore` and publishes what :meth:`ControlCore.tick` returns. Everything that
decides what reaches the arm lives here:

- **Joint states** are matched by name (``tf_prefix`` + UR joint names, plus the gripper's
  finger joints), never by index. With ``separate_gripper_state`` (a real UR: the driver's
  ``/joint_states`` has the six arm joints only, the gripper has its own driver) the finger
  joints come in their own JointState messages (``on_gripper_state``), checked the same way and
  watched by their own ``gripper_timeout_s``. A message with a missing joint, mismatched array lengths,
  NaN/Inf, no efforts while the policy uses torque features, a stamp older than the last
  accepted one, or a stamp more than ``max_stamp_ahead_s`` ahead of the node's clock (accepted,
  it would look fresh to the watchdog and lock out every later state as "older"), or a state no
  real arm could report (``_check_plausible``: outside the joint range, beyond twice the speed
  limit, a jump the joints cannot make in the stamp interval) is rejected with a reason and
  changes nothing.
- **Efforts** (``effort_kind``): ``torque`` (output-side joint torque, N m: the sim node, or a
  driver that reports it); ``current`` (ur_robot_driver on jazzy, kilted and main reads RTDE's
  ``actual_current`` into the effort field: motor current in A), converted with the per-joint
  ``current_to_torque_nm_per_a`` the operator must supply (no constant is published by UR for
  the UR5e: the node refuses to start without them); ``gravity_compensated_torque`` (RTDE's
  ``actual_current_as_torque``, PolyScope >= 5.23, reported to read 0 for a still joint without
  external load): the model's gravity torque is added back. An effort beyond twice the joint's
  torque limit after conversion is refused as implausible.
- **Watchdog**: when the newest accepted joint state is older than ``state_timeout_s`` (by its
  stamp, against the node's clock) or none has arrived, or the object pose is older than
  ``object_timeout_s``, every tick returns the stop command.
- **Object pose frame**: a pose whose ``frame_id`` is not ``object_frame_id`` (default
  ``tf_prefix + "base"``, the frame the UR driver's kinematics and this node's model use) is
  refused: UR's ``base_link`` is ``base`` turned by pi about z, and a pose in it would put the
  grasp on the wrong side of the robot.
- **Observation**: the training env's, encoded by the same ``ObservationLayout`` from the
  joint state, the TCP pose from the forward kinematics of the core's own nominal model of the
  arm (the description the controller's model is built from) and the object pose.
- **Policy** at ``policy_rate_hz`` (the rate it was trained at, 100 Hz); between policy steps
  the last command is held, as the training environment holds torques over its physics steps.
- **Command interfaces**: ``effort`` (UR e-Series direct torque; the controller box adds its
  own gravity compensation, so the model's gravity torque is removed unless
  ``robot_adds_gravity`` is false) or ``velocity`` (CB3, which cannot take torques: the
  torque becomes an acceleration through the model, ``qdd = M^-1 (tau - bias)``, and the
  command is the velocity the joint would have one policy period later).
- **Safety**: NaN/Inf never leave the core (stop + reason); torques are clamped to
  ``max_torque_fraction`` of the joint limits, velocity commands to ``max_velocity_rad_s``;
  near a joint limit (within ``joint_limit_margin_rad``) or above the velocity limit, the part
  of the command that pushes further out is removed; an e-stop latches the stop command until
  :meth:`reset`.
- **Operator gate** (``require_enable``; on in the shipped robot parameter files, off in the
  sim): with fresh inputs and the arm within ``start_region_rad`` of its start pose the core is
  ``ready`` and sends the stop command until :meth:`enable` (the node's ``~/enable`` service);
  then the policy's command ramps in over ``torque_ramp_s`` (the part beyond gravity
  compensation scales from 0 to 1). Any stop while enabled (stale input, e-stop, policy error)
  is a ``fault``: latched until :meth:`reset`, then ``enable`` again. ``mode`` says where it is.
- **Stop command**: a braking stop. On ``effort``, while the newest joint state is fresh and a
  joint moves faster than ``still_rad_s``: ``tau = -M(q) qd / brake_time_s`` (at most
  ``max_brake_torque_fraction`` of the joint limits; the UR adds its gravity compensation), so
  the arm comes to rest in a few ``brake_time_s`` instead of coasting on "gravity compensation
  only"; zeros once it is still, or when no fresh state says how it moves. On ``velocity`` it
  is zero velocity ("hold still": the robot's own braking). ros2_control's forward controllers
  hold the last command forever, so the node's last command before it exits is zeros
  (``brake=False``: a held brake torque would push a stopped arm backwards) and the
  supervisor brakes a node that dies mid-motion.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ds_robot.control.contract import Controller
from ds_robot.control.robot_model import RobotModel
from ds_robot.envs.layout import ACTION_SIZE, ObservationLayout, goal_position
from ds_robot.errors import ConfigError
from ds_robot.model.params import ARM_JOINT_NAMES, N_ARM_JOINTS, default_description
from ds_robot.sim import scene

COMMAND_INTERFACES = ("effort", "velocity")
EFFORT_KINDS = ("torque", "current", "gravity_compensated_torque")
EFFORT_GATE_FACTOR = 2.0  # a converted effort beyond this times the joint torque limit is no real reading
# Rates the UR drivers run their real-time interface at: e-Series 500 Hz, CB3 125 Hz.
UR_TYPES = {"ur5e": {"series": "e-Series", "rate_hz": 500.0, "effort": True},
            "ur5": {"series": "CB3", "rate_hz": 125.0, "effort": False}}


# Physical plausibility of a joint state (what no real UR can report): positions beyond the
# joint range by more than POSITION_GATE_RAD, speeds beyond SPEED_GATE_FACTOR x the datasheet
# limit, and a position change since the last accepted state larger than that speed over the
# stamp interval plus JUMP_TOLERANCE_RAD (encoder noise and stamp jitter). After
# REANCHOR_STATES consecutive messages that agree with each other but not with the last
# accepted state, the newest is taken (the last accepted one was the outlier).
POSITION_GATE_RAD = 0.1
SPEED_GATE_FACTOR = 2.0
JUMP_TOLERANCE_RAD = 0.02
REFUSAL_WINDOW = 200  # joint states (0.4 s at 500 Hz)
GRIPPER_GATE_M = 0.005  # a gripper opening this far outside 0..max_opening is no real reading
REANCHOR_STATES = 3
# An object's half-size beyond this is no object this arm grasps (a 50 cm object; the UR5e reaches
# 850 mm, UR5e datasheet; the largest task object is 20 cm). The grasp height follows the
# perceived top (ScriptedConfig.palm_clearance_m), so a hostile size would send the hand upward.
MAX_OBJECT_HALF_EXTENT_M = 0.25

# What may change while the node runs (a `ros2 param set` of these takes effect at the next tick).
LIVE_FIELDS = ("max_torque_fraction", "max_velocity_rad_s", "joint_limit_margin_rad", "state_timeout_s",
               "object_timeout_s")


class MessageError(ValueError):
    """An input message the core refuses (the reason is in the text); nothing was changed."""


def checked_object_extents(extents) -> np.ndarray:
    """``extents`` as 3 half-sizes in m, or a ``MessageError``: not 3 numbers, not finite, not
    positive, or over ``MAX_OBJECT_HALF_EXTENT_M``."""
    try:
        extents = np.asarray(extents, dtype=float)
    except (TypeError, ValueError):
        raise MessageError(f"object extents must be 3 numbers, got {extents!r}") from None
    if (extents.shape != (3,) or not np.all(np.isfinite(extents)) or not np.all(extents > 0)
            or not np.all(extents <= MAX_OBJECT_HALF_EXTENT_M)):
        raise MessageError(f"object extents must be 3 positive half-sizes of at most {MAX_OBJECT_HALF_EXTENT_M} m "
                           f"(a {2 * MAX_OBJECT_HALF_EXTENT_M:g} m object), got {extents.tolist()}")
    return extents


@dataclass(frozen=True)
class NodeConfig:
    ur_type: str = "ur5e"
    command_interface: str = "effort"
    rate_hz: float = 500.0
    policy_rate_hz: float = 100.0
    tf_prefix: str = ""
    joint_names: tuple[str, ...] = ARM_JOINT_NAMES
    gripper_joints: tuple[str, ...] = ("left_finger_joint", "right_finger_joint")
    robot_adds_gravity: bool = True
    # Watchdog on the newest joint state's age (by stamp): 10 periods at 500 Hz. The state->command
    # age measured in `bench node` on the 2-core test machine is 4-9 ms at P99 (two nodes, DDS
    # and the sim on 2 cores): 2 periods stopped the arm 600-800 times a minute in nominal
    # operation. 20 ms is half UR's own robot_receive_timeout default (40 ms).
    state_timeout_s: float = 0.02
    object_timeout_s: float = 0.5
    # A stamp further ahead of the node's clock is refused: accepted, it would look fresh to the
    # watchdog long after the data stopped and lock every correctly stamped message out as "older".
    max_stamp_ahead_s: float = 0.01
    max_torque_fraction: float = 1.0
    max_velocity_rad_s: float = math.pi
    joint_limit_margin_rad: float = 0.05
    goal_height_m: float = 0.10
    object_half_extents_m: tuple[float, ...] = ()  # used until a message gives them
    effort_kind: str = "torque"  # torque | current | gravity_compensated_torque (see the module docstring)
    current_to_torque_nm_per_a: tuple[float, ...] = ()  # effort_kind current: one factor per arm joint
    # a fault latches (e-stop) when more than this share of the last REFUSAL_WINDOW joint states
    # was refused: a corrupted stream, not an odd message (those are dropped and counted)
    max_refused_fraction: float = 0.8
    require_enable: bool = False  # the operator gate (module docstring); the sim runs without it
    torque_ramp_s: float = 0.5
    start_region_rad: float = 0.35  # ready only with every arm joint this close to the start pose
    separate_gripper_state: bool = False  # the finger joints come on their own topic (a real gripper driver)
    gripper_timeout_s: float = 0.1  # with separate_gripper_state: its newest state older than this -> stop
    object_frame_id: str | None = None  # None: tf_prefix + "base"
    # stop (and, enabled, a fault) unless the driver says the External Control program runs
    # (ur_robot_driver's io_and_status_controller/robot_program_running, std_msgs/Bool)
    require_program_running: bool = False
    # the brake of a stop (module docstring)
    brake_time_s: float = 0.1  # the braking stop's time constant: 50 periods at 500 Hz, as the supervisor's
    max_brake_torque_fraction: float = 0.5
    still_rad_s: float = 0.02  # the braking stop ends (zeros) once every joint is slower

    def __post_init__(self):
        if self.ur_type not in UR_TYPES:
            raise ConfigError(f"ur_type {self.ur_type!r}: supported are {', '.join(UR_TYPES)}")
        if self.command_interface not in COMMAND_INTERFACES:
            raise ConfigError(f"command_interface {self.command_interface!r}: choose effort or velocity")
        if self.command_interface == "effort" and not UR_TYPES[self.ur_type]["effort"]:
            raise ConfigError(f"command_interface effort on {self.ur_type} ({UR_TYPES[self.ur_type]['series']}): "
                              "CB3 controllers cannot take joint torques; use command_interface:=velocity")
        if not (0 < self.policy_rate_hz <= self.rate_hz <= 5000):
            raise ConfigError(f"need 0 < policy_rate_hz <= rate_hz <= 5000, got policy_rate_hz={self.policy_rate_hz}, "
                              f"rate_hz={self.rate_hz}")
        if len(self.joint_names) != N_ARM_JOINTS or len(set(self.joint_names)) != N_ARM_JOINTS:
            raise ConfigError(f"joint_names must name {N_ARM_JOINTS} distinct arm joints, got {list(self.joint_names)}")
        for name in ("state_timeout_s", "object_timeout_s", "max_velocity_rad_s", "goal_height_m", "gripper_timeout_s",
                     "torque_ramp_s", "start_region_rad", "brake_time_s", "still_rad_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_torque_fraction", "max_brake_torque_fraction"):
            if not (0 < getattr(self, name) <= 1):
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 < self.max_refused_fraction <= 1:
            raise ConfigError(f"max_refused_fraction must be in (0, 1], got {self.max_refused_fraction}")
        if not (self.max_stamp_ahead_s >= 0 and math.isfinite(self.max_stamp_ahead_s)):
            raise ConfigError(f"max_stamp_ahead_s must be >= 0, got {self.max_stamp_ahead_s}")
        if self.joint_limit_margin_rad < 0:
            raise ConfigError(f"joint_limit_margin_rad must be >= 0, got {self.joint_limit_margin_rad}")
        if self.effort_kind not in EFFORT_KINDS:
            raise ConfigError(f"effort_kind {self.effort_kind!r}: choose {', '.join(EFFORT_KINDS)}")
        if self.effort_kind == "current" and (len(self.current_to_torque_nm_per_a) != N_ARM_JOINTS or not all(
                math.isfinite(k) and k > 0 for k in self.current_to_torque_nm_per_a)):
            raise ConfigError("effort_kind current needs current_to_torque_nm_per_a: 6 positive factors (N m per A "
                              "at the joint output; UR publishes none for the UR5e: identify them on your arm, e.g. "
                              f"against gravity at rest), got {list(self.current_to_torque_nm_per_a)}")
        if self.object_half_extents_m:
            try:
                checked_object_extents(self.object_half_extents_m)
            except MessageError as exc:
                raise ConfigError(f"object_half_extents_m: {exc}") from None

    @property
    def arm_joints(self) -> tuple[str, ...]:
        return tuple(self.tf_prefix + name for name in self.joint_names)

    @property
    def pose_frame(self) -> str:
        return self.object_frame_id if self.object_frame_id is not None else self.tf_prefix + "base"

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass
class ArmState:
    stamp_s: float
    q: np.ndarray
    qd: np.ndarray
    tau: np.ndarray  # zeros when the message had no efforts
    gripper_opening_m: float
    gripper_speed_m_s: float


@dataclass
class GripperState:
    stamp_s: float
    opening_m: float
    speed_m_s: float


@dataclass
class ObjectPose:
    stamp_s: float
    pos: np.ndarray
    quat_wxyz: np.ndarray


@dataclass
class Command:
    values: np.ndarray  # 6 joint torques (N m) or velocities (rad/s), what goes to the arm controller
    gripper: float  # -1 open .. 1 closed
    stop: bool
    reason: str = ""
    torque_nm: np.ndarray | None = None  # the controller's torque before the interface and its limits


@dataclass
class Stats:
    ticks: int = 0
    policy_steps: int = 0
    stops: int = 0
    braking_stops: int = 0  # stop commands that braked a moving arm (the rest were zeros)
    stop_reasons: dict = field(default_factory=dict)  # stops per kind ("joint_states stale": the watchdog)
    rejected: dict = field(default_factory=dict)
    policy_step_s: deque = field(default_factory=lambda: deque(maxlen=100_000))

    def reject(self, reason: str) -> None:
        key = reason.split(":")[0]
        self.rejected[key] = self.rejected.get(key, 0) + 1


def parse_joint_state(config: NodeConfig, names, positions, velocities, efforts, stamp_s: float,
                      need_effort: bool) -> ArmState:
    """Arm and gripper state from a JointState message's fields, matched by joint name."""
    names = list(names)
    positions, velocities, efforts = (np.asarray(a, dtype=float) for a in (positions, velocities, efforts))
    if len(positions) != len(names):
        raise MessageError(f"malformed joint_states: {len(names)} names but {len(positions)} positions")
    for label, arr in (("velocities", velocities), ("efforts", efforts)):
        if len(arr) not in (0, len(names)):
            raise MessageError(f"malformed joint_states: {len(names)} names but {len(arr)} {label}")
    if len(velocities) == 0:
        raise MessageError("malformed joint_states: no velocities")
    if need_effort and len(efforts) == 0:
        raise MessageError("malformed joint_states: no efforts, and the policy uses measured joint torques")
    index = {n: i for i, n in enumerate(names)}
    needed = config.arm_joints if config.separate_gripper_state else (*config.arm_joints, *config.gripper_joints)
    missing = [n for n in needed if n not in index]
    if missing:
        raise MessageError(f"malformed joint_states: missing joints {missing} (have {names})")
    arm = [index[n] for n in config.arm_joints]
    grip = [] if config.separate_gripper_state else [index[n] for n in config.gripper_joints]
    used = arm + grip
    for label, arr in (("positions", positions), ("velocities", velocities), ("efforts", efforts)):
        if len(arr) and not np.all(np.isfinite(arr[used])):
            raise MessageError(f"non-finite joint_states {label}")
    if not math.isfinite(stamp_s):
        raise MessageError("non-finite joint_states stamp")
    tau = efforts[arm] if len(efforts) else np.zeros(N_ARM_JOINTS)
    # with a separate gripper state the core fills the gripper in from its own messages
    opening, speed = (float(positions[grip].sum()), float(velocities[grip].sum())) if grip else (math.nan, math.nan)
    return ArmState(stamp_s, positions[arm].copy(), velocities[arm].copy(), tau.copy(), opening, speed)


class ControlCore:
    """``on_joint_state`` / ``on_object_pose`` / ``estop`` / ``reset`` in, ``tick(now)`` out.

    ``controller`` is a :class:`~ds_robot.control.contract.Controller` (the hierarchical
    controller or the scripted baseline, possibly under online correction). Joint states without
    efforts are refused when it ``uses_torque_features``; ``torque_features`` overrides that.
    """

    def __init__(self, config: NodeConfig, controller: Controller, torque_features: bool | None = None):
        self.config = config
        self.controller = controller
        self.need_effort = controller.uses_torque_features if torque_features is None else torque_features
        desc = default_description()
        variant = config.ur_type
        self.joint_limit_nm = np.array(desc.variant(variant).joint_torque_limit_nm)
        self.max_gripper_opening_m = desc.gripper.max_opening_m
        self.layout = ObservationLayout(self.joint_limit_nm, self.max_gripper_opening_m)
        self.model = RobotModel(variant)
        m = self.model.model
        self.joint_range_rad = np.array([m.jnt_range[m.joint(scene.ARM_PREFIX + n).id] for n in ARM_JOINT_NAMES])
        self.speed_gate_rad_s = SPEED_GATE_FACTOR * np.array(desc.variant(variant).joint_velocity_limit_rad_s)
        self.current_factor = np.array(config.current_to_torque_nm_per_a or np.ones(N_ARM_JOINTS), dtype=float)
        self.start_pose_rad = np.array(desc.home_qpos_rad[:N_ARM_JOINTS], dtype=float)
        self.mode = "passive"  # passive | ready | enabled | fault (require_enable); enabled otherwise
        self._enabled_at: float | None = None
        self._disagreeing: list[ArmState] = []  # consecutive states refused as jumps, newest last
        self._refusals: deque[bool] = deque(maxlen=REFUSAL_WINDOW)  # per joint state: refused?
        self._apply_limits()
        self.policy_period_s = 1.0 / config.policy_rate_hz
        self.stats = Stats()
        self.state: ArmState | None = None
        self.gripper: GripperState | None = None  # with separate_gripper_state
        self.object: ObjectPose | None = None
        self.object_extents = (np.array(config.object_half_extents_m, dtype=float)
                               if config.object_half_extents_m else None)
        self.estopped = False
        self._now_s: float | None = None
        self.program_running: bool | None = None  # with require_program_running: the driver's latest word
        self.reset()

    def _apply_limits(self) -> None:
        cfg = self.config
        self.torque_limit = self.joint_limit_nm * cfg.max_torque_fraction
        self.q_low = self.joint_range_rad[:, 0] + cfg.joint_limit_margin_rad
        self.q_high = self.joint_range_rad[:, 1] - cfg.joint_limit_margin_rad

    def reconfigure(self, **changes) -> NodeConfig:
        """Change limits while running (``LIVE_FIELDS``: safety limits and timeouts). The new
        configuration is validated as a whole first: a ``ConfigError`` changes nothing."""
        fixed = sorted(set(changes) - set(LIVE_FIELDS))
        if fixed:
            raise ConfigError(f"{', '.join(fixed)} cannot change while the node runs: restart it with the new value")
        config = dataclasses.replace(self.config, **changes)  # validates
        self.config = config
        self._apply_limits()
        held = self._held
        if held is not None and not held.stop and self.state is not None:
            # The command held until the next policy step obeys the new limits from the next tick on.
            self._held = Command(self._to_interface(held.torque_nm), held.gripper, False, torque_nm=held.torque_nm)
        return config

    # -- inputs --------------------------------------------------------------------------------

    def _check_not_ahead(self, what: str, stamp_s: float, now_s: float | None) -> None:
        if now_s is not None and stamp_s - now_s > self.config.max_stamp_ahead_s:
            raise MessageError(f"{what} stamped ahead of the node's clock: by {(stamp_s - now_s) * 1e3:.1f} ms "
                               f"(> max_stamp_ahead_s {self.config.max_stamp_ahead_s * 1e3:.1f} ms): clocks not in sync?")

    def on_joint_state(self, names, positions, velocities, efforts, stamp_s: float, now_s: float | None = None) -> None:
        """``now_s``: the node's clock when the message arrived (stamps ahead of it are refused)."""
        try:
            state = parse_joint_state(self.config, names, positions, velocities, efforts, stamp_s, self.need_effort)
            self._effort_to_torque(state)
            self._check_not_ahead("joint_states", state.stamp_s, now_s)
            if self.state is not None and state.stamp_s < self.state.stamp_s:
                raise MessageError(f"out-of-order joint_states: stamp {state.stamp_s:.6f} s is older than the last "
                                   f"accepted {self.state.stamp_s:.6f} s")
            self._check_plausible(state)
        except MessageError as exc:
            self.stats.reject(str(exc))
            self._count_refusal(True)
            raise
        self._count_refusal(False)
        if self.config.separate_gripper_state and self.gripper is not None:
            state.gripper_opening_m, state.gripper_speed_m_s = self.gripper.opening_m, self.gripper.speed_m_s
        self.state = state

    def _count_refusal(self, refused: bool) -> None:
        self._refusals.append(refused)
        if len(self._refusals) == REFUSAL_WINDOW and not self.estopped:
            share = sum(self._refusals) / REFUSAL_WINDOW
            if share > self.config.max_refused_fraction:
                self.estop(f"input fault: {share:.0%} of the last {REFUSAL_WINDOW} joint_states refused")

    def _effort_to_torque(self, state: ArmState) -> None:
        """The effort field as output-side joint torque (N m), per ``effort_kind``."""
        kind = self.config.effort_kind
        if kind == "current":
            state.tau = state.tau * self.current_factor
        elif kind == "gravity_compensated_torque":
            self.model.update(state.q, np.zeros(N_ARM_JOINTS))
            state.tau = state.tau + self.model.gravity_torque()
        if np.any(np.abs(state.tau) > EFFORT_GATE_FACTOR * self.joint_limit_nm):
            raise MessageError(f"implausible joint_states efforts: {np.round(state.tau, 1).tolist()} N m ({kind}) is "
                               f"beyond {EFFORT_GATE_FACTOR:g}x the joint torque limits")

    def _jump(self, state: ArmState, before: ArmState) -> float:
        """How far ``state``'s positions are beyond what the arm can move since ``before`` (rad)."""
        reach = self.speed_gate_rad_s * max(state.stamp_s - before.stamp_s, 0.0) + JUMP_TOLERANCE_RAD
        return float(np.max(np.abs(state.q - before.q) - reach))

    def _check_plausible(self, state: ArmState) -> None:
        low, high = self.joint_range_rad[:, 0] - POSITION_GATE_RAD, self.joint_range_rad[:, 1] + POSITION_GATE_RAD
        if np.any(state.q < low) or np.any(state.q > high):
            raise MessageError(f"implausible joint_states positions: {np.round(state.q, 3).tolist()} rad is outside "
                               "the joint range")
        if np.any(np.abs(state.qd) > self.speed_gate_rad_s):
            raise MessageError(f"implausible joint_states velocities: {np.round(state.qd, 3).tolist()} rad/s is beyond "
                               f"{SPEED_GATE_FACTOR:g}x the joint speed limit")
        if self.state is None or self._jump(state, self.state) <= 0:
            self._disagreeing = []
            return
        agrees = not self._disagreeing or self._jump(state, self._disagreeing[-1]) <= 0
        self._disagreeing = [*self._disagreeing, state][-REANCHOR_STATES:] if agrees else [state]
        if len(self._disagreeing) >= REANCHOR_STATES:  # the last accepted state was the outlier
            self._disagreeing = []
            return
        moved = float(np.max(np.abs(state.q - self.state.q)))
        raise MessageError(f"implausible joint_states jump: a joint moved {moved:.3f} rad in "
                           f"{(state.stamp_s - self.state.stamp_s) * 1e3:.1f} ms, more than it can")

    def on_gripper_state(self, names, positions, velocities, stamp_s: float, now_s: float | None = None) -> None:
        """The gripper driver's JointState (``separate_gripper_state``): the finger joints by name;
        their positions sum to the opening (m)."""
        try:
            if not self.config.separate_gripper_state:
                raise MessageError("gripper state on its own topic, but separate_gripper_state is off")
            names = list(names)
            positions, velocities = np.asarray(positions, dtype=float), np.asarray(velocities, dtype=float)
            if len(positions) != len(names) or len(velocities) not in (0, len(names)):
                raise MessageError(f"malformed gripper state: {len(names)} names, {len(positions)} positions, "
                                   f"{len(velocities)} velocities")
            index = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.config.gripper_joints if n not in index]
            if missing:
                raise MessageError(f"malformed gripper state: missing joints {missing} (have {names})")
            grip = [index[n] for n in self.config.gripper_joints]
            opening = float(positions[grip].sum())
            speed = float(velocities[grip].sum()) if len(velocities) else 0.0
            if not (math.isfinite(opening) and math.isfinite(speed) and math.isfinite(stamp_s)):
                raise MessageError("non-finite gripper state")
            if not -GRIPPER_GATE_M <= opening <= self.max_gripper_opening_m + GRIPPER_GATE_M:
                raise MessageError(f"implausible gripper opening {opening * 1e3:.1f} mm (the jaws open 0-"
                                   f"{self.max_gripper_opening_m * 1e3:.0f} mm)")
            self._check_not_ahead("gripper state", stamp_s, now_s)
            if self.gripper is not None and stamp_s < self.gripper.stamp_s:
                raise MessageError("out-of-order gripper state")
        except MessageError as exc:
            self.stats.reject(str(exc))
            raise
        self.gripper = GripperState(stamp_s, opening, speed)

    def on_object_pose(self, pos, quat_wxyz, stamp_s: float, now_s: float | None = None,
                       frame_id: str | None = None) -> None:
        """``frame_id``: the message's header frame (None: not checked, for callers without one)."""
        try:
            if frame_id is not None and frame_id != self.config.pose_frame:
                raise MessageError(f"object pose in frame {frame_id!r}, expected {self.config.pose_frame!r} (UR's "
                                   "base_link is base turned by pi about z; transform the pose first)")
            pos, quat = np.asarray(pos, dtype=float), np.asarray(quat_wxyz, dtype=float)
            if pos.shape != (3,) or quat.shape != (4,):
                raise MessageError(f"malformed object pose: position {pos.shape}, orientation {quat.shape}")
            if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat)) and math.isfinite(stamp_s)):
                raise MessageError("non-finite object pose")
            norm = float(np.linalg.norm(quat))
            if not 0.9 < norm < 1.1:
                raise MessageError(f"object pose orientation is not a unit quaternion (norm {norm:.3f})")
            self._check_not_ahead("object pose", stamp_s, now_s)
            if self.object is not None and stamp_s < self.object.stamp_s:
                raise MessageError("out-of-order object pose")
        except MessageError as exc:
            self.stats.reject(str(exc))
            raise
        self.object = ObjectPose(stamp_s, pos, quat / norm)

    def on_object_extents(self, extents) -> None:
        try:
            self.object_extents = checked_object_extents(extents)
        except MessageError:
            self.stats.reject("malformed object extents")
            raise

    def on_program_running(self, running: bool) -> None:
        """The robot's External Control program runs (or not). Stopped while enabled is a fault:
        after a program restart the operator re-arms (``reset``, ``enable``)."""
        self.program_running = bool(running)

    def estop(self, reason: str = "e-stop") -> None:
        self.estopped = True
        self.estop_reason = reason

    def check_enable(self) -> None:
        """Raise a ``MessageError`` saying why ``enable`` would be refused now (nothing if it would not)."""
        if not self.config.require_enable:
            raise MessageError("enable: this node runs without the operator gate (require_enable is false)")
        if self.mode != "ready":
            why = {"fault": "a fault is latched: ~/reset first", "enabled": "already enabled",
                   "passive": "not ready (stale or missing inputs, the robot program not running, or the arm "
                              "outside the start region)"}[self.mode]
            raise MessageError(f"enable refused: {why}")

    def enable(self, now_s: float) -> None:
        """The operator's go (``require_enable``): only when ``ready``; a ``MessageError`` says why not."""
        self.check_enable()
        self.mode, self._enabled_at = "enabled", now_s

    def reset(self) -> None:
        """Clear the e-stop and start a new grasp at the next tick with fresh inputs (with the
        operator gate: after a new ``enable``)."""
        self.mode = "passive"
        self._enabled_at = None
        self.estopped = False
        self.estop_reason = ""
        self._refusals.clear()
        self._started = False
        self._next_policy_s = -math.inf
        self._held: Command | None = None
        self._resting_pos: np.ndarray | None = None
        self._gripper_cmd: float | None = None

    # -- output --------------------------------------------------------------------------------

    def stop_command(self, reason: str, brake: bool = True) -> Command:
        """The stop command (module docstring: braking while the arm moves, unless ``brake`` is
        false). The policy's 100 Hz schedule is kept: when fresh inputs return within a policy
        period, the command of that period resumes (the skill machine's clock advances once per
        policy step, never faster)."""
        self.stats.stops += 1
        key = reason.split(":")[0]
        self.stats.stop_reasons[key] = self.stats.stop_reasons.get(key, 0) + 1
        values = self._braking() if brake else None
        if values is None:
            values = np.zeros(N_ARM_JOINTS)
        else:
            self.stats.braking_stops += 1
        return Command(values, self._hold_gripper(), True, reason)

    def _braking(self) -> np.ndarray | None:
        """The braking torque for a stop now, or None (zeros: still, no fresh state, velocity interface)."""
        cfg, s = self.config, self.state
        if cfg.command_interface != "effort" or s is None or self._now_s is None:
            return None
        if self._now_s - s.stamp_s > cfg.state_timeout_s or float(np.max(np.abs(s.qd))) < cfg.still_rad_s:
            return None
        self.model.update(s.q, s.qd, s.gripper_opening_m)
        return self.model.braking_torque(cfg.brake_time_s, cfg.max_brake_torque_fraction * self.joint_limit_nm)

    def _hold_gripper(self) -> float:
        """Keep squeezing what is held: the last gripper command, else the present opening."""
        if self._gripper_cmd is not None:
            return self._gripper_cmd
        if self.state is None or not math.isfinite(self.state.gripper_opening_m):
            return -1.0  # nothing known (no gripper state yet): open
        return float(np.clip(1.0 - 2.0 * self.state.gripper_opening_m / self.max_gripper_opening_m, -1.0, 1.0))

    def tick(self, now_s: float) -> Command:
        """The command for this control period. Never raises on bad inputs: it stops."""
        command = self._tick(now_s)
        if self.config.require_enable:
            if command.stop and self.mode == "enabled":
                self.mode = "fault"  # latched until reset()
            elif command.stop and self.mode == "ready" and not command.reason.startswith("ready"):
                self.mode = "passive"
        return command

    def _tick(self, now_s: float) -> Command:
        self.stats.ticks += 1
        self._now_s = now_s
        cfg = self.config
        if self.estopped:
            return self.stop_command(self.estop_reason)
        if self.state is None:
            return self.stop_command("no joint_states yet")
        age = now_s - self.state.stamp_s
        if age > cfg.state_timeout_s:
            return self.stop_command(f"joint_states stale: {age * 1e3:.1f} ms old > {cfg.state_timeout_s * 1e3:.1f} ms")
        if cfg.separate_gripper_state:
            if self.gripper is None:
                return self.stop_command("no gripper state yet")
            if now_s - self.gripper.stamp_s > cfg.gripper_timeout_s:
                return self.stop_command(f"gripper state stale: {(now_s - self.gripper.stamp_s) * 1e3:.0f} ms old")
            self.state.gripper_opening_m, self.state.gripper_speed_m_s = self.gripper.opening_m, self.gripper.speed_m_s
        if self.object is None:
            return self.stop_command("no object pose yet")
        if now_s - self.object.stamp_s > cfg.object_timeout_s:
            return self.stop_command(f"object pose stale: {(now_s - self.object.stamp_s) * 1e3:.0f} ms old")
        if self.object_extents is None:
            return self.stop_command("object extents unknown")
        if cfg.require_program_running and not self.program_running:
            return self.stop_command("robot program not running" if self.program_running is False
                                     else "robot program state unknown (no robot_program_running message yet)")
        if cfg.require_enable and self.mode != "enabled":
            if self.mode == "fault":
                return self.stop_command("fault latched: ~/reset, then ~/enable")
            off = float(np.max(np.abs(self.state.q - self.start_pose_rad)))
            if off > cfg.start_region_rad:
                self.mode = "passive"
                return self.stop_command(f"arm outside the start region: a joint {off:.2f} rad from the start pose")
            self.mode = "ready"
            return self.stop_command("ready: waiting for ~/enable")
        if self._held is not None and now_s < self._next_policy_s:
            return self._held
        try:
            command = self._policy_step()
        except Exception as exc:  # a policy that throws must not leave a torque on the arm
            command = self.stop_command(f"policy error: {exc!r}")
        # A rejected output stays a stop until the next policy step.
        self._next_policy_s = (now_s if self._next_policy_s == -math.inf else self._next_policy_s) + self.policy_period_s
        if self._next_policy_s < now_s:  # fell behind by more than a period: do not try to catch up
            self._next_policy_s = now_s + self.policy_period_s
        self._held = command
        return command

    def observation(self) -> np.ndarray:
        """The grasp env's observation from the latest joint state and object pose."""
        s, o = self.state, self.object
        if self._resting_pos is None:
            self._resting_pos = o.pos.copy()
        tcp_pos, tcp_rot = self.model.forward_kinematics(s.q)
        return self.layout.encode(
            q_rad=s.q, qd_rad_s=s.qd, tau_nm=s.tau if self.need_effort else None,
            gripper_opening_m=s.gripper_opening_m, gripper_speed_m_s=s.gripper_speed_m_s,
            tcp_pos_m=tcp_pos, tcp_rot=tcp_rot, object_pos_m=o.pos, object_quat_wxyz=o.quat_wxyz,
            object_half_extents_m=self.object_extents,
            goal_m=goal_position(self._resting_pos, self.config.goal_height_m))

    def _policy_step(self) -> Command:
        start = time.perf_counter()
        obs = self.observation()
        if not self._started:
            self.controller.reset(obs)
            self._started = True
        action = np.asarray(self.controller.act(obs), dtype=float)
        self.stats.policy_step_s.append(time.perf_counter() - start)
        self.stats.policy_steps += 1
        if action.shape != (ACTION_SIZE,) or not np.all(np.isfinite(action)):
            return self.stop_command(f"policy output rejected: shape {action.shape}, "
                                     f"finite={bool(np.all(np.isfinite(action)))}")
        torque = np.clip(action[:N_ARM_JOINTS], -1.0, 1.0) * self.joint_limit_nm
        values = self._ramp(self._to_interface(torque))
        if not np.all(np.isfinite(values)):
            return self.stop_command("command conversion produced NaN/Inf")
        self._gripper_cmd = float(np.clip(action[N_ARM_JOINTS], -1.0, 1.0))
        return Command(values, self._gripper_cmd, False, torque_nm=torque)

    def _ramp(self, values: np.ndarray) -> np.ndarray:
        """The torque ramp-in after ``enable``: the command beyond gravity compensation scaled by
        the time since enable / ``torque_ramp_s`` (velocity commands likewise)."""
        if not self.config.require_enable or self._enabled_at is None:
            return values
        scale = min(1.0, max(0.0, (self._now_s - self._enabled_at) / self.config.torque_ramp_s))
        if scale >= 1.0:
            return values
        if self.config.command_interface == "effort" and not self.config.robot_adds_gravity:
            gravity = self.model.gravity_torque()
            return gravity + scale * (values - gravity)
        return scale * values

    def _to_interface(self, tau: np.ndarray) -> np.ndarray:
        s, cfg = self.state, self.config
        self.model.update(s.q, s.qd, s.gripper_opening_m)
        low, high = s.q <= self.q_low, s.q >= self.q_high
        if cfg.command_interface == "effort":
            tau = np.clip(tau, -self.torque_limit, self.torque_limit)
            fast = np.abs(s.qd) > cfg.max_velocity_rad_s
            # Remove what pushes further past a joint limit or further above the velocity limit.
            gravity = self.model.gravity_torque()
            push = tau - gravity
            outward = (low & (push < 0)) | (high & (push > 0)) | (fast & (np.sign(push) == np.sign(s.qd)))
            tau = np.where(outward, gravity, tau)
            return tau - gravity if cfg.robot_adds_gravity else tau
        qdd = np.linalg.solve(self.model.mass_matrix(), tau - self.model.bias_torque())
        v = s.qd + qdd * self.policy_period_s
        v = np.clip(v, -cfg.max_velocity_rad_s, cfg.max_velocity_rad_s)
        v = np.where(low, np.maximum(v, 0.0), v)
        return np.where(high, np.minimum(v, 0.0), v)

