"""A stop that survives the policy node's death: an independent supervisor process.

ros2_control's forward controllers hold the last command forever (ros2_controllers issue #95),
so a policy node killed by SIGKILL or the OOM killer, stopped (SIGSTOP, a debugger, a hang) or
cut off by a DDS partition leaves its last torque on the arm; its own shutdown stop never runs.
This node watches the command stream and, when no command has arrived for
``command_timeout_s`` (default 20 ms; UR's own ``robot_receive_timeout`` default is 40 ms),
**brakes**: ``tau = -M(q) qd / brake_time_s`` (effort interface: the joint velocities decay
with time constant ``brake_time_s``, whatever each joint's inertia; the arm's nominal model
gives ``M``; clipped to ``max_brake_torque_fraction`` of the joint limits) until every joint is
slower than ``still_rad_s`` for ``still_s``, then zero torque (a UR
compensates gravity itself: the arm holds its pose); on the velocity interface (CB3) it commands
zero velocity at once. The supervisor then stays latched (state ``stopped``) until
``~/rearm`` (std_srvs/Trigger), and publishes its state on ``/ds_robot/supervisor/state``
(std_msgs/String, JSON, transient local, on every change and at 10 Hz), which the policy node
obeys (it reads it best-effort: a reader in a SIGSTOPped process must not be able to hold up
the supervisor's writes): while the supervisor is
braking or stopped the policy node latches its e-stop (a node that was only stopped must not
resume driving the arm when it continues).

The supervisor does not switch controllers: the damping brake goes through the same command
topic the policy uses, which works whatever else has died. (After its own faults the policy
node deactivates the motion controller once the arm is at rest: ``switch_controller_on_enable``.)

**Process watch** (same host): the policy node announces its PID and boot id on
``/ds_robot/policy/process`` (transient local). When the supervisor runs on the same machine
(same ``/proc/sys/kernel/random/boot_id``) it also watches that process: killed (SIGKILL, the
OOM killer, a crash: it is gone or a zombie) or stopped (SIGSTOP, a debugger: state ``T``/``t``)
brakes at the next check (1 ms), without waiting for the command timeout. The timeout still
covers what a process state cannot show: a hang inside a live process, a DDS partition, a
policy node on another machine.

Its own commands carry a layout dimension labelled ``ds_robot_supervisor`` (the forward
controllers read only ``data``) and are never mistaken for the policy's. Before the first policy command it has nothing to supervise, and a
silence after a stop command (all zeros) with the arm at rest leaves nothing on the arm: it
brakes when the last command drove the arm or the arm is moving.

    python -m ds_robot.deploy.supervisor --ros-args -p command_interface:=effort
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np

from ds_robot.errors import ConfigError

STATES = ("idle", "watching", "braking", "stopped")
STATE_TOPIC = "/ds_robot/supervisor/state"
PROCESS_TOPIC = "/ds_robot/policy/process"  # the policy node's {"pid", "boot_id"}, transient local
# The supervisor's DDS over UDP only: with Fast DDS's shared-memory transport, a write towards a
# participant whose process is stopped (SIGSTOP) waits for that port's health check (~1 s)
# before it gives up, and the brake came 1 s late (measured in the SIGSTOP test).
SUPERVISOR_ENV = {"FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
MARK = "ds_robot_supervisor"  # the layout label of the supervisor's own commands


def boot_id() -> str:
    """This machine's boot id (a PID means something only on the machine, and boot, it came from)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


PF_EXITING = 0x4  # /proc/<pid>/stat flags: the process has begun to exit (linux/sched.h)


