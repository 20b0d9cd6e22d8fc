"""The sim-to-real worlds of issue 15: physics outside the online estimator's model class (unmodelled MuJoCo) and a shifted second engine (PyBullet)."""

import math

import numpy as np
import pytest

from ds_robot.control.robot_model import RobotModel
from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.envs.layout import OBS_SLICES as S
from ds_robot.model.params import default_description
from ds_robot.physics.mujoco_backend import MuJoCoBackend
from ds_robot.sim2real.estimator import EstimatorConfig, GripperState, ModelPredictor, OnlineEstimator
from ds_robot.sim2real.unmodelled import UnmodelledMuJoCoBackend, UnmodelledPhysics


def _env(seed=0, **kw):
    return UR5GraspEnv(backend=UnmodelledMuJoCoBackend(seed=seed), **kw)


def test_without_its_extras_the_world_is_the_nominal_model():
    """All unmodelled terms off (the default physics: nominal friction, no lag, latency, sensor
    error or payload): the same trajectory as the nominal MuJoCo world, so every difference the
    world makes comes from the terms it adds."""
    runs = {}
    for name, backend in (("nominal", MuJoCoBackend()), ("unmodelled", UnmodelledMuJoCoBackend(physics=UnmodelledPhysics()))):
        env = UR5GraspEnv(backend=backend)
        obs, _ = env.reset(seed=4)
        rng = np.random.default_rng(0)
        qs = []
        for _ in range(50):
            obs, *_ = env.step(np.append(rng.uniform(-0.2, 0.2, 6), -1.0))
            qs.append(obs[S["q"]].copy())
        runs[name] = np.array(qs)
    np.testing.assert_allclose(runs["nominal"], runs["unmodelled"], atol=1e-6)


def test_commands_arrive_late_by_a_fraction_of_the_period_and_through_a_lag():
    latency, lag = 0.006, 0.004
    backend = UnmodelledMuJoCoBackend(physics=UnmodelledPhysics(latency_s=latency, torque_lag_s=(lag,) * 6))
    env = UR5GraspEnv(backend=backend)
    env.reset(seed=0)
    dt = backend.physics_dt_s
    hold = np.zeros(6)
    step = np.full(6, 10.0)
    applied = []
    backend.step(hold, -1.0, dt)
    for _ in range(12):
        applied.append(backend.step(step, -1.0, dt).tau_applied_nm[0])
    applied = np.array(applied)
    # sent at the start of call 0, in force 6 ms later (3 physics steps of 2 ms: 0.6 of the 10 ms control
    # period) from call 3 on, through the first-order lag
    first = int(np.argmax(applied > 1e-9))
    assert first == round(latency / dt) and np.all(applied[:first] == 0), applied
    expected = 10.0 * (1 - np.exp(-(np.arange(1, 10) * dt) / lag))
    np.testing.assert_allclose(applied[first: first + 9], expected, rtol=1e-6)


def test_friction_depends_on_speed_and_load_and_the_sensor_is_biased():
    physics = UnmodelledPhysics(stribeck_nm=(2.0,) * 6, stribeck_speed_rad_s=(0.1,) * 6, load_friction=(0.05,) * 6,
                                sensor_bias_nm=(1.0, -1.0, 0.5, 0.2, -0.2, 0.1), sensor_scale=(1.0,) * 6)
    backend = UnmodelledMuJoCoBackend(physics=physics)
    slow, fast = backend._friction(np.full(6, 0.05), np.zeros(6)), backend._friction(np.full(6, 1.0), np.zeros(6))
    loaded = backend._friction(np.full(6, 1.0), np.full(6, 40.0))
    assert np.all(slow < -1.0) and np.all(np.abs(fast) < 1e-3)  # breakaway friction fades with speed
    np.testing.assert_allclose(loaded, -0.05 * 40.0 * np.tanh(1.0 / 0.05), rtol=1e-9)  # and grows with the load
    # torque sensing: the same resting arm reads the bias above the nominal world's torques
    readings = {}
    for name, b in (("nominal", MuJoCoBackend()), ("biased", backend)):
        env = UR5GraspEnv(backend=b)
        obs, _ = env.reset(seed=0)
        readings[name] = env.state.tau_measured_nm
    np.testing.assert_allclose(readings["biased"] - readings["nominal"], physics.sensor_bias_nm, atol=1e-6)


