"""What both ROS 2 nodes share: the default topic names, the stamp of a header in seconds,
start-up with a clear refusal of bad parameters, and spinning until SIGINT/SIGTERM."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from collections.abc import Callable

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

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
    # ur_robot_driver's io_and_status_controller (std_msgs/Bool, transient local): the External Control program runs
    "program_running_topic": "/io_and_status_controller/robot_program_running",
}


def stamp_s(header) -> float:
    """A message header's stamp in seconds."""
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def run_until_signal(node, on_exit: Callable[[], None]) -> int:
    """Spin ``node`` until SIGINT/SIGTERM; ``on_exit()`` runs before the context shuts down
    (so a final message can still be published)."""
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


def node_main(name: str, make_node: Callable[[], object], on_exit: Callable[[object], None],
              argv: list[str] | None = None) -> int:
    """Start ``make_node()`` (exit 2 with one line on stderr when its parameters are refused),
    spin it until a signal, then ``on_exit(node)``."""
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = make_node()
    except (ConfigError, FileNotFoundError, ParameterException) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # Everything built so far (the model, the policy, rclpy's objects) lives as long as the node:
    # out of the garbage collector's way. A full collection over it took 20-46 ms in the policy
    # node, a gap in its command stream that tripped the 20 ms watchdogs; now a collection scans
    # only what the loop allocates.
    gc.collect()
    gc.freeze()
    try:
        apply_realtime_priority(int(getattr(node, "realtime_priority", 0)))
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    return run_until_signal(node, lambda: on_exit(node))


def apply_realtime_priority(priority: int) -> None:
    """``priority`` 1-99: every thread of this process (the executor's and the DDS threads that
    exist by now) to SCHED_FIFO at that priority, so the control loop and its message delivery
    preempt ordinary processes; 0: normal scheduling. Needs the right to (root, CAP_SYS_NICE or
    an ``rtprio`` limit, as on a robot PC set up for the UR driver; a PREEMPT_RT kernel makes it
    deterministic)."""
    if priority == 0:
        return
    if not 1 <= priority <= 99:
        raise ConfigError(f"realtime_priority must be 0 (off) or 1-99, got {priority}")
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
        for tid in threads:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as exc:
        raise ConfigError(f"realtime_priority {priority}: this user may not use SCHED_FIFO (add an rtprio "
                          "limit, e.g. in /etc/security/limits.d, or set realtime_priority to 0)") from exc
    except (AttributeError, FileNotFoundError) as exc:
        raise ConfigError("realtime_priority needs Linux (SCHED_FIFO and /proc)") from exc
