"""Deployment without ROS: int8 quantization and policy files, the policy node's control core
(safety, watchdog, interfaces) closed-loop against the sim arm, and the torch-free runtime."""

import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest

from ds_robot.deploy.core import ControlCore, MessageError, NodeConfig
from ds_robot.deploy.sim_core import SimArm
from ds_robot.errors import ConfigError
from ds_robot.hier.controller import HierarchicalController
from ds_robot.hier.features import HIER_OBS_SIZE, PLANNER_GAINS, H
from ds_robot.hier.policy import HierPolicy, PolicyFileError
from ds_robot.hier.quantize import dequantize, quantize
from ds_robot.paths import policies_dir

SHIPPED = policies_dir() / "grasp_hier.npz"
SHIPPED_INT8 = policies_dir() / "grasp_hier_int8.npz"


# -- quantization --------------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel, axis", [(False, 1), (True, 1), (True, 0)])
def test_quantize_error_is_at_most_half_a_level_on_any_range(per_channel, axis):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(47, 64)) * rng.choice([0.0, 1.0, 20.0], size=(47, 1))  # rows of other scales
    for w in (rng.normal(size=(47, 64)), rng.uniform(0.1, 0.9, size=(64, 7)), np.full((3, 4), 0.37), rows):
        q, delta, w_min = quantize(w, per_channel, channel_axis=axis)
        assert q.dtype == np.int8 and q.shape == w.shape
        error = np.abs(dequantize(q, delta, w_min, channel_axis=axis) - w)
        reduce = 1 - axis
        span = (w.max(axis=reduce, keepdims=True) - w.min(axis=reduce, keepdims=True)) if per_channel else (w.max() - w.min())
        assert np.all(error <= np.maximum(span / 255 / 2, 0) * (1 + 1e-5) + 1e-7)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([[0.0, np.nan]]))


@pytest.mark.parametrize("source, scheme", [
    ("grasp_hier_nominal.npz", "int8_tensor"),
    ("grasp_hier_nominal.npz", "int8_channel"),
    ("grasp_hier.npz", "int8_channel"),
    pytest.param("grasp_hier.npz", "int8_tensor", marks=pytest.mark.xfail(strict=True, reason=(
        "the realistic-task planner's first layer has its input scales (x20 on the size rows) folded in: one grid "
        "over the layer is too coarse for its x1 rows; int8_channel grids it per input row"))),
])
def test_int8_policy_file_is_a_quarter_of_fp32_and_acts_the_same(tmp_path, source, scheme):
    fp32 = HierPolicy.load(policies_dir() / source)
    path = tmp_path / f"{scheme}.npz"
    fp32.save(path, scheme)
    int8 = HierPolicy.load(path)
    assert int8.quantization == scheme
    assert path.stat().st_size < 0.31 * (policies_dir() / source).stat().st_size
    # features of the magnitudes the planner sees (metres where it scales metres up)
    gain = np.ones(HIER_OBS_SIZE)
    for name, factor in PLANNER_GAINS.items():
        gain[H[name]] = factor
    x = np.random.default_rng(1).normal(size=(500, HIER_OBS_SIZE)) / gain
    for a, b in zip(fp32.skills, int8.skills, strict=True):
        assert np.abs(a(x) - b(x)).max() < 0.05
    logits, logits8 = fp32.planner(x), int8.planner(x)
    assert np.abs(logits - logits8).max() < 0.02 * np.ptp(logits)
    assert np.mean(logits.argmax(1) == logits8.argmax(1)) > 0.95


def test_int8_file_damage_is_refused(tmp_path):
    path = tmp_path / "p.npz"
    HierPolicy.load(SHIPPED).save(path, "int8_tensor")
    with np.load(path) as data:
        header, q, scales = json.loads(str(data["header"])), data["q"], data["scales"]

    def write(name, header, q):
        out = tmp_path / name
        np.savez(out, header=np.array(json.dumps(header)), q=q, scales=scales)
        return out

    bad_table = json.loads(json.dumps(header))
    bad_table["tensors"][0][1] = [48, 64]  # a shape that does not fit the packed array
    with pytest.raises(PolicyFileError, match="tensor table|maps"):
        HierPolicy.load(write("table.npz", bad_table, q))
    flipped = q.copy()
    flipped[10] ^= 1
    with pytest.raises(PolicyFileError, match="SHA-256"):
        HierPolicy.load(write("flipped.npz", header, flipped))
    with pytest.raises(PolicyFileError, match="weights stored as"):
        HierPolicy.load(write("int4.npz", {**header, "weights": "int4"}, q))
    with pytest.raises(ConfigError, match="quantization"):
        HierPolicy.load(SHIPPED).save(tmp_path / "x.npz", "int4")