def _hold_pose(backend, steps=150):
    """The arm held at its reset pose by the nominal model's gravity torque (fingers open)."""
    env = UR5GraspEnv(backend=backend)
    env.reset(seed=0)
    model = RobotModel()
    state = env.state
    for _ in range(steps):
        model.update(state.q_rad, state.qd_rad_s)
        state = backend.step(model.bias_torque(), -1.0, env.control_dt_s)
    return state


def test_an_elastic_joint_carries_the_load_through_its_spring():
    """Harmonic-drive elasticity on the shoulder/elbow joints: holding the arm still, each spring
    is wound up by the joint's gravity torque over its stiffness (the rotor leads the link), the
    motor's torque is reported where it acts (on the rotor) and the output-side torque is the
    spring's. The wrists stay rigid; a rigid joint has no wind-up."""
    k = (4.0e4, 2.0e4, 3.0e4, 0.0, 0.0, 0.0)
    backend = UnmodelledMuJoCoBackend(physics=UnmodelledPhysics(stiffness_nm_rad=k, transmission_damping_ratio=(0.1,) * 6))
    state = _hold_pose(backend)
    d = backend.data
    assert np.abs(state.qd_rad_s).max() < 1e-3  # settled
    wind_up = d.qpos[backend._motor_qpos] - d.qpos[:6]
    gravity = d.qfrc_bias[:6]
    np.testing.assert_allclose(wind_up[:3], gravity[:3] / np.array(k[:3]), rtol=0.02, atol=1e-7)
    assert np.abs(gravity[1]) > 15 and np.abs(wind_up[1]) > 5e-4  # the shoulder winds up ~0.9 mrad
    np.testing.assert_array_equal(wind_up[3:], 0.0)
    np.testing.assert_allclose(state.tau_applied_nm, state.tau_measured_nm, atol=0.05 * np.abs(gravity).max())


def test_a_soft_joint_departs_from_the_rigid_arm_and_a_stiff_one_converges_to_it():
    """On the same open-loop torques (gravity hold plus 20-30 N m at 3 Hz), the elastic arm's
    trajectory approaches the rigid arm's as the springs stiffen (so it is a spring on the same
    arm, not another arm), and a soft one departs by a visible amount. The rigid reference runs
    at the elastic world's own step and integrator (0.5 ms, Euler)."""
    import mujoco

    from ds_robot.sim2real import unmodelled

    def run(physics, rigid_at_elastic_step=False):
        backend = UnmodelledMuJoCoBackend(physics=physics)
        env = UR5GraspEnv(backend=backend)
        env.reset(seed=0)
        if rigid_at_elastic_step:
            backend.model.opt.timestep = backend.physics_dt_s / unmodelled.ELASTIC_SUBSTEPS
            backend.model.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER
            backend._substeps = unmodelled.ELASTIC_SUBSTEPS
        state, model, qs = env.state, RobotModel(), []
        for k in range(40):
            model.update(state.q_rad, np.zeros(6))
            tau = model.gravity_torque() + np.array([20.0, 30, 20, 1, 1, 0.5]) * np.sin(0.2 * k)
            state = backend.step(tau, -1.0, env.control_dt_s)
            qs.append(state.q_rad)
        return np.array(qs)

    rigid = run(UnmodelledPhysics(), rigid_at_elastic_step=True)
    errors = [np.abs(run(UnmodelledPhysics(stiffness_nm_rad=(k, k, k, 0.0, 0.0, 0.0),
                                           transmission_damping_ratio=(0.1,) * 6)) - rigid).max()
              for k in (5.0e3, 3.0e4, 2.0e5)]
    assert errors[0] > errors[1] > errors[2], errors  # measured 3.5, 1.9, 1.1 mrad
    assert errors[0] > 2.5e-3 and errors[2] < 0.4 * errors[0], errors


def test_each_episode_draws_its_hidden_physics_and_seeded_worlds_repeat():
    drawn = []
    for _ in range(2):
        env = _env(seed=7)
        env.reset(seed=0)
        first = env.backend.physics
        env.reset(seed=1)
        drawn.append((first, env.backend.physics))
    assert drawn[0] == drawn[1]  # the same world seed and episodes: the same physics
    a, b = drawn[0]
    assert a != b and a != UnmodelledPhysics()
    assert 0 <= a.latency_s <= 0.016 and 0 <= a.payload_kg <= 0.6 and math.hypot(*a.payload_com_m[:2]) <= 0.05


