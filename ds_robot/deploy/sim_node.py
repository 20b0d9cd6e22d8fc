"""The MuJoCo sim node: the robot, the gripper and the object over ROS 2, a stand-in for the
UR driver (``ur_robot_driver``) plus a perception node.

Publishes ``/joint_states`` (sensor_msgs/JointState: the 6 UR joints by their driver names,
with ``tf_prefix``, and the gripper's finger joints; efforts are the joint-torque sensors'
readings) at ``rate_hz`` (with ``gripper_joint_states_topic`` set, driver-faithful: the six arm
joints only, as ``ur_robot_driver`` publishes them, and the finger joints in their own
JointState on that topic, as a gripper driver would), the object's pose (geometry_msgs/PoseStamped, frame ``base``) and
half-sizes (std_msgs/Float64MultiArray, transient local), ``/clock``, and the grasp outcome on
``/ds_robot/sim/status`` (std_msgs/String, JSON: object, success, time to lift, energy; in the
shifted and unmodelled worlds also the hidden ``shift``). ``world:=shifted`` (``world_seed``) runs the
physics-shifted MuJoCo of the sim-to-real work instead of the nominal model: a stand-in for a
real arm that is not what the controller's model says; ``world:=unmodelled`` one with physics
outside the estimator's model class (``ds_robot.sim2real.unmodelled``).
Accepts the same command topics as the real controllers (``/forward_effort_controller/commands``
or ``/forward_velocity_controller/commands``, and the gripper's) and holds the last command,
as ros2_control's forward controllers do. ``~/reset`` (std_srvs/Trigger) starts the next
episode (seed + 1).

Real time by default: each timer tick advances the physics by the wall time that passed
(at most ``max_catch_up_steps`` steps), so a late tick does not slow the simulated world.
``real_time_factor`` != 1 runs the world faster or slower; nodes that should follow it set
``use_sim_time:=true`` and read ``/clock``.

    python -m ds_robot.deploy.sim_node --ros-args -p seed:=3 -p command_interface:=effort
"""

from __future__ import annotations

import json
import math
import sys
import time

from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from ds_robot.deploy.core import UR_TYPES
from ds_robot.deploy.ros_common import DEFAULT_TOPICS, node_main
from ds_robot.deploy.sim_core import SimArm
from ds_robot.deploy.ur_driver import MOTION_CONTROLLERS
from ds_robot.errors import ConfigError


