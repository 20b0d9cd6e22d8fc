"""A relay that corrupts a joint-state stream, for ``ds-robot bench node``'s corrupted variant.

It subscribes to the sim node's joint states on ``input_topic`` and republishes each real one on
``output_topic``, followed by ``corrupt_per_real`` corrupted copies, cycling through the kinds
below (the corruptions of the hardware issue's item 4, and one per input gate):

- ``huge_position``: one position 1e30 (finite: a schema check passes it)
- ``jump``: every position +1 rad with the real velocities (plausible-looking, inconsistent with
  velocity x dt)
- ``overspeed``: one velocity 10 rad/s (no UR joint reaches it)
- ``effort``: one effort 10x the joint's torque limit
- ``nan`` / ``inf``: one position NaN / Inf
- ``short``: one position missing
- ``duplicate_name`` / ``unknown_name``: a joint name repeated / replaced
- ``future_stamp``: stamped 10 s ahead (accepted, it would lock out every later real state)
- ``old_stamp``: stamped 1 s back (out of order)

A corrupted copy is stamped 1 us after its real state, so a gate that let it through would make
it the newest state. On shutdown it writes the counts per kind to ``stats_file``.

    python -m ds_robot.bench.corrupt_relay --ros-args -p input_topic:=/ds_robot/bench/raw_joint_states
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

KINDS = ("huge_position", "jump", "overspeed", "effort", "nan", "inf", "short", "duplicate_name",
         "unknown_name", "future_stamp", "old_stamp")


def corrupt(msg, kind: str, effort_limit_nm: float = 150.0):
    """A corrupted copy of the JointState ``msg`` (``kind``: one of ``KINDS``)."""
    bad = copy.deepcopy(msg)
    ns = bad.header.stamp.nanosec + 1000
    bad.header.stamp.sec, bad.header.stamp.nanosec = bad.header.stamp.sec + ns // 1_000_000_000, ns % 1_000_000_000
    position, velocity, effort, names = list(bad.position), list(bad.velocity), list(bad.effort), list(bad.name)
    if kind == "huge_position":
        position[1] = 1e30
    elif kind == "jump":
        position = [p + 1.0 for p in position]
    elif kind == "overspeed":
        velocity[2] = 10.0
    elif kind == "effort":
        effort[1] = 10.0 * effort_limit_nm
    elif kind == "nan":
        position[0] = float("nan")
    elif kind == "inf":
        position[3] = float("inf")
    elif kind == "short":
        position = position[:-1]
    elif kind == "duplicate_name":
        names[1] = names[0]
    elif kind == "unknown_name":
        names[2] = "not_a_joint"
    elif kind == "future_stamp":
        bad.header.stamp.sec += 10
    elif kind == "old_stamp":
        bad.header.stamp.sec -= 1
    else:
        raise ValueError(f"unknown corruption {kind!r}: choose from {', '.join(KINDS)}")
    bad.position, bad.velocity, bad.effort, bad.name = position, velocity, effort, names
    return bad


def _make_node():
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from ds_robot.errors import ConfigError

    class CorruptRelay(Node):
        def __init__(self):
            super().__init__("ds_robot_corrupt_relay")
            p = self.declare_parameter
            self.per_real = int(p("corrupt_per_real", 1).value)
            if self.per_real < 0:
                raise ConfigError(f"corrupt_per_real must be >= 0, got {self.per_real}")
            self.stats_file = p("stats_file", "").value
            self.pub = self.create_publisher(JointState, p("output_topic", "/joint_states").value, 10)
            self.create_subscription(JointState, p("input_topic", "/ds_robot/bench/raw_joint_states").value,
                                     self._relay, 10)
            self.counts = {"real": 0, **dict.fromkeys(KINDS, 0)}
            self._next = 0

        def _relay(self, msg) -> None:
            self.pub.publish(msg)
            self.counts["real"] += 1
            for _ in range(self.per_real):
                kind = KINDS[self._next % len(KINDS)]
                self._next += 1
                self.pub.publish(corrupt(msg, kind))
                self.counts[kind] += 1

        def write_stats(self) -> None:
            if self.stats_file:
                Path(self.stats_file).write_text(json.dumps(self.counts))

    return CorruptRelay()


def main(argv: list[str] | None = None) -> int:
    from ds_robot.deploy.ros_common import node_main

    return node_main("ds_robot_corrupt_relay", _make_node, lambda node: node.write_stats(), argv)


if __name__ == "__main__":
    sys.exit(main())
