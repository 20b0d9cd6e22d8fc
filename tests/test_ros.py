"""The ROS 2 nodes for real: rclpy from the PyPI wheels, the sim node and the policy node in
separate processes talking over DDS, each test on its own ROS domain.

Timeouts here are generous (the suite runs two tests at a time on 2 cores, so a 500 Hz Python
loop sees scheduling delays); the node's real-time behaviour is measured by
``ds-robot bench node``, not asserted here.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the [ros] extra (rclpy wheels) is not installed")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ds_robot.deploy.core import NodeConfig  # noqa: E402
from ds_robot.deploy.session import RosSession  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARM = list(NodeConfig().joint_names)
FINGERS = list(NodeConfig().gripper_joints)
# Relaxed watchdog for tests that run the whole loop (see the module docstring).
LOOP_PARAMS = ["-p", "state_timeout_s:=0.1", "-p", "require_enable:=false"]


@pytest.fixture()
def ros(request):
    # A domain per test (and per xdist worker): parallel tests must not hear each other.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    domain = 40 + 20 * int(worker or 0) + (abs(hash(request.node.name)) % 20)
    r = RosSession(domain, "ds_robot_test")
    yield r
    print(r.close())  # the nodes' logs, shown when the test fails


def _is_stop(msg) -> bool:
    return len(msg.data) == 6 and not any(msg.data)


def _wait_until_the_policy_drives(ros, commands, policy, seconds: float = 60.0, attempts: int = 1) -> None:
    """Until the policy node's latest command drives the arm (not a stop); the failure says what it
    saw. With ``attempts`` > 1, a bring-up that faults first (see the watchdog test) is retried
    after resetting the sim and the policy node."""
    for attempt in range(attempts):
        if attempt:
            assert ros.call(Trigger, "/ds_robot_sim/reset").success
            assert ros.call(Trigger, "/ds_robot_policy/reset").success
        if ros.spin(seconds / attempts, until=lambda: len(commands) > 50 and not _is_stop(commands[-1][1])):
            return
    driving = sum(not _is_stop(m) for _, m in commands)
    raise AssertionError(f"policy never ran ({attempts} attempts): {len(commands)} commands seen, {driving} of them "
                         f"driving; last {commands[-1][1].data if commands else None}; node log:\n{ros.log(policy)}")


def _status(box) -> dict:
    return json.loads(box[-1][1].data) if box else {}


# The closed-loop tests run the world at half speed on /clock (use_sim_time on the policy node,
# at most 2 physics steps of catch-up per sim tick): under the suite's CPU load a real-time
# world would run ahead of a starved controller, and this test is about correctness over ROS,
# not timing (that is `ds-robot bench node`).
SIM_TIME = (["-p", "real_time_factor:=0.5", "-p", "max_catch_up_steps:=2"], ["-p", "use_sim_time:=true"])
WORLD_SEED = 3  # the shifted sim world's hidden physics (episode seed 0): motor gains 0.8-1.2, a payload


@pytest.mark.parametrize("config,interface,faithful", [("ur5e.yaml", "effort", False), ("ur5.yaml", "velocity", False),
                                                       ("ur5e.yaml", "effort", True)])
def test_closed_loop_grasp_through_ros(ros, config, interface, faithful, request):
    """The shipped parameter files, both nodes, over DDS: e-Series torques and CB3 velocities,
    on the sim node's /clock (the sim node ignores use_sim_time: it is the clock). ``faithful``:
    joint_states carry the six arm joints only, as ur_robot_driver publishes them, the fingers
    come on the gripper's own topic, the operator gate is on, and the sim node plays
    controller_manager: forward_effort_controller starts inactive (commands move nothing) and
    the node's ~/enable activates it; after a fault, at rest, the node deactivates it."""
    params = ["--params-file", str(REPO / "ros2_ws/src/ds_robot/config" / config)]
    env = None
    if faithful:
        params += ["-p", "gripper_joint_states_topic:=/gripper/joint_states"]
        env = request.getfixturevalue("controller_manager_msgs")
    status = ros.listen(String, "/ds_robot/sim/status", latched=True)
    commands = ros.listen(Float64MultiArray, f"/forward_{interface}_controller/commands")
    joint_states = ros.listen(JointState, "/joint_states")
    sim = ros.start("sim_node", *params, "-p", "seed:=0", *SIM_TIME[0],
                    *(["-p", "emulate_controller_manager:=true"] if faithful else []), env=env)
    # faithful: as on the real arm, the shipped file's operator gate and controller switching stay on
    policy = ros.start("policy_node", *params, *(LOOP_PARAMS[:2] if faithful else LOOP_PARAMS), *SIM_TIME[1], env=env)
    if faithful:
        assert ros.spin(60, until=lambda: len(commands) > 100), "no commands"
        ros.spin(1.0)
        assert all(_is_stop(m) for _, m in commands), "the arm moved before ~/enable"
        # the driver's word on the External Control program gates it too (the sim node says it runs)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
        program = ros.node.create_publisher(Bool, "/io_and_status_controller/robot_program_running", latched)
        program.publish(Bool(data=False))
        ros.spin(0.5)
        refused = ros.call(Trigger, "/ds_robot_policy/enable")
        assert not refused.success and "not ready" in refused.message, refused.message
        program.publish(Bool(data=True))
        ros.spin(0.5)
        waited = _status(status).get("sim_time_s", 0.0)  # the episode's clock ran while the gate was closed
        assert ros.spin(10, until=lambda: _status(status).get("active_controllers") == []), _status(status)
        enabled = ros.call(Trigger, "/ds_robot_policy/enable")
        assert enabled.success and "activating forward_effort_controller" in enabled.message, enabled.message
        assert ros.spin(10, until=lambda: _status(status).get("active_controllers") == ["forward_effort_controller"])
    else:
        waited = 0.0
    t0 = time.monotonic()
    ok = ros.spin(120, until=lambda: _status(status).get("success"))
    assert sim.poll() is None and policy.poll() is None
    assert ok, f"no successful grasp through ROS; last status {_status(status)}"
    final = _status(status)
    lift_s = final["time_to_lift_s"] - waited
    assert final["object"] == "ball" and 2.0 < lift_s < 6.0, (final, waited)
    assert time.monotonic() - t0 > 1.5 * lift_s  # half speed: more wall time than sim time
    values = np.array([m.data for _, m in commands])
    assert np.all(np.isfinite(values)) and np.any(values)
    assert {len(m.name) for _, m in joint_states} == {6 if faithful else 8}
    if faithful:  # a fault: the braking stop, then (at rest) the motion controller off
        assert ros.call(Trigger, "/ds_robot_policy/estop").success
        assert ros.spin(30, until=lambda: _status(status).get("active_controllers") == []), _status(status)
        assert not ros.call(Trigger, "/ds_robot_policy/enable").success  # latched: ~/reset first
        assert ros.call(Trigger, "/ds_robot_sim/reset").success  # the arm back at the start pose
        assert ros.call(Trigger, "/ds_robot_policy/reset").success
        answers = []
        assert ros.spin(10, until=lambda: answers.append(ros.call(Trigger, "/ds_robot_policy/enable")) or answers[-1].success), \
            f"re-arm refused: {answers[-1].message if answers else None}"
        assert ros.spin(10, until=lambda: _status(status).get("active_controllers") == ["forward_effort_controller"])