class SimNode(Node):
    """``ds_robot_sim``: the MuJoCo arm (``SimArm``) behind the driver's topics."""

    def __init__(self):
        super().__init__("ds_robot_sim")
        if self.get_parameter("use_sim_time").value:
            # This node is the clock: on /clock time its own timers would wait for itself.
            self.set_parameters([Parameter("use_sim_time", Parameter.Type.BOOL, False)])
            self.get_logger().warning("use_sim_time ignored: the sim node publishes /clock and runs on wall time")
        p = self.declare_parameter
        self.realtime_priority = int(p("realtime_priority", 0).value)  # SCHED_FIFO (ros_common)
        robot = p("ur_type", "ur5e").value
        if robot not in UR_TYPES:
            raise ConfigError(f"ur_type {robot!r}: supported are {', '.join(UR_TYPES)}")
        self.command_interface = p("command_interface", "effort").value
        objects = p("objects", "").value or None
        self.arm = SimArm(robot, self.command_interface, bool(p("adds_gravity", True).value), objects,
                          velocity_gain=float(p("velocity_gain", 60.0).value), world=p("world", "nominal").value,
                          world_seed=int(p("world_seed", 0).value))
        self.seed = int(p("seed", 0).value)
        self.rate_hz = float(p("rate_hz", UR_TYPES[robot]["rate_hz"]).value)
        self.factor = float(p("real_time_factor", 1.0).value)
        self.max_catch_up = int(p("max_catch_up_steps", 10).value)
        # A camera-based pose estimate comes at tens of Hz, not at the joint-state rate.
        self.pose_every = max(1, round(self.rate_hz / float(p("object_pose_rate_hz", 100.0).value)))
        self._ticks = 0
        if not (0 < self.rate_hz <= 1.0 / self.arm.dt) or self.factor <= 0 or self.max_catch_up < 1:
            raise ConfigError(f"need 0 < rate_hz <= {1 / self.arm.dt:g}, real_time_factor > 0 and "
                              f"max_catch_up_steps >= 1, got {self.rate_hz}, {self.factor}, {self.max_catch_up}")
        prefix = p("tf_prefix", "").value
        self.frame_id = p("frame_id", prefix + "base").value
        # driver-faithful: the arm's joint_states carry the six arm joints only (as ur_robot_driver's
        # joint_state_broadcaster), the fingers come on their own topic (as a gripper driver's)
        gripper_topic = p("gripper_joint_states_topic", "").value
        self.arm_names = [prefix + n for n in self.arm.arm_joint_names]
        self.names = self.arm_names if gripper_topic else self.arm_names + list(self.arm.gripper_joint_names)
        t = {k: p(k, v).value for k, v in DEFAULT_TOPICS.items()}
        self.pub_joints = self.create_publisher(JointState, t["joint_states_topic"], 10)
        self.pub_gripper_state = self.create_publisher(JointState, gripper_topic, 10) if gripper_topic else None
        self.pub_pose = self.create_publisher(PoseStamped, t["object_pose_topic"], 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pub_extents = self.create_publisher(Float64MultiArray, t["object_extents_topic"], latched)
        self.pub_status = self.create_publisher(String, "/ds_robot/sim/status", latched)
        self.pub_clock = self.create_publisher(Clock, "/clock", 10)
        # as ur_robot_driver's io_and_status_controller: the (simulated) External Control program runs
        self.pub_program = self.create_publisher(Bool, t["program_running_topic"], latched)
        self.pub_program.publish(Bool(data=True))
        self.create_subscription(Float64MultiArray, t[f"{self.command_interface}_command_topic"],
                                 self._on_command, 10)
        self.create_subscription(Float64MultiArray, t["gripper_command_topic"], self._on_gripper, 10)
        self.create_service(Trigger, "~/reset", self._srv_reset)
        self.rejected = 0
        # emulate_controller_manager: as on the real arm, the motion controller starts inactive and
        # commands on its topic move nothing until controller_manager's switch_controller activates it
        self.motion_controller = MOTION_CONTROLLERS[self.command_interface]
        self.active_controllers: set[str] | None = None
        if p("emulate_controller_manager", False).value:
            try:
                from controller_manager_msgs.srv import SwitchController
            except ImportError as exc:
                raise ConfigError("emulate_controller_manager needs controller_manager_msgs") from exc
            self.active_controllers = set()
            self.create_service(SwitchController, "/controller_manager/switch_controller", self._srv_switch)
        self._clock_offset_s = 0.0  # the stamps' time before this episode (real_time_factor != 1)
        self._start_episode()
        self.create_timer(1.0 / self.rate_hz, self._tick)
        self.create_timer(0.1, self._publish_status)
        self.get_logger().info(f"MuJoCo {robot} ({UR_TYPES[robot]['series']}, {self.arm.world} world) taking "
                               f"{self.command_interface} commands, {self.rate_hz:g} Hz, "
                               f"real-time factor {self.factor:g}, episode seed {self.seed}")

    def _start_episode(self) -> None:
        self.arm.reset(self.seed)
        self._wall0 = time.perf_counter()
        self._sim0 = self.arm.time_s
        extents = self.arm.env.setup.obj.half_extents_m
        self.pub_extents.publish(Float64MultiArray(data=[float(e) for e in extents]))
        self._publish_state()
        self._publish_status()

    def _srv_switch(self, request, response):
        """controller_manager's switch_controller, for the one motion controller this arm has (STRICT:
        an unknown name, or activating an active one, fails and changes nothing)."""
        activate, deactivate = set(request.activate_controllers), set(request.deactivate_controllers)
        known = {self.motion_controller}
        problem = (f"unknown controller(s) {sorted((activate | deactivate) - known)}" if (activate | deactivate) - known
                   else "already active" if activate & self.active_controllers
                   else "not active" if deactivate - self.active_controllers else "")
        if problem:
            response.ok, response.message = False, problem
            return response
        self.active_controllers = (self.active_controllers - deactivate) | activate
        if self.motion_controller not in self.active_controllers:
            self.arm.set_command([0.0] * 6)  # a deactivated forward controller writes nothing: the UR holds
        response.ok, response.message = True, f"active: {sorted(self.active_controllers)}"
        return response

    def _on_command(self, msg) -> None:
        if self.active_controllers is not None and self.motion_controller not in self.active_controllers:
            return  # an inactive controller does not read its topic
        try:
            self.arm.set_command(msg.data)
        except ValueError as exc:  # a real controller rejects a wrong-sized command too
            self.rejected += 1
            self.get_logger().warning(f"command ignored: {exc}", throttle_duration_sec=1.0)

    def _on_gripper(self, msg) -> None:
        if len(msg.data) == 1 and math.isfinite(msg.data[0]):
            self.arm.gripper = max(-1.0, min(1.0, float(msg.data[0])))

    def _srv_reset(self, request, response):
        self.seed += 1
        # /clock runs on across episodes: a clock that jumped back to 0 at ~/reset made every
        # later joint state "out of order" for a node on it (a re-arm after a reset never got ready)
        self._clock_offset_s += self.arm.time_s
        self._start_episode()
        response.success, response.message = True, f"episode seed {self.seed}: {self.arm.env.setup.obj.name}"
        return response

    def _tick(self) -> None:
        target = self._sim0 + (time.perf_counter() - self._wall0) * self.factor
        steps = 0
        while self.arm.time_s + 0.5 * self.arm.dt < target and steps < self.max_catch_up:
            self.arm.step()
            steps += 1
        if steps == self.max_catch_up:  # too far behind: let the world slow down rather than jump
            self._wall0 = time.perf_counter()
            self._sim0 = self.arm.time_s
        self._publish_state()

    def stamp(self):
        if self.factor == 1.0:
            return self.get_clock().now().to_msg()
        sec = self._clock_offset_s + self.arm.time_s
        return Time(sec=int(sec), nanosec=int((sec % 1.0) * 1e9))

    def _publish_state(self) -> None:
        s = self.arm.env.state
        stamp = self.stamp()
        half, half_speed = s.gripper_opening_m / 2, s.gripper_speed_m_s / 2
        fingers = dict(position=[half, half], velocity=[half_speed, half_speed], effort=[0.0, 0.0])
        if self.pub_gripper_state is not None:
            js = JointState(name=self.arm_names, position=list(map(float, s.q_rad)),
                            velocity=list(map(float, s.qd_rad_s)), effort=list(map(float, s.tau_measured_nm)))
            grip = JointState(name=list(self.arm.gripper_joint_names), **fingers)
            grip.header.stamp = stamp
            self.pub_gripper_state.publish(grip)
        else:
            js = JointState(name=self.names, position=[*map(float, s.q_rad), *fingers["position"]],
                            velocity=[*map(float, s.qd_rad_s), *fingers["velocity"]],
                            effort=[*map(float, s.tau_measured_nm), *fingers["effort"]])
        js.header.stamp = stamp
        self.pub_joints.publish(js)
        if self._ticks % self.pose_every == 0:
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = stamp, self.frame_id
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, s.object_pos_m)
            o = pose.pose.orientation
            o.w, o.x, o.y, o.z = map(float, s.object_quat)
            self.pub_pose.publish(pose)
        self._ticks += 1
        if self.factor != 1.0:
            self.pub_clock.publish(Clock(clock=stamp))

    def _publish_status(self) -> None:
        info = self.arm.info
        status = {"seed": self.seed, "object": self.arm.env.setup.obj.name, "sim_time_s": self.arm.time_s,
                  "done": self.arm.done, "success": bool(info.get("success", False)),
                  "time_to_lift_s": info.get("time_to_lift_s") if info.get("success") else None,
                  "energy_j": info.get("energy_j", 0.0), "rejected_commands": self.rejected,
                  "world": self.arm.world}
        if self.active_controllers is not None:
            status["active_controllers"] = sorted(self.active_controllers)
        if self.arm.shift is not None:
            status["shift"] = self.arm.shift  # the hidden truth, for scoring an estimator
        self.pub_status.publish(String(data=json.dumps(status)))


def main(argv: list[str] | None = None) -> int:
    return node_main("ds_robot_sim", SimNode, lambda node: None, argv)


if __name__ == "__main__":
    sys.exit(main())