def _prediction_ratio(world_seed: int, steps: int = 300, world: str = "unmodelled", noise_std: float = 0.0,
                      config=None) -> float:
    """Computed-torque tracking of joint sinusoids in the unmodelled world with the online estimator
    fed as the controller feeds it; the one-step joint-velocity prediction error (RMS over the last
    1.5 s) of the nominal model divided by that of the model with the estimate written in.
    ``noise_std``: velocity noise (rad/s) on what the estimator sees only (the models are scored on
    the clean measurements: this measures the model the estimator makes of noisy data)."""
    from ds_robot.sim2real.worlds import build_world

    rng = np.random.default_rng(world_seed)
    env = UR5GraspEnv(backend=build_world(world, seed=world_seed), episode_s=60)
    lim = env.backend.joint_torque_limit_nm
    travel = default_description().gripper.finger_travel_m
    est = OnlineEstimator(config=config)
    est.set_torque_limit(lim)
    noise = np.random.default_rng(100 + world_seed)
    obs, _ = env.reset(seed=world_seed)
    model, predictor = RobotModel(), ModelPredictor()
    q0 = obs[S["q"]].astype(float)
    freq, amp, phase = rng.uniform(0.3, 1.0, 6), np.array([0.4, 0.3, 0.4, 0.6, 0.6, 0.8]), rng.uniform(0, 6, 6)
    errors = {"nominal": [], "estimate": []}
    for k in range(steps):
        t = k * env.control_dt_s
        q_des = q0 + amp * (np.sin(2 * np.pi * freq * t + phase) - np.sin(phase))
        qd_des = amp * 2 * np.pi * freq * np.cos(2 * np.pi * freq * t + phase)
        q, qd = obs[S["q"]].astype(float), obs[S["qd"]].astype(float) * math.pi
        model.update(q, qd)
        tau = np.clip(model.mass_matrix() @ (100 * (q_des - q) + 20 * (qd_des - qd)) + model.bias_torque(), -lim, lim)
        est.update(q, qd + noise.normal(0.0, noise_std, 6), tau)
        opening, speed = obs[S["gripper"]].astype(float) * (env.backend.max_gripper_opening_m, 0.1)
        gripper = GripperState(opening, speed, travel)
        predicted = {"nominal": predictor.predict(q, qd, tau, None, gripper),
                     "estimate": predictor.predict(q, qd, tau, est.estimate(), gripper)}
        obs, *_ = env.step(np.append(tau / lim, -1.0))
        if k >= steps // 2:
            for key, value in predicted.items():
                errors[key].append(np.mean((obs[S["qd"]] * math.pi - value) ** 2))
    env.close()
    return math.sqrt(np.mean(errors["nominal"]) / np.mean(errors["estimate"]))


@pytest.mark.parametrize("world", ["unmodelled", "pybullet"])
def test_the_estimator_helps_outside_its_class_but_is_not_exact_there(world):
    """Against the do-nothing estimator (the nominal model: ratio 1) on the same data, 3 world
    seeds, noise-free velocities and the finite-difference regressor. In the shifted world with the
    true parameters the model is exact to ~1e-6 (test_sim2real); in these worlds no parameter value
    of the estimator's class is (another engine, or physics the class lacks), so the ratio is
    finite: measured with the published-magnitude priors (estimator.PRIOR_STD) 3.1, 2.7, 3.5
    (unmodelled) and 2.0, 4.0, 2.1 (pybullet; 3.2, 4.0, 2.1 with the earlier, narrower damping and
    friction priors); issue 15's goal, >= 3x, is for bench sim2real."""
    ratios = [_prediction_ratio(seed, world=world, config=EstimatorConfig(filter_hz=None)) for seed in range(3)]
    assert min(ratios) > 1.8 and np.median(ratios) > 2.0, ratios
    assert max(ratios) < 20, ratios  # an in-class world reaches 28.8 on this motion (shifted, no latency)


@pytest.mark.parametrize("world", ["unmodelled", "pybullet"])
def test_with_noisy_velocities_the_filtered_estimator_still_helps(world):
    """The same motion with 0.01 rad/s of velocity noise on what the estimator sees (the realistic
    task's joint sensors), the models scored on the clean velocities. The default low-pass
    regressor keeps most of its noise-free quality. Measured with the published-magnitude priors
    (estimator.PRIOR_STD): unmodelled 2.3, 3.3, 2.0 (2.3, 2.7, 2.8 with the earlier,
    narrower damping and friction priors), pybullet 1.7, 2.7, 1.1 (earlier 2.1, 2.8, 1.6): the wider
    friction prior costs the third seed most of its gain. The do-nothing estimator is 1 on every seed."""
    ratios = [_prediction_ratio(seed, world=world, noise_std=0.01) for seed in range(3)]
    assert min(ratios) > 1.1 and np.median(ratios) > 1.6, ratios