def test_the_robot_side_install_runs_the_node_on_the_int8_policy(ros, tmp_path):
    """A fresh venv with only the robot-side install (``pip install -e .[ros]``: NumPy, MuJoCo,
    PyYAML, rclpy; no torch, no gymnasium) runs the policy node on the shipped int8 policy: a
    grasp over DDS against the sim node (which runs from the full install)."""
    from ds_robot.bench.robot_install import TRAINING_SIDE, importable, make_robot_venv

    python = make_robot_venv(tmp_path / "robot")
    assert importable(python, TRAINING_SIDE) == [], "the robot-side install pulled in training-side packages"
    status = ros.listen(String, "/ds_robot/sim/status", latched=True)
    ros.start("sim_node", "-p", "seed:=0", *SIM_TIME[0])
    policy = ros.start("policy_node", *LOOP_PARAMS, *SIM_TIME[1], python=str(python))
    ok = ros.spin(120, until=lambda: _status(status).get("success"))
    assert policy.poll() is None, ros.log(policy)
    assert ok, f"no grasp from the robot-side venv; status {_status(status)}; node log:\n{ros.log(policy)}"
    assert "grasp_hier_int8.npz" in ros.log(policy)


def test_online_correction_identifies_a_shifted_arm_through_ros(ros):
    """correction:=true on a sim node that runs the physics-shifted MuJoCo: the estimate the node
    reports on /diagnostics approaches the sim's hidden truth while the loop keeps grasping."""
    params = ["--params-file", str(REPO / "ros2_ws/src/ds_robot/config/ur5e.yaml")]
    status = ros.listen(String, "/ds_robot/sim/status", latched=True)
    diagnostics = ros.listen(DiagnosticArray, "/diagnostics")
    # An eighth of real time: identification needs commands that land when the world expects
    # them, and under the suite's load a half-speed world often applies them a step late; at a
    # quarter speed the payload estimate stayed at its prior in 3 full-suite runs of 2026-12-07
    # (0.025 kg against 0.306), while it passed alone.
    ros.start("sim_node", *params, "-p", "seed:=0", "-p", "world:=shifted", "-p", f"world_seed:={WORLD_SEED}",
              "-p", "real_time_factor:=0.125", "-p", "max_catch_up_steps:=2")
    # the nominal-task policy, as the in-process correction test (on the realistic policy's motion the
    # gain estimate over ROS was no better than the nominal model's: issue 15)
    nominal = str(REPO / "models/policies/grasp_hier_nominal.npz")
    # The sim node's joint states are noise-free: finite differences (correction_filter_hz 0), which
    # identify the latency the low-pass (for noisy sensors, the default) often misses.
    policy = ros.start("policy_node", *params, "-p", "correction:=true", "-p", "diagnostics_period_s:=0.25",
                       "-p", f"policy:={nominal}", "-p", "correction_filter_hz:=0.0",
                       *LOOP_PARAMS, *SIM_TIME[1])

    def estimates():
        out = []
        for _, msg in diagnostics:
            values = {kv.key: json.loads(kv.value) for kv in msg.status[0].values}
            if "estimate" in values:
                out.append((values["estimator_steps"], values["estimate"], values["estimator_p99_us"]))
        return out

    ok = ros.spin(150, until=lambda: _status(status).get("done") and any(n >= 200 for n, *_ in estimates()))
    assert policy.poll() is None, ros.log(policy)
    assert ok, f"no grasp outcome or no estimate; status {_status(status)}, estimates {estimates()[-1:]}"
    truth = _status(status)["shift"]
    assert _status(status)["world"] == "shifted" and _status(status)["success"], _status(status)
    # At ~2 s of control, before the grasp's contacts, as `bench sim2real` scores it. Against the
    # do-nothing estimator (its prior: gain 1, no payload) on the same episode: off by 0.152 (gains,
    # joints 1-5) and 0.306 kg here. Over ROS the joint states' timing jitters (the measured
    # intervals are used) and commands land up to a physics step late, so the estimate is rougher
    # than in-process; measured 0.048-0.054 and 0.07-0.12 kg (also under extra load), so the bar is
    # 60% of the do-nothing error (a weak estimate that the old absolute bounds let pass fails it).
    steps, estimate, p99_us = min(estimates(), key=lambda e: abs(e[0] - 200))
    assert 175 <= steps <= 225, steps
    gain_error = np.abs(np.array(estimate["gain"][:5]) - truth["gain"][:5]).mean()
    prior_gain_error = np.abs(1.0 - np.array(truth["gain"][:5])).mean()
    assert gain_error < 0.6 * prior_gain_error, (estimate["gain"], truth["gain"])
    payload_error = abs(estimate["payload_kg"] - truth["payload_kg"])
    assert payload_error < 0.6 * abs(truth["payload_kg"]), (estimate["payload_kg"], truth["payload_kg"])
    assert p99_us < 10_000  # inside the 10 ms policy period even under the suite's load


