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
restarts from the nominal model on ``~/reset``.

On SIGINT/SIGTERM, and on any exception in the loop, the last command it sends is a stop.
Runs without torch: the policy is a NumPy (fp32 or int8) file.

    python -m ds_robot.deploy.policy_node --ros-args --params-file config/ur5e_sim.yaml
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from ds_robot.control.contract import Controller
from ds_robot.deploy.controllers import build_controller
from ds_robot.deploy.core import UR_TYPES, ControlCore, MessageError, NodeConfig
from ds_robot.errors import ConfigError

DEFAULT_TOPICS = {
    "joint_states_topic": "/joint_states",
    "object_pose_topic": "/object_pose",
    "object_extents_topic": "/ds_robot/object_extents",
    "estop_topic": "/ds_robot/estop",
    "effort_command_topic": "/forward_effort_controller/commands",
    "velocity_command_topic": "/forward_velocity_controller/commands",
    "gripper_command_topic": "/gripper_controller/commands",
    "diagnostics_topic": "/diagnostics",
}


def default_policy_path() -> str:
    from ds_robot.paths import policies_dir

    return str(policies_dir() / "grasp_hier_int8.npz")


class LoopTimer:
    """Loop periods and command latencies: a sliding window for diagnostics, and the whole run
    (up to ``keep`` samples) for the stats file ``ds-robot bench node`` reads."""

    def __init__(self, period_s: float, window: int = 5000, keep: int = 0):
        self.period_s = period_s
        self.window = deque(maxlen=window)
        self.all_periods = deque(maxlen=keep) if keep else None
        self.state_age = deque(maxlen=keep) if keep else None
        self.late = 0
        self.cycles = 0
        self._last: float | None = None

    def tick(self, t: float) -> None:
        if self._last is not None:
            dt = t - self._last
            self.window.append(dt)
            if self.all_periods is not None:
                self.all_periods.append(dt)
            self.cycles += 1
            if dt > 1.25 * self.period_s:
                self.late += 1
        self._last = t

    def summary(self) -> dict:
        p = np.array(self.window) * 1e3 if self.window else np.zeros(1)
        return {"cycles": self.cycles, "late": self.late, "late_rate": self.late / max(self.cycles, 1),
                "period_p50_ms": float(np.percentile(p, 50)), "period_p99_ms": float(np.percentile(p, 99)),
                "period_max_ms": float(p.max())}


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