def process_state(pid: int) -> str:
    """``running``, ``stopped`` (SIGSTOP or a tracer) or ``gone`` (exiting, killed, a zombie) for
    a process on this machine. A signal counts from the moment it is sent: a SIGKILL or SIGSTOP
    still pending (``/proc/<pid>/status``: ShdPnd, SigPnd) already says it, before the target is
    scheduled to act on it (on a loaded machine that took 20-30 ms, and an exiting process stays
    in state R while it frees its memory: ``PF_EXITING`` in ``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return "gone"
    fields = stat[stat.rindex(b")") + 2:].split()  # after "(comm)": state, ppid, pgrp, session, tty, tpgid, flags
    state, flags = fields[0], int(fields[6])
    pending = 0
    for line in status.splitlines():
        if line.startswith((b"ShdPnd:", b"SigPnd:")):
            pending |= int(line.split(b":")[1].strip(), 16)
    if state in (b"Z", b"X", b"x") or flags & PF_EXITING or pending & (1 << (signal.SIGKILL - 1)):
        return "gone"
    if state in (b"T", b"t") or pending & (1 << (signal.SIGSTOP - 1)):
        return "stopped"
    return "running"


class ProcessWatch:
    """The policy node's process, when it runs on this machine. A pidfd (where the kernel has
    them) keeps the identity: a recycled PID cannot pass for the watched process."""

    def __init__(self, pid: int):
        self.pid = pid
        self._fd = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfd here, or already gone (/proc says so)
            self._fd = os.pidfd_open(pid)

    def state(self) -> str:
        # a pidfd turns readable when the process exits
        if self._fd is not None and select.select([self._fd], [], [], 0)[0]:
            return "gone"
        return process_state(self.pid)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class SupervisorConfig:
    command_interface: str = "effort"
    command_timeout_s: float = 0.02
    ur_type: str = "ur5e"
    brake_time_s: float = 0.1  # 50x the 2 ms period: stable with a few periods of delay
    max_brake_torque_fraction: float = 0.5
    still_rad_s: float = 0.02
    still_s: float = 0.2

    def __post_init__(self):
        if self.command_interface not in ("effort", "velocity"):
            raise ConfigError(f"command_interface {self.command_interface!r}: choose effort or velocity")
        if not 0 < self.max_brake_torque_fraction <= 1:
            raise ConfigError(f"max_brake_torque_fraction must be in (0, 1], got {self.max_brake_torque_fraction}")
        for name in ("command_timeout_s", "brake_time_s", "still_rad_s", "still_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be > 0, got {value}")


class SupervisorCore:
    """The supervisor's logic, without ROS: ``on_command`` / ``on_joint_velocities`` in,
    ``tick(now)`` out (the command to publish, or None)."""

    def __init__(self, config: SupervisorConfig):
        from ds_robot.control.robot_model import RobotModel
        from ds_robot.model.params import default_description

        self.config = config
        self.model = RobotModel(config.ur_type)
        self.limit_nm = config.max_brake_torque_fraction * np.array(
            default_description().variant(config.ur_type).joint_torque_limit_nm)
        self.state = "idle"
        self.last_command_s: float | None = None
        self.last_drives = False
        self.q: np.ndarray | None = None
        self.qd: np.ndarray | None = None
        self.trips: list[dict] = []
        self._still_since: float | None = None
        self.watch: ProcessWatch | None = None

    def watch_process(self, pid: int) -> None:
        """Watch the policy node's process too (it runs on this machine)."""
        if self.watch is not None:
            self.watch.close()
        self.watch = ProcessWatch(pid)

    def on_command(self, now_s: float, values=None) -> None:
        """A policy command arrived (``values``: its numbers; None: unknown, counted as a drive)."""
        if self.state in ("idle", "watching"):
            self.last_command_s = now_s
            self.last_drives = values is None or bool(np.any(np.asarray(values, dtype=float) != 0.0))
            self.state = "watching"

    def _at_risk(self) -> bool:
        """What a silent policy leaves: a held non-zero command, or an arm still moving."""
        moving = self.qd is not None and float(np.max(np.abs(self.qd))) >= self.config.still_rad_s
        return self.last_drives or moving

    def on_joint_state(self, q, qd) -> None:
        q, qd = np.asarray(q, dtype=float), np.asarray(qd, dtype=float)
        if q.shape == qd.shape == (6,) and np.all(np.isfinite(q)) and np.all(np.isfinite(qd)):
            self.q, self.qd = q, qd

    def _brake(self) -> np.ndarray:
        if self.config.command_interface == "velocity" or self.qd is None:
            return np.zeros(6)
        self.model.update(self.q, self.qd)
        return self.model.braking_torque(self.config.brake_time_s, self.limit_nm)

    def _trip(self, now_s: float) -> str | None:
        """Why to brake now, or None."""
        if self.state != "watching" or not self._at_risk():
            return None
        if self.watch is not None:
            process = self.watch.state()
            if process != "running":
                return f"policy node process {self.watch.pid} {'killed or exited' if process == 'gone' else 'stopped'}"
        if now_s - self.last_command_s > self.config.command_timeout_s:
            return "no command"
        return None

    def tick(self, now_s: float) -> np.ndarray | None:
        cfg = self.config
        reason = self._trip(now_s)
        if reason is not None:
            self.state = "braking"
            self.trips.append({"at_s": now_s, "gap_s": now_s - self.last_command_s, "reason": reason})
            self._still_since = None
        if self.state == "braking":
            if cfg.command_interface == "velocity":
                self.state = "stopped"
                return np.zeros(6)
            slow = self.qd is not None and float(np.max(np.abs(self.qd))) < cfg.still_rad_s
            if not slow:
                self._still_since = None
            elif self._still_since is None:
                self._still_since = now_s
            elif now_s - self._still_since >= cfg.still_s:
                self.state = "stopped"
                return np.zeros(6)
            return self._brake()
        if self.state == "stopped":
            return np.zeros(6)
        return None

    def rearm(self) -> None:
        """Back to ``idle``; the process watch is kept while that process still runs (a node that
        was stopped and continued), dropped when it is gone (its successor announces itself)."""
        self.state = "idle"
        self.last_command_s = None
        if self.watch is not None and self.watch.state() == "gone":
            self.watch.close()
            self.watch = None

    def summary(self) -> dict:
        return {"state": self.state, "trips": len(self.trips),
                "last_gap_ms": self.trips[-1]["gap_s"] * 1e3 if self.trips else None,
                "last_reason": self.trips[-1]["reason"] if self.trips else None,
                "watching_pid": self.watch.pid if self.watch is not None else None}