def test_watchdog_stops_the_arm_when_the_sim_dies_or_stalls(ros):
    commands = ros.listen(Float64MultiArray, "/forward_effort_controller/commands")
    sim = ros.start("sim_node", "-p", "seed:=1")
    policy = ros.start("policy_node", *LOOP_PARAMS)
    # In real time (the watchdog is about wall-clock silence), under the suite's load the starved
    # torque loop can go unstable before the test sees it drive (joint speeds beyond the node's
    # velocity gate, then its input-fault latch): bring-up is retried from a reset.
    _wait_until_the_policy_drives(ros, commands, policy, attempts=3)

    def stops_after(freeze):
        t_freeze = time.monotonic()
        freeze()
        ros.spin(1.0)
        # Joint states stop at t_freeze; the watchdog (0.1 s here) must have stopped the arm by +0.25 s.
        after = [m for t, m in commands if t > t_freeze + 0.25]
        assert after, "the policy node stopped publishing"
        assert all(_is_stop(m) for m in after), "non-stop command after the joint states stopped"

    sim.send_signal(signal.SIGSTOP)  # stall
    try:
        stops_after(lambda: None)
    finally:
        sim.send_signal(signal.SIGCONT)
    assert ros.spin(20, until=lambda: not _is_stop(commands[-1][1])), "did not resume after the stall"
    stops_after(lambda: sim.send_signal(signal.SIGKILL))  # gone


