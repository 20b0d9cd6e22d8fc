"""Sim-to-real: the physics-shifted MuJoCo world and the online RLS estimator."""

import math

import numpy as np
import pytest

from ds_robot.control.robot_model import RobotModel
from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.envs.layout import OBS_SLICES as S
from ds_robot.model.params import default_description
from ds_robot.sim2real.estimator import N_PARAMS, SLICES, EstimatorConfig, GripperState, ModelPredictor, OnlineEstimator
from ds_robot.sim2real.worlds import PhysicsShift, ShiftedMuJoCoBackend


def test_shifted_world_applies_the_shift_and_delays_commands():
    shift = PhysicsShift(damping_scale=(2.0,) * 6, gain=(1.2, 1, 1, 1, 1, 0.8), payload_kg=0.5, latency_steps=2)
    backend = ShiftedMuJoCoBackend(shift=shift)
    env = UR5GraspEnv(backend=backend)
    env.reset(seed=0)
    m = backend.model
    np.testing.assert_allclose(m.dof_damping[:6], [4, 4, 4, 1, 1, 1])
    assert m.actuator_gear[0, 0] == pytest.approx(1.2) and m.actuator_gear[5, 0] == pytest.approx(0.8)
    commands = [np.full(6, 0.01 * (k + 1)) for k in range(4)]
    applied = []
    for c in commands:
        env.step(np.append(c, -1.0))
        applied.append(env.state.tau_applied_nm / (np.array(shift.gain) * backend.joint_torque_limit_nm))
    # Latency 2: the first command until the pipeline fills, then the command of 2 steps ago.
    for got, want in zip(applied, [commands[0], commands[0], commands[0], commands[1]], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # A new episode of a seeded world draws a new hidden shift; the nominal values are restored first.
    seeded = ShiftedMuJoCoBackend(seed=1)
    UR5GraspEnv(backend=seeded).reset(seed=0)
    first = seeded.shift
    assert first != PhysicsShift() and min(first.damping_scale) >= 0.5 and max(first.damping_scale) <= 2.0


def _synthetic_rows(est, theta, rng, n):
    """Rows the estimator's own regressor builds, with commands that the true parameters explain."""
    for _ in range(n):
        q = rng.uniform(-2, 2, 6)
        qd = rng.uniform(-1, 1, 6)
        qdd = rng.uniform(-3, 3, 6)
        phi, tau_nom = est.regressor(q, qd, qdd, np.zeros(6))
        g = theta[SLICES["gain"]]
        rest = -(phi @ theta)  # everything but the command: -(-dd qd - df sign - da qdd - m Y)
        tau_cmd = (tau_nom + rest) / g
        phi[np.arange(6), SLICES["gain"].start + np.arange(6)] = tau_cmd
        yield phi, tau_nom


def test_rls_recovers_known_parameters_from_synthetic_data():
    rng = np.random.default_rng(0)
    est = OnlineEstimator()
    theta = np.zeros(N_PARAMS)
    theta[SLICES["gain"]] = rng.uniform(0.8, 1.2, 6)
    theta[SLICES["damping"]] = rng.uniform(-1, 2, 6)
    theta[SLICES["friction"]] = rng.uniform(0, 0.8, 6)
    theta[SLICES["armature"]] = rng.uniform(-0.05, 0.1, 6)
    theta[SLICES["payload_kg"]] = 0.37
    rls = est.filters[0]
    for phi, y in _synthetic_rows(est, theta, rng, 300):
        rls.forget()
        rls.update(phi, y + rng.normal(0, 0.2, 6))  # torque noise
    err = np.abs(rls.theta - theta)
    # Wrist 3 carries almost no gravity or coupling load: its command is nearly a combination of
    # its own damping, friction and armature columns, so its gain is not identifiable apart from
    # them (a property of the arm, not of the filter; see the estimator's docstring). Measured: at
    # most 0.032 (wrist 2), against the do-nothing estimate's 0.055-0.193 on these joints.
    assert err[SLICES["gain"]][:5].max() < 0.04
    assert err[SLICES["damping"]].max() < 0.2
    assert err[SLICES["payload_kg"]][0] < 0.05
    assert np.all(np.isfinite(rls.P)) and np.allclose(rls.P, rls.P.T)


def _free_motion(shift, steps, noise_std=0.0, seed=1, saturate=False, config=None):
    """Computed-torque tracking of joint sinusoids in a shifted world, the estimator fed as a controller would."""
    rng = np.random.default_rng(seed)
    env = UR5GraspEnv(backend=ShiftedMuJoCoBackend(shift=shift), episode_s=60)
    lim = env.backend.joint_torque_limit_nm
    est = OnlineEstimator(config=config)
    est.set_torque_limit(lim)
    obs, _ = env.reset(seed=seed)
    model = RobotModel()
    q0 = obs[S["q"]].astype(float)
    freq, amp, phase = rng.uniform(0.3, 1.0, 6), np.array([0.4, 0.3, 0.4, 0.6, 0.6, 0.8]), rng.uniform(0, 6, 6)
    for k in range(steps):
        t = k * env.control_dt_s
        q_des = q0 + amp * (np.sin(2 * np.pi * freq * t + phase) - np.sin(phase))
        qd_des = amp * 2 * np.pi * freq * np.cos(2 * np.pi * freq * t + phase)
        q = obs[S["q"]].astype(float)
        qd = obs[S["qd"]].astype(float) * math.pi
        model.update(q, qd)
        tau = model.mass_matrix() @ (100 * (q_des - q) + 20 * (qd_des - qd)) + model.bias_torque()
        if saturate:
            tau *= 1.5  # past the wrist limits at times: the estimator sees clipped commands
        est.update(q, qd + rng.normal(0, noise_std, 6), tau)
        obs, *_ = env.step(np.append(np.clip(tau / lim, -1, 1), -1.0))
    return est


@pytest.mark.parametrize("latency", [0, 2])
def test_estimator_identifies_the_shifted_world_in_free_motion(latency):
    shift = PhysicsShift(damping_scale=(0.6, 0.9, 1.7, 1.4, 0.7, 1.1), friction_add_nm=(0.4, 0.6, 0.7, 0.2, 0.1, 0.1),
                         gain=(1.08, 0.92, 0.85, 1.15, 0.9, 1.0), payload_kg=0.45, latency_steps=latency)
    est = _free_motion(shift, 200)  # 2 s
    e = est.estimate()
    assert e["latency_steps"] == latency
    np.testing.assert_allclose(e["gain"][:5], shift.gain[:5], atol=0.08)
    assert abs(e["payload_kg"] - shift.payload_kg) < 0.15
    assert np.median(est.cost_s) < 0.002  # 20% of the 10 ms control period


def _prediction_errors(shift, estimate_of_shift, steps=100):
    """One-step velocity prediction errors (rad/s, max over joints) of the nominal model and of the
    model with ``estimate_of_shift`` written in, in a world with ``shift``, under gravity
    compensation plus a sinusoidal torque (free motion, gripper opening)."""
    env = UR5GraspEnv(backend=ShiftedMuJoCoBackend(shift=shift))
    lim, travel = env.backend.joint_torque_limit_nm, default_description().gripper.finger_travel_m
    obs, _ = env.reset(seed=3)
    model, predictor = RobotModel(), ModelPredictor()
    errors = {"nominal": [], "estimate": []}
    for k in range(steps):
        q, qd = obs[S["q"]].astype(float), obs[S["qd"]].astype(float) * math.pi
        model.update(q, qd)
        tau = model.gravity_torque() + 0.05 * lim * np.sin(0.1 * k + np.arange(6))
        opening, speed = obs[S["gripper"]].astype(float) * (env.backend.max_gripper_opening_m, 0.1)
        gripper = GripperState(opening, speed, travel)  # command -1: fully open
        pred = {"nominal": predictor.predict(q, qd, tau, None, gripper),
                "estimate": predictor.predict(q, qd, tau, estimate_of_shift, gripper)}
        obs, *_ = env.step(np.append(tau / lim, -1.0))
        for key, value in pred.items():
            errors[key].append(np.abs(obs[S["qd"]] * math.pi - value).max())
    return {key: float(np.max(v)) for key, v in errors.items()}


def test_model_predictor_reproduces_the_world_it_describes():
    m = RobotModel().model
    damping, armature = m.dof_damping[:6].copy(), m.dof_armature[:6].copy()
    shift = PhysicsShift(damping_scale=(2.0, 0.5, 1.5, 1.2, 0.8, 1.0), armature_scale=(1.5, 0.7, 1.2, 2.0, 1.0, 0.5),
                         friction_add_nm=(0.5, 0.8, 0.3, 0.1, 0.1, 0.1), gain=(0.85, 1.15, 0.9, 1.1, 1.0, 0.95),
                         payload_kg=0.4)
    truth = {"damping": damping * (np.array(shift.damping_scale) - 1), "armature": armature * (np.array(shift.armature_scale) - 1),
             "friction": np.array(shift.friction_add_nm), "gain": np.array(shift.gain), "payload_kg": shift.payload_kg}
    nominal_world = _prediction_errors(PhysicsShift(), truth)
    shifted_world = _prediction_errors(shift, truth)
    # The nominal model predicts the nominal world, and the true shift the shifted world, up to the observation's
    # float32 rounding and the fingers (seen only as opening and speed: each finger is taken as half); the nominal
    # model misses the shifted world by ~0.1 rad/s. (Past ~1.4 s this motion reaches the table: contact is not in
    # the predictor's model.)
    assert nominal_world["nominal"] < 3e-4 and shifted_world["estimate"] < 3e-4
    assert shifted_world["nominal"] > 100 * shifted_world["estimate"]
    assert nominal_world["estimate"] > 100 * nominal_world["nominal"]


@pytest.mark.parametrize("gain", [0.9, 1.1])
def test_estimator_is_stable_with_noise_saturation_and_rejects_bad_input(gain):
    # Velocity noise of 1e-3 rad/s (encoder-derived velocities; 1e-2, the realistic task's: test_sim2real_worlds)
    est = _free_motion(PhysicsShift(gain=(gain,) * 6, payload_kg=0.3), 400, noise_std=0.001, saturate=True)
    e = est.estimate()
    for value in e.values():
        assert np.all(np.isfinite(value))
    # against the do-nothing estimator (its prior: gain 1, no payload) on the same data: well under
    # its error (wrist 3's gain is not identifiable from this motion: the estimator's docstring)
    prior_error = abs(1.0 - gain)
    error = np.abs(e["gain"][:5] - gain)
    assert error.mean() < 0.4 * prior_error and error.max() < 0.6 * prior_error, e["gain"]
    assert abs(e["payload_kg"] - 0.3) < 0.5 * 0.3, e["payload_kg"]
    before = est.estimate()
    assert not est.update(np.full(6, np.nan), np.zeros(6), np.zeros(6))
    assert not est.update(np.zeros(6), np.zeros(6), np.array([np.inf, 0, 0, 0, 0, 0]))
    np.testing.assert_equal(est.estimate()["gain"], before["gain"])
    # A torque spike the model cannot explain (an impact) is gated out, not learned.
    rls = est.filters[est.latency_steps]
    rejected, theta = rls.rejected, rls.theta.copy()
    phi = np.zeros((6, N_PARAMS))
    phi[np.arange(6), np.arange(6)] = 10.0
    rls.update(phi, phi @ theta + 500.0)
    assert rls.rejected == rejected + 6 and np.allclose(rls.theta, theta)


def test_the_batched_bank_updates_exactly_as_separate_filters():
    """The estimator's stacked update of its three latency filters (RLSBank) against three filters
    built alone (each a bank of one), on the same rows, through gated rows (outliers) and a restart
    of one filter only: the stack keeps the filters apart."""
    from ds_robot.sim2real.estimator import RLS, RLSBank

    rng = np.random.default_rng(3)
    est, config = OnlineEstimator(), EstimatorConfig()
    theta0, p0 = est.filters[0].theta0, np.sqrt(est.filters[0].P0_diag)
    bank = RLSBank(3, theta0, p0, config)
    alone = [RLS(theta0, p0, config) for _ in range(3)]
    truth = theta0 + rng.normal(0, 0.05, len(theta0))
    for k, (phi, y) in enumerate(_synthetic_rows(est, truth, rng, 120)):
        phis = np.stack([phi * (1 + 0.05 * i) for i in range(3)])
        y = y + rng.normal(0, 0.3, 6)
        if k % 17 == 5:
            y[2] += 200.0  # an impact: gated out
        if k == 60:
            for rls in [bank.filters[1], alone[1]]:
                rls.theta[:] += 3.0  # confidently wrong: every row rejected until it restarts
                rls.P *= 1e-8
        e = bank.step(np.arange(3), phis, y)
        for i, rls in enumerate(alone):
            rls.forget()
            np.testing.assert_allclose(e[i], rls.update(phis[i], y), rtol=1e-9, atol=1e-9)
    for i, rls in enumerate(alone):
        np.testing.assert_allclose(bank.filters[i].theta, rls.theta, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(bank.filters[i].P, rls.P, rtol=1e-7, atol=1e-12)
        assert (bank.filters[i].rejected, bank.filters[i].restarts, bank.filters[i].updates) == \
            (rls.rejected, rls.restarts, rls.updates)
    assert alone[1].restarts == 1 and alone[0].rejected > 0


def test_a_confidently_wrong_filter_restarts_instead_of_locking_out():
    """One bad row accepted while the prior is wide can leave the filter confident and wrong;
    then every true row looks like an outlier and is gated out. The filter notices (most rows of
    the last ``restart_window_steps`` rejected), restarts from the prior and converges."""
    rng = np.random.default_rng(0)
    est = OnlineEstimator()
    theta = np.zeros(N_PARAMS)
    theta[SLICES["gain"]] = rng.uniform(0.85, 1.15, 6)
    theta[SLICES["payload_kg"]] = 0.3
    rls = est.filters[0]
    rls.theta[SLICES["gain"]] = 1.6
    rls.P *= 1e-6
    for k, (phi, y) in enumerate(_synthetic_rows(est, theta, rng, 300)):
        rls.forget()
        rls.update(phi, y + rng.normal(0, 0.2, 6))
        if k == est.config.restart_window_steps - 2:
            assert rls.restarts == 0 and rls.rejected > 0  # locked out so far
    assert rls.restarts == 1
    assert np.abs(rls.theta - theta)[SLICES["gain"]][:5].max() < 0.05
    assert abs(rls.theta[SLICES["payload_kg"]][0] - 0.3) < 0.05


def _jittered_free_motion(shift, use_intervals, seed, steps=200, config=None):
    """Free motion where the measurements come 8, 10 or 12 ms apart (as joint states over a real
    network do) and the command changes at each; the estimator is told the intervals or not."""
    rng = np.random.default_rng(seed)
    env = UR5GraspEnv(backend=ShiftedMuJoCoBackend(shift=shift, max_latency_steps=0), control_dt_s=0.002,
                      physics_dt_s=0.002, episode_s=60)
    lim = env.backend.joint_torque_limit_nm
    est = OnlineEstimator(config=config)
    est.set_torque_limit(lim)
    obs, _ = env.reset(seed=seed)
    model, q0 = RobotModel(), obs[S["q"]].astype(float)
    freq, amp, phase = rng.uniform(0.3, 1.0, 6), np.array([0.4, 0.3, 0.4, 0.6, 0.6, 0.8]), rng.uniform(0, 6, 6)
    t, previous = 0.0, None
    for _ in range(steps):
        q_des = q0 + amp * (np.sin(2 * np.pi * freq * t + phase) - np.sin(phase))
        qd_des = amp * 2 * np.pi * freq * np.cos(2 * np.pi * freq * t + phase)
        q, qd = obs[S["q"]].astype(float), obs[S["qd"]].astype(float) * math.pi
        model.update(q, qd)
        tau = model.mass_matrix() @ (100 * (q_des - q) + 20 * (qd_des - qd)) + model.bias_torque()
        est.update(q, qd, tau, None, previous if use_intervals else None)
        n = int(rng.choice([4, 5, 6]))  # physics steps until the next measurement
        for _ in range(n):
            obs, *_ = env.step(np.append(np.clip(tau / lim, -1, 1), -1.0))
        t, previous = t + n * env.control_dt_s, n * env.control_dt_s
    return est.estimate()


def test_estimator_dynamics_equal_the_robot_models():
    """The estimator's cheaper dynamics evaluation (kinematics, CRB, RNE; no mj_forward) gives
    exactly the controller's model's mass matrix and bias torques."""
    est, rng = OnlineEstimator(), np.random.default_rng(0)
    for _ in range(5):
        q, qd = rng.uniform(-2, 2, 6), rng.uniform(-1.5, 1.5, 6)
        mass, bias = est._dynamics(q, qd)
        est.model.update(q, qd)
        np.testing.assert_allclose(mass, est.model.mass_matrix(), atol=1e-12)
        np.testing.assert_allclose(bias, est.model.bias_torque(), atol=1e-12)


def test_correction_divides_by_a_gain_only_as_far_as_the_data_told_it():
    """A joint the motion has not excited keeps gain 1 whatever its estimate says; one the data
    pin down gets (nearly) its estimate. Fails for a correction that divides by the raw estimate."""
    from ds_robot.deploy.controllers import controller_for_env

    env = UR5GraspEnv()
    controller = controller_for_env("scripted", env, correction=True)
    obs, _ = env.reset(seed=0)
    controller.reset(obs)
    est = controller.estimator
    estimate = dict(est.estimate(), gain=np.full(6, 0.8))
    np.testing.assert_allclose(controller.gain_to_apply(estimate), 1.0)  # nothing learnt yet
    rls = est.filters[est.latency_steps]
    rls.P[0, 0] *= 1e-4  # joint 0's gain known to 1% of its prior's spread
    applied = controller.gain_to_apply(estimate)
    assert abs(applied[0] - 0.8) < 0.01 and np.allclose(applied[1:], 1.0)
    assert est.relative_std()["gain"][0] == pytest.approx(0.01)
    env.close()


def test_low_pass_holds_a_constant_follows_a_ramp_and_refuses_a_bad_cut_off():
    from ds_robot.errors import ConfigError
    from ds_robot.sim2real.estimator import LowPass

    f = LowPass(4.0)
    f.reset(np.array([2.0, -1.0]))
    for _ in range(50):
        f.step(np.array([2.0, -1.0]), 0.01)
    np.testing.assert_allclose(f.y, [2.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(f.dy, 0.0, atol=1e-12)
    # a ramp of slope 3 (each interval's mean held): the derivative state reads the slope, with no
    # finite difference, to within 1% (the held staircase's ripple: 0.46% here), and the output
    # lags by 2 / w (both poles at -w)
    f.reset(np.zeros(1))
    t = 0.0
    for k in range(300):
        dt = 0.01 if k % 2 else 0.008  # any interval
        f.step(np.array([3.0 * (t + dt / 2)]), dt)
        t += dt
    assert abs(f.dy[0] - 3.0) < 0.03 and abs(f.y[0] - 3.0 * (t - 2.0 / f.w)) < 0.01
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="filter_hz"):
            OnlineEstimator(config=EstimatorConfig(filter_hz=bad))


JITTER_SHIFT = PhysicsShift(damping_scale=(0.6, 0.9, 1.7, 1.4, 0.7, 1.1), gain=(1.08, 0.92, 0.85, 1.15, 0.9, 1.0),
                            payload_kg=0.45)


@pytest.mark.parametrize("filter_hz", [None, EstimatorConfig().filter_hz])
def test_estimator_uses_the_measured_intervals(filter_hz):
    """Both regressors (finite differences, and the default low-pass) estimate well from jittered
    measurements when told the intervals."""
    told = _jittered_free_motion(JITTER_SHIFT, True, seed=1, config=EstimatorConfig(filter_hz=filter_hz))
    assert told["latency_steps"] == 0
    np.testing.assert_allclose(told["gain"][:5], JITTER_SHIFT.gain[:5], atol=0.08)
    assert abs(told["payload_kg"] - JITTER_SHIFT.payload_kg) < 0.1


def test_finite_differences_need_the_measured_intervals():
    """Taking every interval as the nominal period ruins finite-difference accelerations, and the
    estimate (the low-pass's derivative state averages the jitter out: it barely needs them)."""
    untold = _jittered_free_motion(JITTER_SHIFT, False, seed=1, config=EstimatorConfig(filter_hz=None))
    assert np.abs(untold["gain"][:5] - JITTER_SHIFT.gain[:5]).max() > 0.2


def test_estimator_holds_when_told_not_to_learn():
    est = _free_motion(PhysicsShift(gain=(0.9,) * 6, payload_kg=0.3), 150)
    before = {lat: rls.theta.copy() for lat, rls in est.filters.items()}
    steps = est.steps
    rng = np.random.default_rng(0)
    for _ in range(20):  # a grasp: contact torques the regressor does not model
        assert est.update(rng.uniform(-1, 1, 6), rng.uniform(-1, 1, 6), rng.uniform(-50, 50, 6), learn=False)
    assert est.steps == steps + 20
    for lat, rls in est.filters.items():
        np.testing.assert_array_equal(rls.theta, before[lat])


def test_estimator_config_is_used():
    est = OnlineEstimator(config=EstimatorConfig(latencies=(0, 1)))
    assert sorted(est.filters) == [0, 1]


def test_correction_rescues_the_grasps_a_shifted_pybullet_world_breaks_and_harms_none():
    """The scripted controller on the realistic task's test set (perception and sensor noise) in
    the shifted PyBullet world: 3 world seeds x 4 episodes, with and without online correction
    (without = the do-nothing estimator). Measured: one uncorrected episode shakes (7930 J, the
    object lost); corrected, it succeeds at 35 J; the other 11 cost the same either way (31-68 J).

    Known defect (issue 16 round 15): the raw estimate after the 2 kg iron block in world 2 is
    chaotically sensitive to the grasp's timing. Ending the close one 10 ms control step earlier
    (round 15's close condition, `elapsed >= close_s - 1e-9` where it was `>= close_s`) takes
    its joint-4 gain from 0.37 to -0.37, out of the bounds. The episode succeeds either way
    (69-71 J) on the correction's clipped values. Exactly that case is an expected failure; any
    other out-of-bounds estimate fails the test; the rescue and no-harm checks above run first."""
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.presets import load_task
    from ds_robot.evaluate import episode_seeds, run_episode
    from ds_robot.sim2real.worlds import build_world

    results = {False: [], True: []}
    unbounded = []
    for world_seed in range(3):
        for corrected in (False, True):
            env = UR5GraspEnv(backend=build_world("pybullet", seed=world_seed), **load_task("realistic").env_kwargs("test"))
            controller = controller_for_env("scripted", env, correction=corrected)
            for seed in episode_seeds(world_seed, 4):
                results[corrected].append(run_episode(env, controller, seed))
                if corrected:  # through the grasp's contacts and the lift the estimate stays finite, bounded
                    # (contact loads are absorbed by gains and payload: see correction.py; the
                    # correction clips both to plausible ranges before it uses them)
                    e = controller.estimator.estimate()
                    assert all(np.all(np.isfinite(v)) for v in e.values())
                    if not (np.all((e["gain"] > 0.1) & (e["gain"] < 3.0)) and -3.0 < e["payload_kg"] < 3.0):
                        unbounded.append((world_seed, results[True][-1].object, e))
            env.close()
    plain, corrected = results[False], results[True]
    shaking = [k for k, r in enumerate(plain) if r.energy_j > 500]
    assert shaking, "no uncorrected episode shakes: this test no longer tests a rescue"
    for k in shaking:
        assert corrected[k].success and corrected[k].energy_j < 100
    assert sum(r.success for r in corrected) >= sum(r.success for r in plain)
    for a, b in zip(plain, corrected, strict=True):
        assert b.energy_j < 1.5 * a.energy_j + 10 or a.energy_j > 500  # correction harms no episode
    assert all((world, name) == (2, "iron_block") for world, name, _ in unbounded), unbounded
    if unbounded:
        pytest.xfail(f"known: the raw estimate leaves its bounds after the iron block in world 2: {unbounded}")


def test_cli_worlds_and_correction(tmp_path):
    from ds_robot.cli.main import main

    out = tmp_path / "e.json"
    assert main(["eval", "grasp", "--world", "shifted", "--correction", "on", "--episodes", "2", "--quiet",
                 "--json", str(out)]) == 0
    import json

    config = json.loads(out.read_text())["config"]
    assert config["world"] == "shifted" and config["correction"] == "on"
    assert main(["eval", "grasp", "--controller", "flat", "--correction", "on", "--episodes", "1"]) == 2
    bench = tmp_path / "s.json"
    assert main(["bench", "sim2real", "--quick", "--episodes", "2", "--workers", "1", "--json", str(bench)]) == 0
    rows = {r["name"]: r for r in json.loads(bench.read_text())["results"]}
    from ds_robot.bench.sim2real import DR_POLICY, MODES, WORLDS
    from ds_robot.paths import policies_dir

    modes = MODES if (policies_dir() / DR_POLICY).is_file() else ("none", "correction")
    # every controller on every world; domain randomisation is a hier policy, with its residual
    # skills (hier) and without them (hier_planner_only)
    assert set(rows) == ({f"{k}_{w}_{m}" for k in ("hier", "hier_planner_only") for w in WORLDS for m in modes}
                         | {f"scripted_{w}_{m}" for w in WORLDS for m in ("none", "correction")}
                         | {"hier_shifted_correction_alone"})  # the costs, nothing else running
    alone = rows["hier_shifted_correction_alone"]
    assert alone["correction_us"] >= alone["estimator_us"] > 0 and alone["estimator_us_p99"] >= alone["estimator_us"]
    for kind in ("hier", "scripted"):
        row = rows[f"{kind}_unmodelled_correction"]
        assert row["estimator_us"] > 0 and row["estimator_us_p99"] >= row["estimator_us"] * 0.5
        assert math.isfinite(row["pred_error_ratio_2s"]) and math.isfinite(row["pred_error_ratio_2s_true"])


def test_mujoco_and_pybullet_agree_on_free_motion_of_the_nominal_arm(open_loop):
    """The same open-loop torques (gravity at the start pose + a 1 Hz sinusoid) for 1 s in both
    engines, built from the same description. Stated tolerance: 0.05 rad on every joint at 0.5 s,
    0.12 rad over the whole second (open loop, so differences grow: contact-free rigid-body
    dynamics agree, friction and damping are modelled differently; see pybullet_world)."""
    from ds_robot.sim2real.pybullet_world import PyBulletBackend

    # 1 Hz at the 10 ms control period
    trajectories = {name: open_loop(backend, 100, [3, 5, 3, 1, 1, 0.5], 2 * np.pi * 0.01)
                    for name, backend in (("mujoco", None), ("pybullet", PyBulletBackend()))}
    diff = np.abs(trajectories["mujoco"] - trajectories["pybullet"])
    assert diff[49].max() < 0.05, diff[49]
    assert diff.max() < 0.12, diff.max(axis=0)


def test_controllers_grasp_in_pybullet():
    from ds_robot.control.scripted import ScriptedGraspController
    from ds_robot.evaluate import run_episode
    from ds_robot.sim2real.pybullet_world import PyBulletBackend

    env = UR5GraspEnv(backend=PyBulletBackend())
    result = run_episode(env, ScriptedGraspController.for_env(env), 0)
    assert result.success and 2.5 < result.time_to_lift_s < 4.0 and result.energy_j < 60
    env.close()


def test_the_latency_compensation_sees_the_arm_where_the_command_will_act():
    """A world whose only difference is 2 control steps of command latency (20 ms), the nominal
    model exact: the state the Smith predictor hands the controller at step k (the measured state
    rolled forward under the two commands still in flight) is the state the world reaches at step
    k + 2, where the measured state is off by the motion of 20 ms. With no latency the
    observation passes unchanged."""
    from ds_robot.deploy.controllers import controller_for_env

    env = UR5GraspEnv(backend=ShiftedMuJoCoBackend(shift=PhysicsShift(latency_steps=2)))
    controller = controller_for_env("scripted", env, correction=True)
    obs, _ = env.reset(seed=0)
    controller.reset(obs)
    estimate = dict(controller.estimator.estimate(), latency_steps=2)  # the prior: the nominal model
    model, lim = RobotModel(), env.backend.joint_torque_limit_nm
    q0 = obs[S["q"]].astype(float)
    seen, measured = [], []
    for k in range(120):
        q, qd = obs[S["q"]].astype(float), obs[S["qd"]].astype(float) * math.pi
        ahead = controller.ahead(obs, estimate)
        seen.append(ahead[S["q"]].astype(float))
        measured.append(q)
        model.update(q, qd)
        q_des = q0 + 0.3 * np.sin(np.full(6, 2 * np.pi * 0.8 * k * env.control_dt_s))
        tau = np.clip(model.mass_matrix() @ (60 * (q_des - q) - 10 * qd) + model.bias_torque(), -lim, lim)
        controller._sent.append(tau)  # what act() records of each command it sends
        obs, *_ = env.step(np.append(tau / lim, -1.0))
    seen, measured = np.array(seen), np.array(measured)
    predicted_error = np.abs(seen[10:-2] - measured[12:]).max()
    held_error = np.abs(measured[10:-2] - measured[12:]).max()
    assert predicted_error < 1e-4 and held_error > 100 * predicted_error, (predicted_error, held_error)
    assert controller.ahead(obs, dict(estimate, latency_steps=0)) is obs
    env.close()


def test_latency_compensation_calms_a_delayed_grasp():
    """The scripted controller under correction on the realistic task's test set, in a world with
    20 ms of command latency and no other difference: compensating the identified latency (the
    default) spends less energy on the same 8 episodes, loses no grasp and makes no episode
    costlier (measured 383 J -> 290 J in all; the two shaking episodes 74 -> 65 J, 116 -> 49 J).
    Fails for a compensation that changes nothing."""
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.presets import load_task
    from ds_robot.evaluate import episode_seeds, run_episode

    results = {}
    for compensate in (False, True):
        env = UR5GraspEnv(backend=ShiftedMuJoCoBackend(shift=PhysicsShift(latency_steps=2)),
                          **load_task("realistic").env_kwargs("test"))
        controller = controller_for_env("scripted", env, correction=True)
        assert controller.compensate_latency  # the default
        controller.compensate_latency = compensate
        results[compensate] = [run_episode(env, controller, seed) for seed in episode_seeds(0, 8)]
        env.close()
    plain, compensated = results[False], results[True]
    assert sum(r.energy_j for r in compensated) < 0.85 * sum(r.energy_j for r in plain)
    assert sum(r.success for r in compensated) >= sum(r.success for r in plain)
    for a, b in zip(plain, compensated, strict=True):
        assert b.energy_j < 1.05 * a.energy_j, (a.energy_j, b.energy_j)


def test_a_latency_is_compensated_only_where_the_data_are_clear_about_it():
    """Under the realistic task's velocity noise the estimator names a latency of 1 or 2 steps in
    most steps of a world without any (measured over 4 episodes: 0 in 18%, 1 in 55%, 2 in 27% of
    the steps after the warm-up), and compensating it cost nominal-world grasps (issue 15). The
    gate (``latency_evidence_ratio``) compensates in under 20% of those steps (measured 9%), and
    still compensates a real 20 ms latency in most steps (measured 84-90%). Fails for an ungated
    compensation and for one that never acts."""
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.presets import load_task
    from ds_robot.evaluate import episode_seeds, run_episode

    for latency, check in ((0, lambda c: np.mean(c != 0) < 0.2), (2, lambda c: np.mean(c == 2) > 0.7)):
        env = UR5GraspEnv(backend=ShiftedMuJoCoBackend(shift=PhysicsShift(latency_steps=latency)),
                          **load_task("realistic").env_kwargs("test"))
        controller = controller_for_env("scripted", env, correction=True)
        named, compensated = [], []

        def record(_env, controller=controller, named=named, compensated=compensated):
            if controller.estimator.steps >= controller.warmup_steps:
                estimate = controller.estimator.estimate()
                named.append(estimate["latency_steps"])
                compensated.append(controller.latency_to_compensate(estimate))

        for seed in episode_seeds(0, 4):
            run_episode(env, controller, seed, on_step=record)
        env.close()
        named, compensated = np.array(named), np.array(compensated)
        assert check(compensated), (latency, np.bincount(named, minlength=3), np.bincount(compensated, minlength=3))
    from ds_robot.errors import ConfigError

    with pytest.raises(ConfigError, match="latency_evidence_ratio"):
        controller_for_env("scripted", UR5GraspEnv(), correction=True, latency_evidence_ratio=0.5)


def test_a_blown_up_simulation_is_counted_and_warned_about_not_passed_off_as_physics():
    """MuJoCo resets a simulation whose accelerations blow up and carries on from the start: the
    backend counts it for the episode and warns; a reset starts the count again."""
    from ds_robot.physics.mujoco_backend import MuJoCoBackend

    backend = MuJoCoBackend()
    env = UR5GraspEnv(backend=backend)
    env.reset(seed=0)
    backend.step(np.zeros(6), -1.0, env.control_dt_s)
    assert backend.instabilities == 0
    backend.data.qfrc_applied[0] = 1e40
    with pytest.warns(RuntimeWarning, match="unstable"):
        backend.step(np.zeros(6), -1.0, env.control_dt_s)
    assert backend.instabilities >= 1
    backend.data.qfrc_applied[:] = 0.0
    env.reset(seed=1)
    assert backend.instabilities == 0
    env.close()


def test_the_object_in_the_hand_is_a_load_of_its_own_and_leaves_the_arm_alone():
    """The scripted controller under correction on the realistic test set in the shifted world
    (2 world seeds x 6 episodes): while the gripper holds the object its weight goes into the
    estimator's load, which ends near the object's true mass (measured median error 0.09 kg; the
    do-nothing load, 0, is off by the object's mass, median ~0.5 kg), and the arm's payload
    estimate is not dragged along: its end-of-episode error is 0.42 kg on average against 1.04 kg
    when the arm learns through the hold (``separate_load=False``), at the same success."""
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.presets import load_task
    from ds_robot.evaluate import episode_seeds, run_episode
    from ds_robot.sim2real.estimator import EstimatorConfig
    from ds_robot.sim2real.worlds import build_world

    load_errors, payload_errors, successes = [], {True: [], False: []}, {True: 0, False: 0}
    for world_seed in range(2):
        for separate in (True, False):
            env = UR5GraspEnv(backend=build_world("shifted", seed=world_seed), **load_task("realistic").env_kwargs("test"))
            controller = controller_for_env("scripted", env, correction=True)
            controller.config = EstimatorConfig(separate_load=separate)
            for seed in episode_seeds(world_seed, 6):
                result = run_episode(env, controller, seed)
                est, truth = controller.estimator, env.backend.shift
                successes[separate] += result.success
                payload_errors[separate].append(abs(est.estimate()["payload_kg"] - truth.payload_kg))
                if separate and result.success:
                    assert est.holding
                    model = env.backend.model
                    load_errors.append(abs(est.estimate()["load_kg"] - model.body_mass[model.body("object").id]))
                if not separate:
                    assert est.estimate()["load_kg"] == 0.0
            env.close()
    assert len(load_errors) >= 8 and np.median(load_errors) < 0.25, load_errors
    assert np.mean(payload_errors[True]) < 0.6 * np.mean(payload_errors[False]), payload_errors
    assert successes[True] >= successes[False] - 1, successes


def test_the_shipped_randomisation_peer_differs_from_the_shipped_policy_only_in_its_training_physics():
    """bench sim2real's randomisation rows compare domain randomisation with online correction: a
    fair peer is the shipped policy's recipe trained on randomised physics. Until round 17 it was
    a round-8 file (one seed, old gripper, no masks), 28-33 points weaker; before 2026-12-06 a
    nominal-task policy."""
    from ds_robot.bench.sim2real import DR_POLICY
    from ds_robot.hier.policy import HierPolicy
    from ds_robot.paths import policies_dir

    # the file ships in the repository: its absence would silently drop bench sim2real's rows
    assert (policies_dir() / DR_POLICY).is_file(), f"models/policies/{DR_POLICY} is missing"
    dr, shipped = (HierPolicy.load(policies_dir() / name).meta for name in (DR_POLICY, "grasp_hier.npz"))
    assert dr["config"]["randomize_physics"] and not shipped["config"].get("randomize_physics")
    recipe = ("task", "options", "planner_fields", "torque_features", "escalate_after_slip", "jaw_fit",
              "palm_clearance_m", "probe_in_hand", "probe_residual", "attempt_penalty", "energy_weight")
    assert {k: dr["config"].get(k) for k in recipe} == {k: shipped["config"].get(k) for k in recipe}
    assert len(dr["ensemble"]["members"]) == len(shipped["ensemble"]["members"])