def _make_node():
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension, String
    from std_srvs.srv import Trigger

    from ds_robot.deploy.ros_common import DEFAULT_TOPICS

    class SupervisorNode(Node):
        def __init__(self):
            super().__init__("ds_robot_supervisor")
            p = self.declare_parameter
            self.realtime_priority = int(p("realtime_priority", 0).value)  # SCHED_FIFO (ros_common)
            d = SupervisorConfig()
            self.config = SupervisorConfig(
                command_interface=p("command_interface", d.command_interface).value,
                ur_type=p("ur_type", d.ur_type).value,
                command_timeout_s=float(p("command_timeout_s", d.command_timeout_s).value),
                brake_time_s=float(p("brake_time_s", d.brake_time_s).value),
                max_brake_torque_fraction=float(p("max_brake_torque_fraction", d.max_brake_torque_fraction).value),
                still_rad_s=float(p("still_rad_s", d.still_rad_s).value),
                still_s=float(p("still_s", d.still_s).value))
            check_hz = float(p("check_rate_hz", 1000.0).value)
            if not check_hz > 0:
                raise ConfigError(f"check_rate_hz must be > 0, got {check_hz}")
            prefix = p("tf_prefix", "").value
            self.arm_joints = [prefix + n for n in ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
                                                    "wrist_1_joint", "wrist_2_joint", "wrist_3_joint")]
            t = {k: p(k, v).value for k, v in DEFAULT_TOPICS.items()}
            self.core = SupervisorCore(self.config)
            topic = t[f"{self.config.command_interface}_command_topic"]
            self.pub = self.create_publisher(Float64MultiArray, topic, 10)
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self.pub_state = self.create_publisher(String, STATE_TOPIC, latched)
            self.create_subscription(Float64MultiArray, topic, self._on_command, 10)
            self.create_subscription(JointState, t["joint_states_topic"], self._on_joint_state, 1)
            self.create_service(Trigger, "~/rearm", self._srv_rearm)
            self._boot_id = boot_id()
            if p("watch_process", True).value:  # false: the command stream only (ds-robot bench supervisor compares)
                self.create_subscription(String, PROCESS_TOPIC, self._on_process, latched)
            self._msg = Float64MultiArray()
            self._msg.layout.dim = [MultiArrayDimension(label=MARK, size=6, stride=6)]
            self._published_state = None
            self.create_timer(1.0 / check_hz, self._tick)
            # also periodically: the policy node reads it best-effort (a reliable reader in a stopped
            # process could hold up this node's writes), so it learns the state from the next one
            self.create_timer(0.1, self._publish_state)
            self._publish_state()
            self.get_logger().info(f"supervising {topic}: brake after {self.config.command_timeout_s * 1e3:g} ms "
                                   "without a command")

        def _on_command(self, msg) -> None:
            if not any(d.label == MARK for d in msg.layout.dim):
                self.core.on_command(time.monotonic(), msg.data)

        def _on_process(self, msg) -> None:
            try:
                info = json.loads(msg.data)
                pid, boot = int(info["pid"]), str(info["boot_id"])
            except (ValueError, KeyError, TypeError):
                self.get_logger().warning(f"policy process message ignored: {msg.data[:80]!r}")
                return
            if boot and boot == self._boot_id and pid > 0:
                self.core.watch_process(pid)
                self.get_logger().info(f"watching the policy node's process {pid} (and the command stream)")
            else:
                self.get_logger().info("the policy node runs on another machine: watching its command stream only")

        def _on_joint_state(self, msg) -> None:
            index = {n: i for i, n in enumerate(msg.name)}
            if all(n in index for n in self.arm_joints) and len(msg.velocity) == len(msg.position) == len(msg.name):
                self.core.on_joint_state([msg.position[index[n]] for n in self.arm_joints],
                                         [msg.velocity[index[n]] for n in self.arm_joints])

        def _tick(self) -> None:
            command = self.core.tick(time.monotonic())
            if command is not None:
                self._msg.data = [float(v) for v in command]
                self.pub.publish(self._msg)
            if self.core.state != self._published_state:
                if self.core.state == "braking":
                    trip = self.core.trips[-1]
                    self.get_logger().error(f"{trip['reason']} (last command {trip['gap_s'] * 1e3:.1f} ms ago): "
                                            "braking; latched until ~/rearm")
                self._publish_state()

        def _publish_state(self) -> None:
            self._published_state = self.core.state
            self.pub_state.publish(String(data=json.dumps(self.core.summary())))

        def _srv_rearm(self, request, response):
            self.core.rearm()
            self._publish_state()
            response.success, response.message = True, "re-armed: watching from the next command"
            return response

    return SupervisorNode()


def main(argv: list[str] | None = None) -> int:
    from ds_robot.deploy.ros_common import node_main

    return node_main("ds_robot_supervisor", _make_node, lambda node: None, argv)


if __name__ == "__main__":
    sys.exit(main())