from ds_robot.deploy.supervisor import SUPERVISOR_ENV  # noqa: E402


def _max_speed(joint_states, since: float) -> float:
    return max((max(abs(v) for v in m.velocity[:6]) for t, m in joint_states if t > since), default=math.nan)


def _fresh_speed(ros, joint_states, count: int = 25, timeout_s: float = 10.0) -> float:
    """The highest arm joint speed over the next ``count`` joint states to arrive. A count, not a
    time window: on a loaded 2-core CI machine a 0.1 s and once a 0.3 s window held no joint state."""
    since = time.monotonic()
    assert ros.spin(timeout_s, until=lambda: sum(t > since for t, _ in joint_states[-count:]) >= count), \
        f"fewer than {count} joint states in {timeout_s} s"
    return _max_speed(joint_states, since)


def test_supervisor_brakes_the_arm_when_the_policy_node_is_killed_or_stopped(ros):
    """SIGKILL of the policy node mid-grasp (its shutdown stop never runs; the sim holds the last
    command like ros2_control's forward controllers): the supervisor brakes within its timeout
    and the arm comes to rest. SIGSTOP then SIGCONT: the supervisor brakes, and the resumed policy
    node stays off the command topic until re-armed."""
    states = ros.listen(String, "/ds_robot/supervisor/state", latched=True)
    joint_states = ros.listen(JointState, "/joint_states")
    commands = ros.listen(Float64MultiArray, "/forward_effort_controller/commands")
    # The world at half speed on /clock like the closed-loop tests: in real time, under the suite's
    # load, the starved 500 Hz torque loop went unstable (joint speeds of 10 rad/s, refused by the
    # node's velocity gate) before the policy ever ran; the supervisor keeps its wall clock.
    ros.start("sim_node", "-p", "seed:=0", *SIM_TIME[0])
    # 0.15 s, not the shipped 20 ms: under the suite's load the policy node's own command stream has
    # gaps above 20 ms (a trip in nominal operation; `ds-robot bench supervisor` measures both); at
    # 0.1 s a freshly started node's 102 ms gap tripped it once in a full run (2026-12-07)
    ros.start("supervisor", "-p", "command_timeout_s:=0.15", env=SUPERVISOR_ENV)
    for trial, sig in enumerate((signal.SIGKILL, signal.SIGSTOP)):
        policy = ros.start("policy_node", *LOOP_PARAMS, *SIM_TIME[1])
        started = len(commands)
        assert ros.spin(60, until=lambda s=started: len(commands) > s + 300 and not _is_stop(commands[-1][1])
                        and _status_of(states) == "watching"), \
            f"policy never ran (trial {trial}); supervisor {states[-1][1].data if states else None}"
        ros.spin(0.5)  # mid-approach: the arm is moving
        t_signal = time.monotonic()
        policy.send_signal(sig)
        assert ros.spin(5, until=lambda: _status_of(states) in ("braking", "stopped")), \
            f"the supervisor never braked (trial {trial}); last command {commands[-1][1].data}"
        braked_at = next(t for t, m in states if t > t_signal and json.loads(m.data)["state"] == "braking")
        assert braked_at - t_signal < 0.4, f"braking {braked_at - t_signal:.3f} s after the policy node's {sig!r}"
        assert ros.spin(10, until=lambda: _status_of(states) == "stopped"), "the arm never came to rest"
        speed = _fresh_speed(ros, joint_states)
        assert speed < 0.05, f"joint speed {speed} rad/s after 'stopped'"
        if sig == signal.SIGSTOP:
            policy.send_signal(signal.SIGCONT)
            ros.spin(1.5)
            assert policy.poll() is None
            assert _status_of(states) == "stopped"
            assert _fresh_speed(ros, joint_states) < 0.05
            assert "the supervisor is stopped" in ros.log(policy) or "the supervisor is braking" in ros.log(policy)
            assert not ros.call(Trigger, "/ds_robot_policy/reset").success  # re-arm first
        assert ros.call(Trigger, "/ds_robot_supervisor/rearm").success
        ros.call(Trigger, "/ds_robot_sim/reset")
        if policy.poll() is None:
            ros.stop(policy)