def test_with_noisy_velocities_finite_differences_do_worse_than_nothing():
    """Why the estimator filters: finite-difference accelerations of 0.01 rad/s noise (1.4 rad/s^2
    at 10 ms) make a model worse than the nominal one (measured 0.64, 0.52, 0.45)."""
    ratios = [_prediction_ratio(seed, noise_std=0.01, config=EstimatorConfig(filter_hz=None)) for seed in range(3)]
    assert max(ratios) < 1.0, ratios


def test_pybullet_world_draws_a_hidden_shift_and_applies_it(open_loop):
    from ds_robot.sim2real.pybullet_world import PyBulletBackend, ShiftedPyBulletBackend
    from ds_robot.sim2real.worlds import PhysicsShift, build_world

    world = build_world("pybullet", seed=3)
    env = UR5GraspEnv(backend=world)
    env.reset(seed=0)
    first = world.shift
    env.reset(seed=1)
    assert first != world.shift and first != PhysicsShift()  # a new hidden draw per episode
    env.close()
    # on the same open-loop torques: the identity shift is the nominal engine, a fixed shift is not
    shift = PhysicsShift(gain=(0.8,) * 6, payload_kg=0.5, damping_scale=(2.0,) * 6, latency_steps=2)
    runs = {name: open_loop(backend, 30, [4.0, 6, 4, 1, 1, 0.5], 0.2)
            for name, backend in (("nominal", PyBulletBackend()), ("identity", ShiftedPyBulletBackend(shift=PhysicsShift())),
                                  ("shifted", ShiftedPyBulletBackend(shift=shift)))}
    np.testing.assert_allclose(runs["identity"], runs["nominal"], atol=1e-9)
    assert np.abs(runs["shifted"] - runs["nominal"]).max() > 0.02


def test_the_sim_node_arm_runs_the_unmodelled_world_and_reports_its_truth():
    from ds_robot.deploy.sim_core import SimArm
    from ds_robot.errors import ConfigError

    arm = SimArm(world="unmodelled", world_seed=2)
    arm.reset(seed=0)
    for _ in range(20):
        arm.step()
    truth = arm.shift
    assert truth is not None and set(truth) >= {"latency_s", "stribeck_nm", "sensor_bias_nm"}
    assert truth != UnmodelledPhysics().as_dict()
    with pytest.raises(ConfigError, match="nominal, shifted, unmodelled"):
        SimArm(world="mars")


def test_the_estimator_and_the_correction_never_read_a_world():
    """Issue 15: the estimator's priors may not come from the worlds' generators. Neither module
    imports a world module, nor names a world's range table."""
    import ast
    from pathlib import Path

    import ds_robot.sim2real as package

    root = Path(package.__file__).parent
    for name in ("estimator.py", "correction.py"):
        tree = ast.parse((root / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {m for m in imported if m and m.split(".")[-1] in ("worlds", "unmodelled", "pybullet_world")}, name
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert not names & {"RANGES", "PER_JOINT_RANGES", "SCALAR_RANGES", "FRICTION_ADD_NM"}, name


@pytest.mark.parametrize("world", ["shifted", "unmodelled", "pybullet"])
def test_in_the_closed_loop_the_corrected_model_predicts_better_than_the_nominal_one(world):
    """The scripted controller under correction grasps in each world (world seeds 0-2, episode
    seeds 0-2); over 1.5-2 s of each episode the one-step prediction error of the nominal model
    (the do-nothing estimator) divided by the corrected model's, as `bench sim2real` measures it.
    Measured: shifted 107-122x, unmodelled 1.7-13x, pybullet 15-21x. A do-nothing estimator is 1x."""
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.evaluate import run_episode
    from ds_robot.sim2real.worlds import build_world

    ratios = []
    for seed in range(3):
        env = UR5GraspEnv(backend=build_world(world, seed=seed))
        controller = controller_for_env("scripted", env, correction=True, track_prediction=True)
        run_episode(env, controller, seed, on_step=lambda _env, c=controller: c.estimator.flush_prediction())
        errors = controller.estimator.pred_error
        window = slice(150, 200)
        ratios.append(math.sqrt(np.mean(np.square(errors["nominal"][window]))
                                / np.mean(np.square(errors["corrected"][window]))))
        env.close()
    assert min(ratios) > 1.2 and np.median(ratios) > 3.0, ratios
    if world == "shifted":  # in its own class the estimate is close to exact
        assert min(ratios) > 20, ratios
