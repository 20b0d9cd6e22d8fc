"""The ROS 2 policy node: a thin rclpy shell over :class:`ds_robot.deploy.core.ControlCore`.

Subscribes ``joint_states`` (sensor_msgs/JointState), ``object_pose``
(geometry_msgs/PoseStamped, base frame), ``object_extents`` (std_msgs/Float64MultiArray, the
object's half-sizes; transient local) and ``estop`` (std_msgs/Bool); publishes the arm command
(std_msgs/Float64MultiArray) on ``/forward_effort_controller/commands`` or
``/forward_velocity_controller/commands``, the gripper command, and diagnostics
(diagnostic_msgs/DiagnosticArray: loop period and policy-step percentiles, late cycles, stops,
rejected messages; with correction the current physics estimate). Services ``~/estop`` and
``~/reset`` (std_srvs/Trigger).

``correction:=true`` (effort interface only) runs the controller under online sim-to-real
correction (:class:`ds_robot.sim2real.correction.CorrectedController`): an RLS estimator of the
arm's motor gains, damping, friction, armature and payload from the measured joint states and
the torques sent, written into the controller's MuJoCo model every policy step. The estimate
restarts from the nominal model on ``~/reset``. ``correction_filter_hz`` (default 4.0) is the
estimator's low-pass for noisy joint velocities; 0.0 selects finite differences, for
noise-free velocities only (a simulated arm). ``correction_latency_evidence`` (default 1.25) is
how much better the identified command latency must explain the data than no latency before it
is compensated (1.0: always; sim2real/correction.py).

``in_hand_vision`` (default true, as the shipped policies were trained and as the sim node
publishes the object): whether the object pose topic keeps tracking an object between the
fingers. A camera over the table does not (the gripper hides it): there set it false, and the
skill machine judges a lifted hand from the jaws and the joint torques alone (a stale pose
trusted in the hand reads every lifted object as left behind, and the machine lets go of it to
grasp again). A policy for such a cell is trained with ``--task occluded``.

Parameters are checked when set: a ``ros2 param set`` of a safety limit or timeout
(``max_torque_fraction``, ``max_velocity_rad_s``, ``joint_limit_margin_rad``,
``state_timeout_s``, ``object_timeout_s``) or of ``object_half_extents_m`` takes effect at the
next tick (the command held between policy steps is re-limited too) or is refused with the
reason (an impossible value); ``use_sim_time`` is rclpy's own; every other parameter is read at
start-up, and setting it while the node runs is refused (restart the node instead).

On SIGINT/SIGTERM, and on any exception in the loop, the last command it sends is a stop.
Runs without torch: the policy is a NumPy (fp32 or int8) file.

    python -m ds_robot.deploy.policy_node --ros-args --params-file config/ur5e_sim.yaml
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from ds_robot.control.contract import Controller
from ds_robot.deploy.controllers import build_controller, skill_machine
from ds_robot.deploy.core import LIVE_FIELDS, UR_TYPES, ControlCore, MessageError, NodeConfig, checked_object_extents
from ds_robot.deploy.loop_stats import LoopTimer, RunRecorder
from ds_robot.deploy.ros_common import DEFAULT_TOPICS, node_main, stamp_s
from ds_robot.deploy.supervisor import PROCESS_TOPIC as SUPERVISOR_PROCESS_TOPIC
from ds_robot.deploy.supervisor import STATE_TOPIC as SUPERVISOR_STATE_TOPIC
from ds_robot.deploy.supervisor import boot_id
from ds_robot.deploy.ur_driver import MOTION_CONTROLLERS
from ds_robot.errors import ConfigError
from ds_robot.paths import policies_dir

NODE_CONTROLLERS = ("hier", "scripted", "none")
JOINT_STATE_QUEUE = 10  # joint states taken per control step at most (the subscription's depth)
DIAGNOSTICS_WINDOW = 1000  # /diagnostics statistics over the last this many samples


def default_policy_path() -> str:
    return str(policies_dir() / "grasp_hier_int8.npz")


class IdleController(Controller):
    """``controller: none``: the loop runs and publishes nothing but diagnostics (the floor
    ``ds-robot bench node`` compares against). It is never asked to act."""

    name = "none"
    robot_model = None
    uses_torque_features = False

    def reset(self, obs: np.ndarray) -> None:
        raise RuntimeError("the idle controller never runs a grasp")

    def act(self, obs: np.ndarray) -> np.ndarray:
        raise RuntimeError("the idle controller never acts")


class PolicyNode(Node):
    """``ds_robot_policy``: parameters -> :class:`ControlCore`; messages in, commands out.
    ``node_options`` go to ``rclpy.node.Node`` (a context, parameter overrides: tests)."""

    def __init__(self, **node_options):
        super().__init__("ds_robot_policy", **node_options)
        d = NodeConfig()
        p = self.declare_parameter
        self.realtime_priority = int(p("realtime_priority", 0).value)  # SCHED_FIFO (ros_common.apply_realtime_priority)
        ur_type = p("ur_type", d.ur_type).value
        rate_hz = float(p("rate_hz", UR_TYPES.get(ur_type, UR_TYPES["ur5e"])["rate_hz"]).value)
        effort_kind = p("effort_kind", d.effort_kind).value
        factors = tuple(float(k) for k in p("current_to_torque_nm_per_a", [0.0] * 6).value)
        self.config = NodeConfig(
            ur_type=ur_type,
            command_interface=p("command_interface", d.command_interface).value,
            rate_hz=rate_hz,
            policy_rate_hz=float(p("policy_rate_hz", d.policy_rate_hz).value),
            tf_prefix=p("tf_prefix", d.tf_prefix).value,
            joint_names=tuple(p("joint_names", list(d.joint_names)).value),
            gripper_joints=tuple(p("gripper_joints", list(d.gripper_joints)).value),
            robot_adds_gravity=bool(p("robot_adds_gravity", d.robot_adds_gravity).value),
            state_timeout_s=float(p("state_timeout_s", min(10.0 / rate_hz, 0.04) if rate_hz > 0 else 1.0).value),
            object_timeout_s=float(p("object_timeout_s", d.object_timeout_s).value),
            max_torque_fraction=float(p("max_torque_fraction", d.max_torque_fraction).value),
            max_velocity_rad_s=float(p("max_velocity_rad_s", d.max_velocity_rad_s).value),
            joint_limit_margin_rad=float(p("joint_limit_margin_rad", d.joint_limit_margin_rad).value),
            max_stamp_ahead_s=float(p("max_stamp_ahead_s", d.max_stamp_ahead_s).value),
            goal_height_m=float(p("goal_height_m", d.goal_height_m).value),
            # empty: the finger joints are in the arm's joint_states (the sim node's default)
            effort_kind=effort_kind,
            current_to_torque_nm_per_a=factors if effort_kind == "current" else (),
            max_refused_fraction=float(p("max_refused_fraction", d.max_refused_fraction).value),
            require_enable=bool(p("require_enable", d.require_enable).value),
            torque_ramp_s=float(p("torque_ramp_s", d.torque_ramp_s).value),
            start_region_rad=float(p("start_region_rad", d.start_region_rad).value),
            separate_gripper_state=bool(p("gripper_joint_states_topic", "").value),
            gripper_timeout_s=float(p("gripper_timeout_s", d.gripper_timeout_s).value),
            object_frame_id=p("object_frame_id", "").value or None,
            require_program_running=bool(p("require_program_running", d.require_program_running).value),
            brake_time_s=float(p("brake_time_s", d.brake_time_s).value),
            max_brake_torque_fraction=float(p("max_brake_torque_fraction", d.max_brake_torque_fraction).value),
            still_rad_s=float(p("still_rad_s", d.still_rad_s).value),
        )
        extents = list(p("object_half_extents_m", [0.0, 0.0, 0.0]).value)
        kind = p("controller", "hier").value
        policy = p("policy", "").value or default_policy_path()
        runtime = p("runtime", "numpy").value
        stats_file = p("stats_file", "").value
        self.topics = {k: p(k, v).value for k, v in DEFAULT_TOPICS.items()}
        correction = bool(p("correction", False).value)
        # whether the object's pose topic follows an object in the hand; false (a camera over the
        # table, which the gripper occludes): the skill machine reads a lifted hand's contents from
        # the jaws and the joint torques only (ScriptedGraspController.in_hand_vision)
        in_hand_vision = bool(p("in_hand_vision", True).value)
        # The estimator's low-pass (Hz; 0: finite differences, only for velocities with well under
        # 1e-3 rad/s of noise: see sim2real/estimator.py).
        from ds_robot.sim2real.estimator import EstimatorConfig

        # checked whether or not correction is on: an impossible value is refused, not ignored
        estimator = EstimatorConfig(filter_hz=float(p("correction_filter_hz", EstimatorConfig().filter_hz).value) or None)
        from ds_robot.sim2real.correction import LATENCY_EVIDENCE_RATIO, check_latency_evidence_ratio

        latency_evidence = check_latency_evidence_ratio(float(p("correction_latency_evidence",
                                                                LATENCY_EVIDENCE_RATIO).value))
        # trigger "joint_states": a control step runs as each joint state arrives (the driver
        # publishes at the control rate), the timer only covers silence (watchdog). "timer":
        # steps on the timer alone, one executor round after the state arrived.
        self.trigger = p("trigger", "joint_states").value
        diagnostics_period_s = float(p("diagnostics_period_s", 1.0).value)
        if self.trigger not in ("joint_states", "timer"):
            raise ConfigError(f"trigger {self.trigger!r}: choose joint_states or timer")
        if not diagnostics_period_s > 0:
            raise ConfigError(f"diagnostics_period_s must be > 0, got {diagnostics_period_s}")
        if correction and self.config.command_interface != "effort":
            raise ConfigError("correction needs command_interface effort: it identifies the arm from the "
                              "torques it sends")

        self.controller = self._controller(kind, policy, runtime, correction, estimator if correction else None,
                                           latency_evidence)
        self.corrected = self.controller if correction else None
        machine = skill_machine(self.controller)
        if machine is not None:
            machine.in_hand_vision = in_hand_vision
        self.machine = machine
        self.idle = kind == "none"
        self.core = ControlCore(self.config, self.controller)
        if self.corrected is not None:  # accelerations over the joint states' measured intervals
            self.corrected.state_stamp = lambda: self.core.state.stamp_s
        if any(e > 0 for e in extents):
            try:
                self.core.on_object_extents(extents)
            except MessageError as exc:
                raise ConfigError(f"parameter object_half_extents_m: {exc}") from exc
        self.get_logger().info(
            f"{kind} controller ({policy if kind == 'hier' else 'model-based'}"
            f"{', online correction' if correction else ''}) on {self.config.ur_type} "
            f"{UR_TYPES[self.config.ur_type]['series']}, {self.config.command_interface} interface at "
            f"{self.config.rate_hz:g} Hz, policy at {self.config.policy_rate_hz:g} Hz")

        t = self.topics
        command_topic = t[f"{self.config.command_interface}_command_topic"]
        self.pub_command = self.create_publisher(Float64MultiArray, command_topic, 10)
        self.pub_gripper = self.create_publisher(Float64MultiArray, t["gripper_command_topic"], 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, t["diagnostics_topic"], 10)
        # Depth 1 for poses: a controller wants the newest, never a backlog of old ones.
        sensor_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        # Joint states: every one is checked in order (the jump gate compares consecutive
        # states), but the control step acts on the newest only: each callback first takes what
        # else is queued. With depth 1 a refused message arriving just after a real one evicted
        # it (a corrupted stream starved the node of valid states although one came every 2 ms).
        self.sub_joints = self.create_subscription(JointState, t["joint_states_topic"], self._on_joint_state,
                                                   QoSProfile(depth=JOINT_STATE_QUEUE,
                                                              reliability=ReliabilityPolicy.RELIABLE))
        self.create_subscription(PoseStamped, t["object_pose_topic"], self._on_object_pose, sensor_qos)
        if self.config.separate_gripper_state:
            self.create_subscription(JointState, self.get_parameter("gripper_joint_states_topic").value,
                                     self._on_gripper_state, sensor_qos)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Float64MultiArray, t["object_extents_topic"], self._on_extents, latched)
        self.create_subscription(Bool, t["estop_topic"], self._on_estop, 10)
        if self.config.require_program_running:
            self.create_subscription(Bool, t["program_running_topic"], self._on_program_running, latched)
        # the supervisor (ds_robot.deploy.supervisor) owns the command topic while it brakes
        self.supervisor_state = "none"
        # best effort: a reliable reader that stops (SIGSTOP) could hold up the supervisor's writes
        self.create_subscription(String, SUPERVISOR_STATE_TOPIC, self._on_supervisor,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        # who we are, for the supervisor's process watch (it brakes at once when this process dies or stops)
        self.pub_process = self.create_publisher(String, SUPERVISOR_PROCESS_TOPIC, latched)
        self.pub_process.publish(String(data=json.dumps({"pid": os.getpid(), "boot_id": boot_id()})))
        self.create_service(Trigger, "~/estop", self._srv_estop)
        self.create_service(Trigger, "~/reset", self._srv_reset)
        self.create_service(Trigger, "~/enable", self._srv_enable)
        self._setup_controller_switching(p)
        self.loop = LoopTimer(self.config.period_s)
        self.recorder = RunRecorder(stats_file) if stats_file else None
        self._last_reason = None
        self._command_msg = Float64MultiArray()
        self._gripper_msg = Float64MultiArray()
        self._last_tick = -math.inf
        self.create_timer(self.config.period_s, self._on_timer)
        self.create_timer(diagnostics_period_s, self._publish_diagnostics)
        # Registered last: the declarations above are not "sets" to check.
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _controller(self, kind: str, policy: str, runtime: str, correction: bool,
                    estimator=None, latency_evidence: float | None = None) -> Controller:
        if kind not in NODE_CONTROLLERS:
            raise ConfigError(f"controller {kind!r}: choose {', '.join(NODE_CONTROLLERS)}")
        if kind == "none":
            if correction:
                raise ConfigError("correction needs a controller to correct: controller hier or scripted")
            return IdleController()
        hier = {"policy": policy, "runtime": runtime} if kind == "hier" else {}  # scripted: no policy to run
        return build_controller(kind, variant=self.config.ur_type, control_dt_s=1.0 / self.config.policy_rate_hz,
                                correction=correction, max_torque_fraction=self.config.max_torque_fraction, **hier,
                                **({"config": estimator, "latency_evidence_ratio": latency_evidence} if estimator else {}))

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- parameters set while running ------------------------------------------------------------

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Apply a set of safety limits / timeouts / object size atomically, or refuse all of it."""
        changes, extents = {}, None
        for param in params:
            if param.name == "use_sim_time":  # rclpy's own: the clock follows /clock
                continue
            if param.name == "object_half_extents_m":
                extents = list(param.value)
            elif param.name in LIVE_FIELDS:
                changes[param.name] = float(param.value)
            else:
                return SetParametersResult(successful=False, reason=f"{param.name} is read at start-up: restart the "
                                           "node to change it")
        try:
            if extents is not None:
                checked_object_extents(extents)
            config = self.core.reconfigure(**changes) if changes else self.config
        except (ConfigError, MessageError) as exc:
            self.get_logger().warning(f"parameter set refused: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        if extents is not None:
            self.core.on_object_extents(extents)
        if "max_torque_fraction" in changes and self.corrected is not None:
            self.corrected.set_command_limit(self.core.torque_limit)
        self.config = config
        if changes or extents is not None:
            applied = {**changes, **({"object_half_extents_m": extents} if extents is not None else {})}
            self.get_logger().info(f"parameters set: {applied}")
        return SetParametersResult(successful=True)

    # -- inputs ----------------------------------------------------------------------------------

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=1.0)

    def _accept_joint_state(self, msg) -> bool:
        try:
            self.core.on_joint_state(msg.name, msg.position, msg.velocity, msg.effort, stamp_s(msg.header),
                                     self.now_s())
        except MessageError as exc:
            self._warn(f"joint_states ignored: {exc}")
            return False
        return True

    def _take_queued_joint_states(self) -> bool:
        """Check every joint state still queued (in order); True when one was accepted."""
        accepted = False
        handle = self.sub_joints.handle
        for _ in range(JOINT_STATE_QUEUE):
            with handle:
                taken = handle.take_message(self.sub_joints.msg_type, self.sub_joints.raw)
            if taken is None:
                break
            accepted = self._accept_joint_state(taken[0]) or accepted
        return accepted

    def _on_joint_state(self, msg) -> None:
        accepted = self._accept_joint_state(msg)
        accepted = self._take_queued_joint_states() or accepted
        if accepted and self.trigger == "joint_states":
            self._tick()

    def _on_timer(self) -> None:
        # Event-driven: tick here only when no joint state drove a tick for 1.5 periods. The
        # executor runs timers before subscriptions: after a stall of this process, a state that is
        # already here must be read first, or the watchdog would stop the arm on the one before it.
        if self.trigger == "timer" or time.perf_counter() - self._last_tick > 1.5 * self.config.period_s:
            self._take_queued_joint_states()
            self._tick()

    def _on_program_running(self, msg) -> None:
        if msg.data != self.core.program_running:
            if msg.data:  # (one severity per logging call site: rclpy's rule)
                self.get_logger().info("robot program running")
            else:
                self.get_logger().error("robot program NOT running: stop (a fault once enabled)")
        self.core.on_program_running(msg.data)

    def _on_gripper_state(self, msg) -> None:
        try:
            self.core.on_gripper_state(msg.name, msg.position, msg.velocity, stamp_s(msg.header), self.now_s())
        except MessageError as exc:
            self._warn(f"gripper state ignored: {exc}")

    def _on_object_pose(self, msg) -> None:
        pos, q = msg.pose.position, msg.pose.orientation
        try:
            self.core.on_object_pose((pos.x, pos.y, pos.z), (q.w, q.x, q.y, q.z), stamp_s(msg.header), self.now_s(),
                                     msg.header.frame_id)
        except MessageError as exc:
            self._warn(f"object pose ignored: {exc}")

    def _on_extents(self, msg) -> None:
        try:
            self.core.on_object_extents(msg.data)
        except MessageError as exc:
            self._warn(f"object extents ignored: {exc}")

    def _on_supervisor(self, msg) -> None:
        try:
            state = str(json.loads(msg.data)["state"])
        except (ValueError, KeyError, TypeError):
            self._warn(f"supervisor state ignored: not the supervisor's JSON: {msg.data[:80]!r}")
            return
        if state in ("braking", "stopped") and self.supervisor_state not in ("braking", "stopped"):
            self.core.estop(f"supervisor {state}")
            self.get_logger().error(f"the supervisor is {state}: this node stops publishing and stays e-stopped "
                                    "until ~/reset after the supervisor's ~/rearm")
        self.supervisor_state = state

    def _on_estop(self, msg) -> None:
        if msg.data:
            self.core.estop("e-stop topic")
            self.get_logger().error("E-STOP (topic): stop command latched until ~/reset")
            self._tick()  # stop now, not at the next period

    def _srv_estop(self, request, response):
        self.core.estop("e-stop service")
        self.get_logger().error("E-STOP (service): stop command latched until ~/reset")
        self._tick()
        response.success, response.message = True, "stop command latched"
        return response

    # -- the motion controller (switch_controller_on_enable) --------------------------------------

    def _setup_controller_switching(self, p) -> None:
        """With the operator gate and ``switch_controller_on_enable``: ``~/enable`` activates the
        motion controller through controller_manager's ``switch_controller`` and enables the
        policy only when that succeeded; after a fault, once the braking stop has the arm at rest,
        the node deactivates it again (the driver then holds the arm; re-arm: ``~/reset``, ``~/enable``)."""
        self.switch_client = None
        self.controller_active: bool | None = None  # None: not managed by this node
        self._switch_pending = None  # the request in flight: "activate" | "deactivate"
        switching = bool(p("switch_controller_on_enable", False).value)
        self.motion_controller = p("motion_controller", "").value or MOTION_CONTROLLERS[self.config.command_interface]
        manager = p("controller_manager", "/controller_manager").value
        if not (switching and self.config.require_enable):
            return
        try:
            from controller_manager_msgs.srv import SwitchController
        except ImportError as exc:
            raise ConfigError("switch_controller_on_enable needs controller_manager_msgs (ros2_control; "
                              "apt install ros-$ROS_DISTRO-controller-manager-msgs), or set it false and "
                              "switch controllers by hand") from exc
        self._switch_type = SwitchController
        self.switch_client = self.create_client(SwitchController, f"{manager}/switch_controller")
        self.controller_active = False

    def _request_switch(self, activate: bool) -> None:
        request = self._switch_type.Request()
        request.activate_controllers = [self.motion_controller] if activate else []
        request.deactivate_controllers = [] if activate else [self.motion_controller]
        request.strictness = self._switch_type.Request.STRICT
        request.activate_asap = True
        request.timeout.sec = 2
        self._switch_pending = "activate" if activate else "deactivate"
        self.switch_client.call_async(request).add_done_callback(lambda future: self._on_switched(activate, future))

    def _on_switched(self, activate: bool, future) -> None:
        self._switch_pending = None
        result = future.result() if future.exception() is None else None
        what = f"{'activate' if activate else 'deactivate'} {self.motion_controller}"
        if result is None or not result.ok:
            detail = getattr(result, "message", "") if result is not None else repr(future.exception())
            self.get_logger().error(f"controller_manager refused to {what}: {detail or 'no reason given'}")
            return
        self.controller_active = activate
        if not activate:
            self.get_logger().info(f"{self.motion_controller} deactivated (fault): ~/reset, then ~/enable")
            return
        try:
            self.core.enable(self.now_s())
        except MessageError as exc:  # the inputs went stale while the switch ran
            self.get_logger().error(f"{self.motion_controller} active, but {exc}")
            return
        self.get_logger().info(f"enabled: {self.motion_controller} active, the policy drives the arm, ramping in "
                               f"over {self.config.torque_ramp_s:g} s")

    def _deactivate_at_rest(self, command) -> None:
        """After a fault: the braking stop first, then (the arm at rest) the controller off."""
        if (self.controller_active and self._switch_pending is None and self.core.mode == "fault"
                and command.stop and not np.any(command.values)):
            self._request_switch(activate=False)

    def _srv_enable(self, request, response):
        if self.switch_client is not None:
            try:
                self.core.check_enable()
                if self._switch_pending is not None:
                    raise MessageError(f"enable refused: a controller {self._switch_pending} is in flight")
                if not self.switch_client.service_is_ready():
                    raise MessageError(f"enable refused: {self.switch_client.srv_name} is not available")
            except MessageError as exc:
                response.success, response.message = False, str(exc)
                return response
            if self.controller_active:  # still active (the inputs went stale during the last switch):
                self.core.enable(self.now_s())  # a STRICT activate of an active controller would fail
                response.success, response.message = True, f"enabled ({self.motion_controller} already active)"
                return response
            self._request_switch(activate=True)
            response.success = True
            response.message = f"activating {self.motion_controller}: enabled once controller_manager confirms"
            return response
        try:
            self.core.enable(self.now_s())
        except MessageError as exc:
            response.success, response.message = False, str(exc)
            return response
        self.get_logger().info(f"enabled: the policy drives the arm, ramping in over {self.config.torque_ramp_s:g} s")
        response.success, response.message = True, "enabled"
        return response

    def _srv_reset(self, request, response):
        if self.supervisor_state in ("braking", "stopped"):
            response.success = False
            response.message = f"the supervisor is {self.supervisor_state}: re-arm it first (ds_robot_supervisor/rearm)"
            return response
        self.core.reset()
        self.get_logger().info("reset: e-stop cleared, a new grasp starts with fresh inputs")
        response.success, response.message = True, "reset"
        return response

    # -- output ----------------------------------------------------------------------------------

    def publish(self, values, gripper: float) -> None:
        self._command_msg.data = [float(v) for v in values]
        self.pub_command.publish(self._command_msg)
        self._gripper_msg.data = [float(gripper)]
        self.pub_gripper.publish(self._gripper_msg)

    def send_stop(self, reason: str, brake: bool = True) -> None:
        command = self.core.stop_command(reason, brake=brake)
        self.publish(command.values, command.gripper)

    def _tick(self) -> None:
        now = self.now_s()
        self._last_tick = time.perf_counter()
        period = self.loop.tick(self._last_tick)
        if self.recorder is not None and period is not None:
            self.recorder.periods_s.append(period)
        if self.idle or self.supervisor_state in ("braking", "stopped"):
            return  # the supervisor's brake owns the command topic
        try:
            command = self.core.tick(now)
        except Exception as exc:  # the core does not raise on inputs; anything else is a bug: stop
            self.send_stop(f"internal error {exc!r}")
            self.get_logger().error(f"control loop error, stop sent: {exc!r}")
            return
        self.publish(command.values, command.gripper)
        if self.switch_client is not None:
            self._deactivate_at_rest(command)
        if self.recorder is not None and self.core.state is not None:
            self.recorder.state_age_s.append(self.now_s() - self.core.state.stamp_s)
        # Log changes of kind (not of milliseconds), at most once a second each: a watchdog
        # flickering at 500 Hz must not flood the log.
        reason = command.reason.split(":")[0] if command.stop else None
        if reason != self._last_reason:
            if reason:
                self.get_logger().error(f"STOP: {command.reason}", throttle_duration_sec=1.0)
            elif self._last_reason:
                self.get_logger().info("running the policy", throttle_duration_sec=1.0)
            self._last_reason = reason

    def _publish_diagnostics(self) -> None:
        summary = self.diagnostics()
        status = DiagnosticStatus(name="ds_robot_policy: control loop", hardware_id=self.config.ur_type)
        status.level = DiagnosticStatus.OK if self._last_reason is None else DiagnosticStatus.ERROR
        status.message = self._last_reason or "running"
        status.values = [KeyValue(key=k, value=json.dumps(v)) for k, v in summary.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def diagnostics(self) -> dict:
        # The last 1000 steps only: this runs in the control thread, and percentiles over the whole
        # run's 100,000-step history took 16 ms (a gap in the command stream every diagnostics period)
        recent = list(itertools.islice(reversed(self.core.stats.policy_step_s), DIAGNOSTICS_WINDOW))
        steps = np.array(recent) * 1e6 if recent else np.zeros(1)
        return {**self.loop.summary(), "policy_steps": self.core.stats.policy_steps,
                "policy_step_p50_us": float(np.percentile(steps, 50)),
                "policy_step_p99_us": float(np.percentile(steps, 99)),
                "mode": self.core.mode if self.config.require_enable else "ungated",
                "motion_controller_active": self.controller_active,
                "stops": self.core.stats.stops, "braking_stops": self.core.stats.braking_stops,
                "stop_reasons": self.core.stats.stop_reasons,
                "rejected": self.core.stats.rejected,
                # "out_of_reach": the perceived object is where the machine does not go (near the
                # base axis, beyond reach, or not a number); the arm holds until it is seen in reach
                "grasp_phase": self.machine.phase if self.machine is not None else None,
                "limits": {name: getattr(self.core.config, name) for name in LIVE_FIELDS},
                **self.estimate_summary()}

    def estimate_summary(self) -> dict:
        """With correction: the current estimate (as differences from the nominal model, motor
        gains as factors), the steps whose joint-state interval was too irregular to learn
        from, and the estimator's cost per policy step."""
        est = self.corrected.estimator if self.corrected is not None else None  # created at the first policy step
        if est is None or not est.steps:
            return {}
        e = est.estimate()
        cost = np.array(list(itertools.islice(reversed(est.cost_s), DIAGNOSTICS_WINDOW))) * 1e6
        return {"estimate": {k: (v.round(4).tolist() if isinstance(v, np.ndarray) else v) for k, v in e.items()},
                "estimator_steps": est.steps, "estimator_irregular_intervals": est.irregular,
                "estimator_p50_us": float(np.percentile(cost, 50)),
                "estimator_p99_us": float(np.percentile(cost, 99))}

    def shutdown_stop(self) -> None:
        """The last commands before the node exits: stops (the forward controllers hold the last
        command forever), then the bench's stats file."""
        if not self.idle:
            for _ in range(3):
                self.send_stop("shutdown", brake=False)  # held by the controller after we exit: zeros
            self.get_logger().info("shutdown: stop command sent")
        if self.recorder is not None:
            self.recorder.write(self.diagnostics(), self.core.stats.policy_step_s)


def main(argv: list[str] | None = None) -> int:
    return node_main("ds_robot_policy", PolicyNode, PolicyNode.shutdown_stop, argv)


if __name__ == "__main__":
    sys.exit(main())