def _status_of(states) -> str | None:
    return json.loads(states[-1][1].data)["state"] if states else None


def test_malformed_messages_never_crash_and_never_command(ros):
    commands = ros.listen(Float64MultiArray, "/forward_effort_controller/commands")
    policy = ros.start("policy_node", "-p", "object_half_extents_m:=[0.02, 0.02, 0.02]", *LOOP_PARAMS)
    pub = ros.node.create_publisher(JointState, "/joint_states", 10)
    pose_pub = ros.node.create_publisher(PoseStamped, "/object_pose", 10)
    assert ros.spin(30, until=lambda: len(commands) > 10), "policy node not publishing"

    def now():
        return ros.node.get_clock().now().to_msg()

    def joint_state(names, n_pos=None, nan=False, age_s=0):
        msg = JointState(name=names, velocity=[0.0] * len(names))
        msg.header.stamp = now()
        msg.header.stamp.sec -= age_s
        msg.position = [0.1] * (len(names) if n_pos is None else n_pos)
        msg.effort = [float("nan") if nan else 0.0] * len(names)
        return msg

    def pose(valid=True):
        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = now(), "base"
        msg.pose.position.x = 0.5
        msg.pose.orientation.w = 1.0 if valid else float("nan")
        return msg

    good = ARM + FINGERS
    bad_messages = [
        joint_state(["joint_a"] * 8),  # wrong names
        joint_state(good[:5] + FINGERS),  # a joint missing
        joint_state(good, n_pos=5),  # wrong lengths
        joint_state(good, nan=True),  # NaN efforts
        joint_state(list(reversed(good)), age_s=5),  # well formed but 5 s old: stale
    ]
    start = time.monotonic()
    for _ in range(40):  # a valid object pose throughout: only the joint states keep the arm stopped
        for msg in bad_messages:
            pub.publish(msg)
        pose_pub.publish(pose(valid=False))
        pose_pub.publish(pose())
        ros.spin(0.02)
    ros.spin(0.3)
    assert policy.poll() is None, "policy node died"
    during = [m for t, m in commands if t > start]
    assert during and all(_is_stop(m) for m in during)
    # The same stream with well-formed joint states does command the arm (the check above can fail).
    start = time.monotonic()
    for _ in range(25):
        pub.publish(joint_state(good))
        pose_pub.publish(pose())
        ros.spin(0.02)
    assert any(not _is_stop(m) for t, m in commands if t > start)
    assert all(np.all(np.isfinite(m.data)) for _, m in commands)