def test_robot_side_path_never_imports_torch():
    pytest.importorskip("rclpy", reason="the nodes need the [ros] extra")
    code = ("import sys; from ds_robot.deploy.core import ControlCore, NodeConfig; "
            "from ds_robot.deploy.sim_core import SimArm; import ds_robot.deploy.policy_node, ds_robot.deploy.sim_node; "
            "from ds_robot.hier.controller import HierarchicalController; from ds_robot.hier.policy import HierPolicy; "
            f"p = HierPolicy.load({str(SHIPPED_INT8)!r}); "
            "core = ControlCore(NodeConfig(), HierarchicalController(p)); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the control core ------------------------------------------------------------------------------

def _feed(core, arm, t, names=None):
    s = arm.env.state
    names = names or [*arm.arm_joint_names, *arm.gripper_joint_names]
    half, half_speed = s.gripper_opening_m / 2, s.gripper_speed_m_s / 2
    core.on_joint_state(names, [*s.q_rad, half, half], [*s.qd_rad_s, half_speed, half_speed],
                        [*s.tau_measured_nm, 0.0, 0.0], t)
    core.on_object_pose(s.object_pos_m, s.object_quat, t)


def _closed_loop(ur_type, interface, rate_hz, seed, policy=SHIPPED_INT8, seconds=6.0):
    arm = SimArm(ur_type, interface)
    arm.reset(seed)
    config = NodeConfig(ur_type=ur_type, command_interface=interface, rate_hz=rate_hz,
                        object_half_extents_m=tuple(arm.env.setup.obj.half_extents_m))
    core = ControlCore(config, HierarchicalController(HierPolicy.load(policy), 0.01, ur_type))
    every = round(1 / rate_hz / arm.dt)
    for k in range(int(seconds / arm.dt)):
        if k % every == 0:
            _feed(core, arm, arm.time_s)
            command = core.tick(arm.time_s)
            arm.set_command(command.values, command.gripper)
        arm.step()
        if arm.done:
            break
    return arm, core


@pytest.mark.parametrize("ur_type,interface,rate_hz", [("ur5e", "effort", 500.0), ("ur5", "velocity", 125.0)])
def test_core_grasps_through_each_command_interface(ur_type, interface, rate_hz):
    arm, core = _closed_loop(ur_type, interface, rate_hz, seed=0)
    assert arm.info["success"], arm.info
    assert core.stats.stops == 0 and core.stats.policy_steps > 250


def test_corrected_node_controller_estimates_with_the_torque_the_node_lets_through():
    """With max_torque_fraction < 1 the core clips the command below the motor limits: the
    estimator must clip to the same, or saturated steps would bias the motor-gain estimate."""
    from ds_robot.deploy.controllers import build_controller
    from ds_robot.model.params import default_description

    arm = SimArm("ur5e", "effort")
    obs, _ = arm.env.reset(seed=0)
    controller = build_controller("scripted", correction=True, max_torque_fraction=0.5)
    controller.reset(obs)
    limit = np.array(default_description().variant("ur5e").joint_torque_limit_nm)
    np.testing.assert_allclose(controller.limit, limit)  # action 1.0 is still the motor limit
    np.testing.assert_allclose(controller.estimator.limit, 0.5 * limit)
    with pytest.raises(ConfigError, match="without a model of the arm"):
        build_controller("flat", correction=True)


def test_config_refusals():
    with pytest.raises(ConfigError, match="CB3 controllers cannot take joint torques"):
        NodeConfig(ur_type="ur5", command_interface="effort")
    with pytest.raises(ConfigError, match="ur_type"):
        NodeConfig(ur_type="ur10")
    with pytest.raises(ConfigError, match="policy_rate_hz"):
        NodeConfig(rate_hz=50.0, policy_rate_hz=100.0)
    with pytest.raises(ConfigError, match="joint_names"):
        NodeConfig(joint_names=("a", "a", "b", "c", "d", "e"))
    with pytest.raises(ConfigError, match="max_torque_fraction"):
        NodeConfig(max_torque_fraction=1.5)


@pytest.fixture()
def running():
    """A core that has run the policy for a few ticks on live inputs."""
    arm = SimArm()
    arm.reset(0)
    core = ControlCore(NodeConfig(object_half_extents_m=tuple(arm.env.setup.obj.half_extents_m)),
                       HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    for _ in range(20):
        _feed(core, arm, arm.time_s)
        command = core.tick(arm.time_s)
        arm.set_command(command.values, command.gripper)
        arm.step()
    assert not command.stop
    return core, arm


def test_an_object_pose_near_the_base_axis_holds_the_arm_still():
    """A detection 8 cm from the base axis (the arm's own base, say) is a finite, well-formed pose
    that the core passes on; the skill machine refuses to go there (a straight TCP path into the
    shoulder singularity: in simulation the joints spun at 30-50 rad/s) and holds the arm."""
    from ds_robot.deploy.controllers import skill_machine

    arm = SimArm()
    arm.reset(0)
    core = ControlCore(NodeConfig(object_half_extents_m=tuple(arm.env.setup.obj.half_extents_m)),
                       HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    fastest = 0.0
    for _ in range(1000):  # 2 s at 500 Hz
        _feed(core, arm, arm.time_s)
        core.on_object_pose(np.array([0.08, 0.0, 0.03]), np.array([1.0, 0.0, 0.0, 0.0]), arm.time_s)
        command = core.tick(arm.time_s)
        arm.set_command(command.values, command.gripper)
        arm.step()
        fastest = max(fastest, float(np.abs(arm.env.state.qd_rad_s).max()))
    assert not command.stop and core.stats.policy_steps >= 199
    assert skill_machine(core.controller).phase == "out_of_reach"
    assert fastest < 0.5, fastest


def test_watchdog_stops_on_stale_or_missing_inputs(running):
    core, arm = running
    t = core.state.stamp_s
    timeout = core.config.state_timeout_s
    assert not core.tick(t + timeout - 0.001).stop
    stale = core.tick(t + timeout + 0.0005)  # newest joint state older than the timeout
    assert stale.stop and "joint_states stale" in stale.reason and not np.any(stale.values)
    assert core.stats.stop_reasons["joint_states stale"] == 1
    fresh = SimArm()
    fresh.reset(0)
    blank = ControlCore(NodeConfig(), HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    assert "no joint_states" in blank.tick(0.0).reason
    _feed(blank, fresh, 0.0)
    assert "object extents unknown" in blank.tick(0.0).reason
    blank.on_object_extents([0.02, 0.02, 0.02])
    assert not blank.tick(0.001).stop
    assert "joint_states stale" in blank.tick(0.6).reason
    names = [*fresh.arm_joint_names, *fresh.gripper_joint_names]
    s = fresh.env.state
    blank.on_joint_state(names, [*s.q_rad, 0, 0], [*s.qd_rad_s, 0, 0], [*s.tau_measured_nm, 0, 0], 0.6)
    assert "object pose stale" in blank.tick(0.6).reason


def test_malformed_messages_are_rejected_and_change_nothing(running):
    core, arm = running
    before = core.state
    s = arm.env.state
    names = [*arm.arm_joint_names, *arm.gripper_joint_names]
    q, qd, tau = [*s.q_rad, 0, 0], [*s.qd_rad_s, 0, 0], [*s.tau_measured_nm, 0, 0]
    t = arm.time_s + 0.001
    cases = {
        "missing joints": (names[:5] + names[6:], q[:7], qd[:7], tau[:7], t),
        "names but": (names, q[:7], qd, tau, t),
        "efforts": (names, q, qd, tau[:3], t),
        "non-finite joint_states positions": (names, [np.nan] + q[1:], qd, tau, t),
        "non-finite joint_states efforts": (names, q, qd, [np.inf] + tau[1:], t),
        "no velocities": (names, q, [], tau, t),
        "no efforts": (names, q, qd, [], t),
        "out-of-order": (names, q, qd, tau, before.stamp_s - 0.01),
    }
    for reason, message in cases.items():
        with pytest.raises(MessageError, match=reason):
            core.on_joint_state(*message)
        assert core.state is before
    # Names are matched, not indexed: a shuffled message gives the same state.
    order = np.random.default_rng(0).permutation(len(names))
    core.on_joint_state([names[i] for i in order], [q[i] for i in order], [qd[i] for i in order],
                        [tau[i] for i in order], t)
    np.testing.assert_allclose(core.state.q, s.q_rad)
    for pos, quat, match in (([0, 0], [1, 0, 0, 0], "malformed"), ([0, 0, np.nan], [1, 0, 0, 0], "non-finite"),
                             ([0, 0, 0], [2, 0, 0, 0], "unit quaternion")):
        with pytest.raises(MessageError, match=match):
            core.on_object_pose(pos, quat, t)
    extents = core.object_extents.copy()
    # no real object: negative, infinite, or 60 cm / 2e30 m tall (the grasp height follows the top)
    for bad in ([0.1, -0.1, 0.1], [0.02, np.inf, 0.02], [0.02, 0.02, 0.3], [0.02, 0.02, 1e30]):
        with pytest.raises(MessageError, match="extents"):
            core.on_object_extents(bad)
    np.testing.assert_array_equal(core.object_extents, extents)
    with pytest.raises(ConfigError, match="object_half_extents_m"):
        NodeConfig(object_half_extents_m=(0.02, np.inf, 0.02))
    assert not core.tick(t).stop  # still running on the last good inputs
    assert sum(core.stats.rejected.values()) == len(cases) + 7


def test_nan_policy_output_estop_and_reset(running):
    core, arm = running
    for _ in range(500):  # on until the arm moves (a probe-first policy starts slowly)
        if np.max(np.abs(core.state.qd)) > 2 * core.config.still_rad_s:
            break
        _feed(core, arm, arm.time_s)
        command = core.tick(arm.time_s)
        arm.set_command(command.values, command.gripper)
        arm.step()
    assert np.max(np.abs(core.state.qd)) > 2 * core.config.still_rad_s
    t = arm.time_s

    class Broken:
        def reset(self, obs):
            pass

        def act(self, obs):
            return np.full(7, np.nan)

    good = core.controller
    core.controller = Broken()
    t = core._next_policy_s  # the next policy step
    command = core.tick(t)
    assert command.stop and "policy output rejected" in command.reason
    assert command.values @ core.state.qd < 0  # the braking stop takes energy out of the motion
    assert core.tick(t + 0.002).stop  # stays stopped until the next policy step
    core.controller = good
    _feed(core, arm, t + 0.01)  # fresh inputs at the next policy step
    assert not core.tick(t + 0.0101).stop
    core.estop("test")
    assert core.tick(t + 0.0102).stop and core.tick(t + 0.0102).reason == "test"
    core.reset()
    assert not core.tick(t + 0.0103).stop


@pytest.mark.parametrize("seed", [0, 1])
def test_a_stop_brakes_the_moving_arm_to_rest_and_the_last_command_is_zeros(seed):
    """E-stop mid-approach in MuJoCo: the braking stop brings the arm to rest (every joint below
    0.02 rad/s) in well under the time it coasts on zeros ("gravity compensation only"), and
    then sends zeros; without a fresh state, and for the node's last command, the stop is zeros."""
    def stop_mid_approach(brake: bool) -> float:
        arm = SimArm()
        arm.reset(seed)
        core = ControlCore(NodeConfig(object_half_extents_m=tuple(arm.env.setup.obj.half_extents_m)),
                           HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
        t_stop = None
        for k in range(int(3.0 / arm.dt)):
            if k == int(0.6 / arm.dt):
                assert float(np.max(np.abs(arm.env.state.qd_rad_s))) > 0.1  # moving when stopped
                core.estop("test")
                t_stop = arm.time_s
            _feed(core, arm, arm.time_s)
            command = core.tick(arm.time_s) if brake or t_stop is None else core.stop_command("coast", brake=False)
            arm.set_command(command.values, command.gripper)
            arm.step()
            if t_stop is not None and float(np.max(np.abs(arm.env.state.qd_rad_s))) < 0.02:
                if brake:
                    _feed(core, arm, arm.time_s)
                    assert not np.any(core.tick(arm.time_s).values)  # at rest: zeros
                    assert core.stats.braking_stops > 0
                return arm.time_s - t_stop
        return math.inf

    braked, coasted = stop_mid_approach(True), stop_mid_approach(False)
    assert braked < 0.6 and braked < 0.5 * coasted, (braked, coasted)
    arm = SimArm()
    arm.reset(seed)
    core = ControlCore(NodeConfig(), HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    arm.env.state.qd_rad_s[:] = 0.5
    _feed(core, arm, 1.0)
    core.tick(1.0 + 0.001)
    assert np.any(core.stop_command("x").values) and not np.any(core.stop_command("x", brake=False).values)
    core.tick(1.0 + 0.05)  # the state is 50 ms old: nothing fresh to brake against
    assert not np.any(core.stop_command("stale").values)


def test_effort_command_removes_gravity_and_respects_limits(running):
    core, arm = running
    s = core.state
    core.model.update(s.q, s.qd, s.gripper_opening_m)
    gravity = core.model.gravity_torque()
    tau = np.full(6, 1e4)  # far beyond the limits
    out = core._to_interface(tau)
    np.testing.assert_allclose(out, core.torque_limit - gravity)
    # At the upper joint limit the part that pushes further out is removed (gravity is kept).
    core.state.q = core.q_high + 0.01
    core.state.qd = np.zeros(6)
    out = core._to_interface(np.full(6, 10.0))
    core.model.update(core.state.q, core.state.qd, core.state.gripper_opening_m)
    pushes_out = 10.0 - core.model.gravity_torque() > 0
    np.testing.assert_allclose(out[pushes_out], 0.0, atol=1e-9)


def test_limits_changed_while_running_apply_to_the_held_command_at_once(running):
    """A safety limit lowered between policy steps must not wait for the next policy step: the
    held command is re-limited at the next tick; impossible values change nothing."""
    core, arm = running
    t = arm.time_s
    held = core.tick(t)  # inside the policy period: the held command
    assert held is core.tick(t) and not held.stop
    s = core.state
    core.model.update(s.q, s.qd, s.gripper_opening_m)
    gravity = core.model.gravity_torque()
    tiny = 0.02
    core.reconfigure(max_torque_fraction=tiny)
    command = core.tick(t)
    assert not command.stop
    np.testing.assert_array_less(np.abs(command.values + gravity), tiny * core.joint_limit_nm + 1e-9)
    assert np.abs(held.values + gravity).max() > tiny * core.joint_limit_nm.max(), "the held command was already small"
    with pytest.raises(ConfigError, match="max_torque_fraction"):
        core.reconfigure(max_torque_fraction=0.0)
    with pytest.raises(ConfigError, match="restart"):
        core.reconfigure(ur_type="ur5")
    assert core.config.max_torque_fraction == tiny and core.config.ur_type == "ur5e"
    core.reconfigure(joint_limit_margin_rad=0.2, state_timeout_s=0.5)
    np.testing.assert_allclose(core.q_low - core.joint_range_rad[:, 0], 0.2)
    assert core.config.state_timeout_s == 0.5


def test_a_future_stamped_state_is_refused_and_cannot_lock_the_node_out(running):
    """One joint state stamped far ahead of the node's clock used to be accepted: it then looked
    fresh to the watchdog while the policy ran on it, and every correctly stamped state after it
    was refused as out of order."""
    core, arm = running
    s = arm.env.state
    names = [*arm.arm_joint_names, *arm.gripper_joint_names]
    q, qd, tau = [*s.q_rad, 0, 0], [*s.qd_rad_s, 0, 0], [*s.tau_measured_nm, 0, 0]
    now = arm.time_s
    before = core.state
    with pytest.raises(MessageError, match="ahead of the node's clock"):
        core.on_joint_state(names, q, qd, tau, now + 3600.0, now)
    assert core.state is before
    core.on_joint_state(names, q, qd, tau, now + 0.005, now)  # within max_stamp_ahead_s: clock jitter
    later = now + 0.002
    core.on_joint_state(names, q, qd, tau, later + 0.004, later)  # the next, correctly stamped one
    assert core.state.stamp_s == pytest.approx(later + 0.004)
    with pytest.raises(MessageError, match="ahead of the node's clock"):
        core.on_object_pose(s.object_pos_m, s.object_quat, now + 60.0, now)
    # Without new states the watchdog stops the arm on time: nothing stale looks fresh.
    assert core.tick(later + 0.004 + core.config.state_timeout_s + 0.001).stop
    with pytest.raises(ConfigError, match="max_stamp_ahead_s"):
        NodeConfig(max_stamp_ahead_s=-1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_corrupted_joint_states_interleaved_with_real_ones_never_reach_the_arm(seed):
    """After every real joint state a corrupted one: a finite but impossible position (1e30), a
    plausible-looking 1 rad jump, a speed no UR reaches, NaN. Every corrupted one is refused, the
    arm is driven by the real ones only, and the grasp succeeds as without corruption."""
    arm = SimArm("ur5e", "effort")
    arm.reset(seed)
    core = ControlCore(NodeConfig(object_half_extents_m=tuple(arm.env.setup.obj.half_extents_m)),
                       HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    names = [*arm.arm_joint_names, *arm.gripper_joint_names]
    rng = np.random.default_rng(seed)
    refused = 0
    for k in range(int(6.0 / arm.dt)):
        t = arm.time_s
        _feed(core, arm, t)
        s = arm.env.state
        q, qd = np.r_[s.q_rad, 0, 0], np.r_[s.qd_rad_s, 0, 0]
        kind = k % 4
        bad_q, bad_qd = q.copy(), qd.copy()
        joint = int(rng.integers(6))
        if kind == 0:
            bad_q[joint] = 1e30
        elif kind == 1:
            bad_q[joint] += rng.choice([-1.0, 1.0])
        elif kind == 2:
            bad_qd[joint] = 40.0
        else:
            bad_q[joint] = np.nan
        with pytest.raises(MessageError):
            core.on_joint_state(names, bad_q, bad_qd, [*s.tau_measured_nm, 0, 0], t + 0.0005)
        refused += 1
        np.testing.assert_array_equal(core.state.q, s.q_rad)  # the real state stands
        command = core.tick(t + 0.0005)
        arm.set_command(command.values, command.gripper)
        arm.step()
        if arm.done:
            break
    assert arm.info["success"], arm.info
    assert core.stats.stops == 0 and refused > 1000
    assert {"implausible joint_states positions", "implausible joint_states jump",
            "implausible joint_states velocities", "non-finite joint_states positions"} <= set(core.stats.rejected)


def test_the_jump_gate_re_anchors_when_the_last_accepted_state_was_the_outlier(running):
    core, arm = running
    s = arm.env.state
    names = [*arm.arm_joint_names, *arm.gripper_joint_names]
    t = core.state.stamp_s
    shifted = np.r_[s.q_rad, 0, 0]
    shifted[0] += 0.5  # the arm really is elsewhere (e.g. the node missed a fast motion)
    for k in range(2):
        with pytest.raises(MessageError, match="jump"):
            core.on_joint_state(names, shifted, np.zeros(8), np.zeros(8), t + 0.002 * (k + 1))
    core.on_joint_state(names, shifted, np.zeros(8), np.zeros(8), t + 0.006)  # the third agreeing one is taken
    assert core.state.q[0] == pytest.approx(shifted[0])


@pytest.mark.parametrize("seed", [0, 2])
def test_driver_faithful_inputs_arm_only_joint_states_and_a_separate_gripper_grasp(seed):
    """As on a real UR: joint_states with the six arm joints only, the gripper's own JointState at
    a lower rate (100 Hz). The grasp succeeds; a core that expects the fingers in joint_states
    refuses every such message; a stale gripper state stops the arm."""
    arm = SimArm("ur5e", "effort")
    arm.reset(seed)
    extents = tuple(arm.env.setup.obj.half_extents_m)
    core = ControlCore(NodeConfig(object_half_extents_m=extents, separate_gripper_state=True),
                       HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    combined = ControlCore(NodeConfig(object_half_extents_m=extents), HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    every = round(0.002 / arm.dt)
    stops_before_gripper = 0
    for k in range(int(6.0 / arm.dt)):
        s, t = arm.env.state, arm.time_s
        if k % every == 0:
            core.on_joint_state(list(arm.arm_joint_names), s.q_rad, s.qd_rad_s, s.tau_measured_nm, t)
            core.on_object_pose(s.object_pos_m, s.object_quat, t, frame_id="base")
            if k == 0:
                with pytest.raises(MessageError, match="missing joints"):
                    combined.on_joint_state(list(arm.arm_joint_names), s.q_rad, s.qd_rad_s, s.tau_measured_nm, t)
        if k % (5 * every) == 0 and k > 0:
            half, speed = s.gripper_opening_m / 2, s.gripper_speed_m_s / 2
            core.on_gripper_state(list(arm.gripper_joint_names), [half, half], [speed, speed], t)
        command = core.tick(t)
        stops_before_gripper += command.stop and core.gripper is None
        assert np.isfinite(command.values).all() and np.isfinite(command.gripper)
        arm.set_command(command.values, command.gripper)
        arm.step()
        if arm.done:
            break
    assert arm.info["success"], arm.info
    assert stops_before_gripper > 0 and core.stats.stop_reasons.get("no gripper state yet", 0) == stops_before_gripper
    later = core.gripper.stamp_s + core.config.gripper_timeout_s + 0.01
    core.on_joint_state(list(arm.arm_joint_names), arm.env.state.q_rad, arm.env.state.qd_rad_s,
                        arm.env.state.tau_measured_nm, later)
    core.on_object_pose(arm.env.state.object_pos_m, arm.env.state.object_quat, later)
    assert "gripper state stale" in core.tick(later).reason


def test_gripper_states_and_object_frames_that_cannot_be_right_are_refused():
    core = ControlCore(NodeConfig(separate_gripper_state=True, tf_prefix="ur_"),
                       HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    fingers = list(core.config.gripper_joints)
    for names, positions, match in ((fingers[:1], [0.01], "missing joints"), (fingers, [0.01], "malformed"),
                                    (fingers, [0.5, 0.5], "implausible gripper opening"),
                                    (fingers, [np.nan, 0.0], "non-finite")):
        with pytest.raises(MessageError, match=match):
            core.on_gripper_state(names, positions, [], 1.0)
    core.on_gripper_state(fingers, [0.01, 0.01], [0.0, 0.0], 1.0)
    with pytest.raises(MessageError, match="out-of-order"):
        core.on_gripper_state(fingers, [0.01, 0.01], [0.0, 0.0], 0.5)
    with pytest.raises(MessageError, match="frame 'ur_base_link', expected 'ur_base'"):
        core.on_object_pose([0.5, 0.0, 0.02], [1, 0, 0, 0], 1.0, frame_id="ur_base_link")
    core.on_object_pose([0.5, 0.0, 0.02], [1, 0, 0, 0], 1.0, frame_id="ur_base")
    plain = ControlCore(NodeConfig(), HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    with pytest.raises(MessageError, match="separate_gripper_state is off"):
        plain.on_gripper_state(fingers, [0.01, 0.01], [], 1.0)


def test_effort_as_motor_current_or_gravity_compensated_torque_becomes_joint_torque():
    """The UR driver's effort is motor current (A); with effort_kind current and the operator's
    factors the core sees the joint torque; the gravity-compensated kind gets gravity back."""
    arm = SimArm()
    arm.reset(0)
    s = arm.env.state
    names = list(arm.arm_joint_names)
    factors = np.array([12.0, 12.0, 11.0, 9.0, 9.0, 9.0])
    current = ControlCore(NodeConfig(effort_kind="current", current_to_torque_nm_per_a=tuple(factors),
                                     separate_gripper_state=True), HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    current.on_joint_state(names, s.q_rad, s.qd_rad_s, s.tau_measured_nm / factors, 1.0)
    np.testing.assert_allclose(current.state.tau, s.tau_measured_nm, rtol=1e-12)
    compensated = ControlCore(NodeConfig(effort_kind="gravity_compensated_torque", separate_gripper_state=True),
                              HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    gravity = compensated.model
    gravity.update(s.q_rad, np.zeros(6))
    compensated.on_joint_state(names, s.q_rad, s.qd_rad_s, s.tau_measured_nm - gravity.gravity_torque(), 1.0)
    np.testing.assert_allclose(compensated.state.tau, s.tau_measured_nm, atol=1e-9)
    assert np.abs(gravity.gravity_torque()[1]) > 10.0  # what a reading taken as torque would miss at the shoulder
    with pytest.raises(MessageError, match="implausible joint_states efforts"):
        current.on_joint_state(names, s.q_rad, s.qd_rad_s, np.full(6, 30.0), 1.1)  # 360 N m on a 150 N m joint
    with pytest.raises(ConfigError, match="current_to_torque_nm_per_a"):
        NodeConfig(effort_kind="current")
    with pytest.raises(ConfigError, match="effort_kind"):
        NodeConfig(effort_kind="amps")


def test_supervisor_brakes_when_commands_stop_and_stays_latched():
    from ds_robot.deploy.supervisor import SupervisorConfig, SupervisorCore

    core = SupervisorCore(SupervisorConfig(command_timeout_s=0.02, brake_time_s=0.1))
    q, qd = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0]), np.array([0.5, -0.3, 0.2, 0.0, 1.0, -0.01])
    core.on_joint_state(q, qd)
    assert core.tick(0.0) is None and core.state == "idle"  # nothing to supervise before the first command
    t = 0.0
    for _ in range(50):  # the policy publishing at 500 Hz
        core.on_command(t, np.full(6, 0.5))
        assert core.tick(t + 0.001) is None
        t += 0.002
    last = t - 0.002
    assert core.tick(last + 0.019) is None and core.state == "watching"
    brake = core.tick(last + 0.021)
    assert core.state == "braking" and core.trips[-1]["gap_s"] == pytest.approx(0.021)
    core.model.update(q, qd)
    expected = -core.model.mass_matrix() @ qd / 0.1
    np.testing.assert_allclose(brake, np.clip(expected, -core.limit_nm, core.limit_nm))
    assert brake @ qd < 0  # it takes energy out of the motion
    core.on_command(last + 0.022)  # its own brake command echoes back: not the policy
    assert core.state == "braking"
    core.on_joint_state(q, np.full(6, 0.001))
    assert core.tick(last + 0.03) is not None and core.state == "braking"
    assert not np.any(core.tick(last + 0.25)) and core.state == "stopped"
    core.on_command(last + 0.3)
    assert core.state == "stopped" and not np.any(core.tick(last + 0.3))  # latched
    core.rearm()
    assert core.state == "idle" and core.tick(last + 1.0) is None
    quiet = SupervisorCore(SupervisorConfig())
    quiet.on_joint_state(q, np.zeros(6))
    quiet.on_command(0.0, np.zeros(6))  # a stop command, the arm at rest: a silence leaves nothing on the arm
    assert quiet.tick(1.0) is None and quiet.state == "watching"
    quiet.on_joint_state(q, np.full(6, 0.1))  # but a moving arm is braked
    assert quiet.tick(1.001) is not None and quiet.state == "braking"
    velocity = SupervisorCore(SupervisorConfig(command_interface="velocity"))
    velocity.on_command(0.0)
    assert not np.any(velocity.tick(0.05)) and velocity.state == "stopped"
    with pytest.raises(ConfigError, match="command_timeout_s"):
        SupervisorConfig(command_timeout_s=0.0)


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL])
def test_supervisor_brakes_at_once_when_the_watched_process_stops_or_dies(sig):
    """The process watch on a real process: stopped (SIGSTOP) or killed (SIGKILL, then reaped or
    not) brakes at the next check, long before the command timeout; a running process does not."""
    from ds_robot.deploy.supervisor import SupervisorConfig, SupervisorCore, process_state

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        core = SupervisorCore(SupervisorConfig(command_timeout_s=10.0))
        core.watch_process(child.pid)
        core.on_joint_state(np.zeros(6), np.full(6, 0.3))
        core.on_command(0.0, np.full(6, 1.0))
        assert core.tick(0.001) is None and core.state == "watching" and process_state(child.pid) == "running"
        child.send_signal(sig)
        # at once: a pending SIGKILL / SIGSTOP counts before the child is scheduled to act on it
        assert core.tick(0.002) is not None and core.state == "braking", core.summary()
        assert ("stopped" if sig == signal.SIGSTOP else "killed") in core.trips[-1]["reason"]
        core.on_joint_state(np.zeros(6), np.zeros(6))
        core.tick(0.01)
        core.tick(0.5)
        assert core.state == "stopped"
        core.rearm()  # the watch is kept while the process is alive (stopped), dropped once it is gone
        assert (core.watch is not None) == (sig == signal.SIGSTOP)
    finally:
        child.kill()
        child.wait()
    assert process_state(child.pid) == "gone"


def test_operator_gate_ready_enable_ramp_in_and_a_latched_fault():
    """require_enable: nothing but the stop command until ~/enable; the command ramps in; a stale
    state while enabled latches a fault that only reset + enable clear."""
    arm = SimArm()
    arm.reset(0)
    config = NodeConfig(object_half_extents_m=tuple(arm.env.setup.obj.half_extents_m), require_enable=True,
                        torque_ramp_s=0.5)
    core = ControlCore(config, HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    with pytest.raises(MessageError, match="not ready"):
        core.enable(arm.time_s)
    for _ in range(50):
        _feed(core, arm, arm.time_s)
        command = core.tick(arm.time_s)
        assert command.stop and "waiting for ~/enable" in command.reason and core.mode == "ready"
        arm.set_command(command.values, command.gripper)
        arm.step()
    core.enable(arm.time_s)
    free = ControlCore(NodeConfig(object_half_extents_m=config.object_half_extents_m),
                       HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    ratios = []
    for _ in range(600):
        t = arm.time_s
        _feed(core, arm, t)
        _feed(free, arm, t)
        command, reference = core.tick(t), free.tick(t)
        assert not command.stop and core.mode == "enabled"
        if np.any(reference.values):
            ratios.append(np.linalg.norm(command.values) / np.linalg.norm(reference.values))
        arm.set_command(command.values, command.gripper)
        arm.step()
    assert ratios[0] < 0.1 and ratios[-1] == pytest.approx(1.0)  # 0 -> 1 over torque_ramp_s
    stale = core.tick(arm.time_s + 1.0)
    assert stale.stop and core.mode == "fault"
    _feed(core, arm, arm.time_s + 1.0)
    assert "fault latched" in core.tick(arm.time_s + 1.0).reason
    with pytest.raises(MessageError, match="fault"):
        core.enable(arm.time_s + 1.0)
    core.reset()  # the arm is now over the object, not where a grasp starts: not ready
    assert "outside the start region" in core.tick(arm.time_s + 1.0).reason and core.mode == "passive"
    with pytest.raises(MessageError, match="require_enable is false"):
        free.enable(0.0)


def test_the_robot_program_must_run_and_its_stop_while_enabled_is_a_fault():
    """require_program_running (the shipped robot files): no word from the driver or the External
    Control program stopped is a stop; with the program running the gate opens; the program
    stopping while enabled latches a fault that the program's restart alone does not clear."""
    arm = SimArm()
    arm.reset(0)
    config = NodeConfig(object_half_extents_m=tuple(arm.env.setup.obj.half_extents_m), require_enable=True,
                        require_program_running=True)
    core = ControlCore(config, HierarchicalController(HierPolicy.load(SHIPPED_INT8)))

    def tick():
        _feed(core, arm, arm.time_s)
        command = core.tick(arm.time_s)
        arm.set_command(command.values, command.gripper)
        arm.step()
        return command

    assert "robot program state unknown" in tick().reason and core.mode == "passive"
    core.on_program_running(False)
    assert "robot program not running" in tick().reason
    with pytest.raises(MessageError, match="not ready"):
        core.enable(arm.time_s)
    core.on_program_running(True)
    assert "waiting for ~/enable" in tick().reason and core.mode == "ready"
    core.enable(arm.time_s)
    assert not any(tick().stop for _ in range(100)) and core.mode == "enabled"
    core.on_program_running(False)  # a protective stop or someone pressed stop on the pendant
    assert tick().stop and core.mode == "fault"
    core.on_program_running(True)  # restarted: still latched until the operator re-arms
    assert "fault latched" in tick().reason


def test_a_mostly_corrupted_stream_latches_an_input_fault_an_odd_message_does_not():
    arm = SimArm()
    arm.reset(0)
    core = ControlCore(NodeConfig(object_half_extents_m=tuple(arm.env.setup.obj.half_extents_m)),
                       HierarchicalController(HierPolicy.load(SHIPPED_INT8)))
    names = [*arm.arm_joint_names, *arm.gripper_joint_names]
    s = arm.env.state
    t = 0.0
    for _ in range(400):  # one refused state in two: dropped and counted, no fault
        t += 0.001
        _feed(core, arm, t)
        with pytest.raises(MessageError):
            core.on_joint_state(names, np.full(8, np.nan), np.zeros(8), np.zeros(8), t + 0.0005)
    assert not core.estopped and not core.tick(t + 0.0005).stop
    for k in range(400):  # nine in ten refused: a corrupted stream latches a fault
        t += 0.001
        if k % 10 == 0:
            _feed(core, arm, t)
        else:
            with pytest.raises(MessageError):
                core.on_joint_state(names, [*s.q_rad, 0, 0], np.zeros(8), np.zeros(8), t - 1.0)  # out of order
    command = core.tick(t)
    assert core.estopped and command.stop and "input fault" in command.reason
    core.reset()
    _feed(core, arm, t + 0.001)
    assert not core.estopped


def test_realtime_priority_puts_every_thread_on_sched_fifo_or_says_why_not():
    """realtime_priority (the nodes' parameter): every thread of the process SCHED_FIFO, or a
    clear refusal where this user may not; impossible priorities are refused."""
    code = """
import os, threading, time
from ds_robot.deploy.ros_common import apply_realtime_priority
from ds_robot.errors import ConfigError
threading.Thread(target=time.sleep, args=(5,), daemon=True).start()  # a thread that exists already (DDS's)
try:
    apply_realtime_priority(10)
except ConfigError as exc:
    print("refused", exc)
else:
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    print("fifo", all(os.sched_getscheduler(t) == os.SCHED_FIFO for t in tids), len(tids))
"""
    pytest.importorskip("rclpy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    word, *rest = out.stdout.split()
    assert (word == "fifo" and rest[0] == "True" and int(rest[1]) >= 2) or (word == "refused" and "rtprio" in out.stdout)
    from ds_robot.deploy.ros_common import apply_realtime_priority

    apply_realtime_priority(0)  # off: nothing changes
    for bad in (-1, 100):
        with pytest.raises(ConfigError, match="realtime_priority"):
            apply_realtime_priority(bad)