def build_node():
    """Create the node (rclpy must be initialised). Raises ConfigError on bad parameters."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PoseStamped
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64MultiArray
    from std_srvs.srv import Trigger

    class PolicyNode(Node):
        def __init__(self):
            super().__init__("ds_robot_policy")
            d = NodeConfig()
            p = self.declare_parameter
            ur_type = p("ur_type", d.ur_type).value
            rate_hz = float(p("rate_hz", UR_TYPES.get(ur_type, UR_TYPES["ur5e"])["rate_hz"]).value)
            self.config = NodeConfig(
                ur_type=ur_type,
                command_interface=p("command_interface", d.command_interface).value,
                rate_hz=rate_hz,
                policy_rate_hz=float(p("policy_rate_hz", d.policy_rate_hz).value),
                tf_prefix=p("tf_prefix", d.tf_prefix).value,
                joint_names=tuple(p("joint_names", list(d.joint_names)).value),
                gripper_joints=tuple(p("gripper_joints", list(d.gripper_joints)).value),
                robot_adds_gravity=bool(p("robot_adds_gravity", d.robot_adds_gravity).value),
                state_timeout_s=float(p("state_timeout_s", 2.0 / rate_hz if rate_hz > 0 else 1.0).value),
                object_timeout_s=float(p("object_timeout_s", d.object_timeout_s).value),
                max_torque_fraction=float(p("max_torque_fraction", d.max_torque_fraction).value),
                max_velocity_rad_s=float(p("max_velocity_rad_s", d.max_velocity_rad_s).value),
                joint_limit_margin_rad=float(p("joint_limit_margin_rad", d.joint_limit_margin_rad).value),
                goal_height_m=float(p("goal_height_m", d.goal_height_m).value),
            )
            extents = list(p("object_half_extents_m", [0.0, 0.0, 0.0]).value)
            kind = p("controller", "hier").value
            policy = p("policy", "").value or default_policy_path()
            runtime = p("runtime", "numpy").value
            self.stats_file = p("stats_file", "").value
            self.topics = {k: p(k, v).value for k, v in DEFAULT_TOPICS.items()}
            correction = bool(p("correction", False).value)
            if correction and self.config.command_interface != "effort":
                raise ConfigError("correction needs command_interface effort: it identifies the arm from the "
                                  "torques it sends")
            if kind == "none":
                if correction:
                    raise ConfigError("correction needs a controller to correct: controller hier or scripted")
                controller = IdleController()
            elif kind in ("hier", "scripted"):
                controller = build_controller(kind, variant=self.config.ur_type,
                                              control_dt_s=1.0 / self.config.policy_rate_hz,
                                              policy=policy if kind == "hier" else None, runtime=runtime,
                                              correction=correction,
                                              max_torque_fraction=self.config.max_torque_fraction)
            else:
                raise ConfigError(f"controller {kind!r}: choose hier, scripted or none")
            self.corrected = controller if correction else None
            self.idle = isinstance(controller, IdleController)
            self.core = ControlCore(self.config, controller)
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
            # Depth 1: a controller wants the newest state, never a backlog of old ones (with a
            # deeper queue, a loop that falls behind once keeps acting on states several periods old).
            sensor_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            self.create_subscription(JointState, t["joint_states_topic"], self._on_joint_state, sensor_qos)
            self.create_subscription(PoseStamped, t["object_pose_topic"], self._on_object_pose, sensor_qos)
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self.create_subscription(Float64MultiArray, t["object_extents_topic"], self._on_extents, latched)
            self.create_subscription(Bool, t["estop_topic"], self._on_estop, 10)
            self.create_service(Trigger, "~/estop", self._srv_estop)
            self.create_service(Trigger, "~/reset", self._srv_reset)
            self.loop = LoopTimer(self.config.period_s, keep=2_000_000 if self.stats_file else 0)
            self._last_reason = None
            self._command_msg = Float64MultiArray()
            self._gripper_msg = Float64MultiArray()
            # trigger "joint_states": a control step runs as each joint state arrives (the driver
            # publishes at the control rate), the timer only covers silence (watchdog). "timer":
            # steps on the timer alone, one executor round after the state arrived.
            self.trigger = p("trigger", "joint_states").value
            if self.trigger not in ("joint_states", "timer"):
                raise ConfigError(f"trigger {self.trigger!r}: choose joint_states or timer")
            self._last_tick = -math.inf
            self.create_timer(self.config.period_s, self._on_timer)
            diagnostics_period_s = float(p("diagnostics_period_s", 1.0).value)
            if not diagnostics_period_s > 0:
                raise ConfigError(f"diagnostics_period_s must be > 0, got {diagnostics_period_s}")
            self.create_timer(diagnostics_period_s, self._publish_diagnostics)

        def now_s(self) -> float:
            return self.get_clock().now().nanoseconds * 1e-9

        # -- inputs ------------------------------------------------------------------------

        def _warn(self, text: str) -> None:
            self.get_logger().warning(text, throttle_duration_sec=1.0)

        def _on_joint_state(self, msg) -> None:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            try:
                self.core.on_joint_state(msg.name, msg.position, msg.velocity, msg.effort, stamp)
            except MessageError as exc:
                self._warn(f"joint_states ignored: {exc}")
                return
            if self.trigger == "joint_states":
                self._tick()

        def _on_timer(self) -> None:
            # Event-driven: tick here only when no joint state drove a tick for 1.5 periods.
            if self.trigger == "timer" or time.perf_counter() - self._last_tick > 1.5 * self.config.period_s:
                self._tick()

        def _on_object_pose(self, msg) -> None:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            pos, q = msg.pose.position, msg.pose.orientation
            try:
                self.core.on_object_pose((pos.x, pos.y, pos.z), (q.w, q.x, q.y, q.z), stamp)
            except MessageError as exc:
                self._warn(f"object pose ignored: {exc}")

        def _on_extents(self, msg) -> None:
            try:
                self.core.on_object_extents(msg.data)
            except MessageError as exc:
                self._warn(f"object extents ignored: {exc}")

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

        def _srv_reset(self, request, response):
            self.core.reset()
            self.get_logger().info("reset: e-stop cleared, a new grasp starts with fresh inputs")
            response.success, response.message = True, "reset"
            return response

        # -- output ------------------------------------------------------------------------

        def publish(self, values, gripper: float) -> None:
            self._command_msg.data = [float(v) for v in values]
            self.pub_command.publish(self._command_msg)
            self._gripper_msg.data = [float(gripper)]
            self.pub_gripper.publish(self._gripper_msg)

        def send_stop(self, reason: str) -> None:
            command = self.core.stop_command(reason)
            self.publish(command.values, command.gripper)

        def _tick(self) -> None:
            now = self.now_s()
            self._last_tick = time.perf_counter()
            self.loop.tick(self._last_tick)
            if self.idle:
                return
            try:
                command = self.core.tick(now)
            except Exception as exc:  # the core does not raise on inputs; anything else is a bug: stop
                self.send_stop(f"internal error {exc!r}")
                self.get_logger().error(f"control loop error, stop sent: {exc!r}")
                return
            self.publish(command.values, command.gripper)
            if self.loop.state_age is not None and self.core.state is not None:
                self.loop.state_age.append(self.now_s() - self.core.state.stamp_s)
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
            steps = np.array(self.core.stats.policy_step_s) * 1e6 if self.core.stats.policy_step_s else np.zeros(1)
            return {**self.loop.summary(), "policy_steps": self.core.stats.policy_steps,
                    "policy_step_p50_us": float(np.percentile(steps, 50)),
                    "policy_step_p99_us": float(np.percentile(steps, 99)),
                    "stops": self.core.stats.stops, "rejected": self.core.stats.rejected,
                    **self.estimate_summary()}

        def estimate_summary(self) -> dict:
            """With correction: the current estimate (as differences from the nominal model, motor
            gains as factors), the steps whose joint-state interval was too irregular to learn
            from, and the estimator's cost per policy step."""
            est = getattr(self.corrected, "estimator", None)  # created at the first policy step
            if est is None or not est.steps:
                return {}
            e = est.estimate()
            cost = np.array(list(itertools.islice(reversed(est.cost_s), 1000))) * 1e6  # the last 1000
            return {"estimate": {k: (v.round(4).tolist() if isinstance(v, np.ndarray) else v) for k, v in e.items()},
                    "estimator_steps": est.steps, "estimator_irregular_intervals": est.irregular,
                    "estimator_p50_us": float(np.percentile(cost, 50)),
                    "estimator_p99_us": float(np.percentile(cost, 99))}

        def write_stats(self) -> None:
            """The whole run's loop periods, command latencies and policy-step times (bench node)."""
            if not self.stats_file:
                return
            data = {**self.diagnostics(), "late_total": self.loop.late,
                    "periods_s": list(self.loop.all_periods),
                    "state_age_s": list(self.loop.state_age),
                    "policy_step_s": list(self.core.stats.policy_step_s)}
            Path(self.stats_file).parent.mkdir(parents=True, exist_ok=True)
            Path(self.stats_file).write_text(json.dumps(data))

    return PolicyNode()


def run_until_signal(node, on_exit) -> int:
    """Spin ``node`` until SIGINT/SIGTERM; ``on_exit()`` runs before the context shuts down
    (so a final message can still be published)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    stopping = []

    def request_stop(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # One executor for the node's lifetime: it works through every callback that was ready in a
    # wait before waiting again. (rclpy.spin_once(node) re-adds the node each call and starts
    # over with the timers, so a loop whose tick overruns its period starves services.)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        while not stopping and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)
    except Exception as exc:
        node.get_logger().error(f"fatal: {exc!r}")
        code = 1
    finally:
        on_exit()
        time.sleep(0.1)  # let DDS deliver the last messages
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


def main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.exceptions import ParameterException
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = build_node()
    except (ConfigError, FileNotFoundError, ParameterException) as exc:
        print(f"ds_robot_policy: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2

    def final_stop():
        if not node.idle:
            for _ in range(3):
                node.send_stop("shutdown")
            node.get_logger().info("shutdown: stop command sent")
        node.write_stats()

    return run_until_signal(node, final_stop)


if __name__ == "__main__":
    sys.exit(main())