def test_estop_latches_and_shutdown_sends_a_stop(ros):
    commands = ros.listen(Float64MultiArray, "/forward_effort_controller/commands")
    ros.start("sim_node", "-p", "seed:=2", *SIM_TIME[0])  # half speed: see the closed-loop tests
    policy = ros.start("policy_node", *LOOP_PARAMS, *SIM_TIME[1])
    _wait_until_the_policy_drives(ros, commands, policy)
    estop = ros.node.create_publisher(Bool, "/ds_robot/estop", 10)
    estop.publish(Bool(data=True))
    # the braking stop: it brakes the moving arm, then sends zeros once the arm is at rest
    assert ros.spin(10, until=lambda: _is_stop(commands[-1][1])), "the stop never reached zeros (the arm at rest)"
    t_rest = time.monotonic()
    ros.spin(0.5)
    assert all(_is_stop(m) for t, m in commands if t > t_rest + 0.05), "command after e-stop with the arm at rest"
    assert ros.call(Trigger, "/ds_robot_policy/reset").success
    assert ros.spin(10, until=lambda: not _is_stop(commands[-1][1])), "did not resume after ~/reset"
    policy.send_signal(signal.SIGTERM)
    assert policy.wait(timeout=15) == 0
    ros.spin(0.5)
    assert _is_stop(commands[-1][1])


def test_node_refuses_bad_parameters(ros):
    for args, match in ((["-p", "ur_type:=ur5", "-p", "command_interface:=effort"], "CB3 controllers cannot"),
                        (["-p", "policy:=/nonexistent.npz"], "policy file not found"),
                        (["-p", "rate_hz:=50.0"], "policy_rate_hz"),
                        (["-p", "command_interface:=velocity", "-p", "correction:=true"], "needs command_interface effort"),
                        (["-p", "controller:=none", "-p", "correction:=true"], "correction needs a controller"),
                        (["-p", "diagnostics_period_s:=0.0"], "diagnostics_period_s must be > 0"),
                        (["-p", "correction_latency_evidence:=0.5"], "latency_evidence_ratio must be")):
        proc = ros.start("policy_node", *args)
        assert proc.wait(timeout=60) == 2
        assert match in ros.log(proc), ros.log(proc)
    proc = ros.start("sim_node", "-p", "world:=mars")
    assert proc.wait(timeout=60) == 2
    assert "world 'mars': choose nominal, shifted, unmodelled" in ros.log(proc), ros.log(proc)


COLCON = shutil.which("colcon") or shutil.which("colcon", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(COLCON is None, reason="colcon is not installed (the [ros] extra)")
def test_ros2_ws_builds_and_installs(tmp_path):
    shutil.copytree(REPO / "ros2_ws" / "src", tmp_path / "src")
    out = subprocess.run([COLCON, "build"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    install = tmp_path / "install" / "ds_robot"
    for path in ("lib/ds_robot/policy_node", "lib/ds_robot/sim_node", "lib/ds_robot/supervisor", "share/ds_robot/launch/grasp.launch.py",
                 "share/ds_robot/config/ur5e.yaml", "share/ds_robot/config/ur5.yaml", "share/ds_robot/package.xml",
                 "share/ament_index/resource_index/packages/ds_robot"):
        assert (install / path).exists(), path
    assert (install / "share/ds_robot/launch/grasp.launch.py").read_text() == (REPO / "launch/grasp.launch.py").read_text()
    run = subprocess.run([str(install / "lib/ds_robot/policy_node"), "--ros-args", "-p", "ur_type:=ur9"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(next((install / "lib").glob("python3*/site-packages")))})
    assert run.returncode == 2 and "ur_type 'ur9'" in run.stderr


def test_parameter_sets_take_effect_or_are_refused_in_process():
    """rclpy's parameter machinery on the real node class: a safety limit set while running
    reaches the control core; an impossible one or a start-up-only one is refused and changes
    nothing."""
    from rclpy.parameter import Parameter

    from ds_robot.deploy.policy_node import PolicyNode

    context = rclpy.Context()
    rclpy.init(args=[], context=context, domain_id=99)
    node = PolicyNode(context=context, parameter_overrides=[
        Parameter("controller", value="scripted"), Parameter("correction", value=True)])
    try:
        limit = node.core.joint_limit_nm
        ok = node.set_parameters([Parameter("max_torque_fraction", value=0.4)])[0]
        assert ok.successful, ok.reason
        np.testing.assert_allclose(node.core.torque_limit, 0.4 * limit)
        np.testing.assert_allclose(node.corrected.command_limit, 0.4 * limit)  # the estimator sees the new clip
        assert node.get_parameter("max_torque_fraction").value == 0.4
        assert node.diagnostics()["limits"]["max_torque_fraction"] == 0.4
        assert node.diagnostics()["grasp_phase"] == "idle"  # the skill machine's phase; no grasp has started

        for param, reason in ((Parameter("max_torque_fraction", value=1.5), "max_torque_fraction must be in"),
                              (Parameter("state_timeout_s", value=-1.0), "state_timeout_s must be > 0"),
                              (Parameter("ur_type", value="ur5"), "read at start-up"),
                              (Parameter("object_half_extents_m", value=[0.02, -0.01, 0.03]), "positive half-sizes")):
            refused = node.set_parameters([param])[0]
            assert not refused.successful and reason in refused.reason, refused.reason
        np.testing.assert_allclose(node.core.torque_limit, 0.4 * limit)  # unchanged by the refusals
        assert node.get_parameter("max_torque_fraction").value == 0.4
        assert node.get_parameter("ur_type").value == "ur5e"
        # atomically: one bad value refuses the whole set
        both = node.set_parameters_atomically([Parameter("joint_limit_margin_rad", value=0.1),
                                                Parameter("max_velocity_rad_s", value=0.0)])
        assert not both.successful and node.core.config.joint_limit_margin_rad == 0.05
        ok = node.set_parameters([Parameter("object_half_extents_m", value=[0.02, 0.03, 0.04])])[0]
        assert ok.successful and node.core.object_extents.tolist() == [0.02, 0.03, 0.04]
        assert node.set_parameters([Parameter("use_sim_time", value=True)])[0].successful  # rclpy's own
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_the_skill_machine_trusts_the_object_pose_in_the_hand_only_when_told():
    """in_hand_vision reaches the skill machine under the node's controller (default on, as the
    shipped policies were trained; off for a camera over the table), through the correction
    wrapper too."""
    from rclpy.parameter import Parameter

    from ds_robot.deploy.controllers import skill_machine
    from ds_robot.deploy.policy_node import PolicyNode

    for overrides, expected in (([], True), ([Parameter("in_hand_vision", value=False)], False),
                                ([Parameter("correction", value=True), Parameter("in_hand_vision", value=False)], False)):
        context = rclpy.Context()
        rclpy.init(args=[], context=context, domain_id=99)
        node = PolicyNode(context=context, parameter_overrides=overrides)
        try:
            assert skill_machine(node.controller).in_hand_vision is expected, overrides
        finally:
            node.destroy_node()
            rclpy.try_shutdown(context=context)


def test_ros2_param_set_over_dds_takes_effect_or_is_refused(ros):
    """What `ros2 param set` does: the SetParameters service of the running node process."""
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    diagnostics = ros.listen(DiagnosticArray, "/diagnostics")
    ros.start("policy_node", "-p", "controller:=scripted", "-p", "diagnostics_period_s:=0.2")
    client = ros.node.create_client(SetParameters, "/ds_robot_policy/set_parameters")
    assert client.wait_for_service(timeout_sec=30), "the node's parameter service never came up"

    def set_double(name: str, value: float):
        request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE, double_value=value))])
        future = client.call_async(request)
        assert ros.spin(20, until=future.done), "no answer from set_parameters"
        return future.result().results[0]

    assert set_double("max_torque_fraction", 0.3).successful
    refused = set_double("max_torque_fraction", 2.0)
    assert not refused.successful and "max_torque_fraction must be in" in refused.reason

    def limits():
        for _, msg in reversed(diagnostics):
            values = {kv.key: kv.value for kv in msg.status[0].values}
            if "limits" in values:
                return json.loads(values["limits"])
        return None

    start = len(diagnostics)
    assert ros.spin(20, until=lambda: len(diagnostics) > start + 1), "no diagnostics"
    assert limits()["max_torque_fraction"] == 0.3
