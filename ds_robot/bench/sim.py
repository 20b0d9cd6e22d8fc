"""``ds-robot bench sim``: raw MuJoCo physics speed of the grasp scene against ``UR5Grasp``.

Measured on one core (the process is pinned to one CPU where the OS allows it):

- ``mujoco_bare``: ``mj_step`` in a loop on the composed scene (arm + gripper + table + a cube),
  arm held by constant gravity-compensation torques;
- ``ur5grasp_env``: ``UR5GraspEnv.step`` with the same constant action (physics + observation
  + task bookkeeping);
- ``ur5grasp_env_scripted``: the same plus the scripted controller in the loop;
- ``ds_robot_w<W>_e<M>``: UR5Grasp env steps/s through the rollout engine (W worker processes
  with M envs each, all cores, not pinned).

``overhead_ratio`` = wall time per simulated second of the variant / that of ``mujoco_bare``
(goal for the env: <= 2).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import mujoco
import numpy as np

from ds_robot.bench.report import format_table, write_json
from ds_robot.stats import mean_ci95


@contextmanager
def one_core():
    """Pin this process to one CPU for the duration (where the OS allows it), then restore."""
    if not hasattr(os, "sched_setaffinity"):
        yield "not pinned"
        return
    allowed = os.sched_getaffinity(0)
    cpu = sorted(allowed)[0]
    os.sched_setaffinity(0, {cpu})
    try:
        yield f"cpu {cpu}"
    finally:
        os.sched_setaffinity(0, allowed)


def _bare_steps_per_s(model: mujoco.MjModel, qpos: np.ndarray, ctrl: np.ndarray, steps: int) -> float:
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    data.ctrl[:] = ctrl
    mujoco.mj_forward(model, data)
    start = time.perf_counter()
    for _ in range(steps):
        mujoco.mj_step(model, data)
    return steps / (time.perf_counter() - start)


def _env_steps_per_s(env, action: np.ndarray, steps: int, controller=None) -> float:
    obs, _ = env.reset(seed=0, options={"object": "cube_small"})
    if controller is not None:
        controller.reset(obs)
    done_steps = 0
    start = time.perf_counter()
    while done_steps < steps:
        obs, _, terminated, truncated, _ = env.step(controller.act(obs) if controller else action)
        done_steps += 1
        if terminated or truncated:
            obs, _ = env.reset(seed=done_steps, options={"object": "cube_small"})
            if controller is not None:
                controller.reset(obs)
    return steps / (time.perf_counter() - start)


def run_sim_benchmark(quick: bool = False, json_path=None, repeats: int = 5, robot: str = "ur5e") -> int:
    with one_core() as pinned:
        results, config = _run(quick, repeats, robot, pinned)
    results += _rollout_rows(quick, repeats, robot)  # after unpinning: workers need every core
    if json_path:
        write_json(json_path, "sim", config, results)
        print(f"wrote {json_path}")
    return 0


def _rollout_rows(quick: bool, repeats: int, robot: str) -> list[dict]:
    """UR5Grasp env steps/s through the rollout engine, for several worker layouts."""
    from ds_robot.rollout import EnvFactory, RolloutEngine

    layouts = [(1, 4), (2, 4)] if quick else [(1, 4), (1, 8), (2, 4), (2, 8)]
    steps = 20 if quick else 300
    rows, table = [], []
    for workers, per_worker in layouts:
        engine = RolloutEngine(EnvFactory("ds_robot/UR5Grasp-v0", {"robot": robot}), num_workers=workers,
                               envs_per_worker=per_worker)
        engine.reset(seed=0)
        action = np.zeros((engine.num_envs, 7), np.float32)
        action[:, 6] = -1.0
        for _ in range(5):  # warm-up
            engine.step(action)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                engine.step(action)
            rates.append(steps * engine.num_envs / (time.perf_counter() - start))
        engine.close()
        rate, ci = mean_ci95(rates)
        name = f"ds_robot_w{workers}_e{per_worker}"
        rows.append({"name": name, "workers": workers, "num_envs": workers * per_worker, "env_steps_per_s": rate,
                     "env_steps_per_s_ci95": list(ci)})
        table.append([name, workers, workers * per_worker, f"{rate:,.0f} ± {(ci[1] - ci[0]) / 2:,.0f}"])
    print(f"\nUR5Grasp through the rollout engine (zero torques, all cores, {repeats} x {steps} steps)")
    print(format_table(["layout", "workers", "envs", "env steps/s (95% CI)"], table))
    return rows


def _run(quick: bool, repeats: int, robot: str, pinned: str) -> tuple[list[dict], dict]:
    from ds_robot.control.robot_model import RobotModel
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.grasp_env import UR5GraspEnv

    env = UR5GraspEnv(robot=robot)
    obs, _ = env.reset(seed=0, options={"object": "cube_small"})
    backend = env.backend
    model = backend.model
    physics_dt = model.opt.timestep
    substeps = round(env.control_dt_s / physics_dt)
    # Constant gravity-compensation torques at home: the arm stays put, nothing else acts.
    robot_model = RobotModel(robot)
    robot_model.update(env.home_qpos_rad, np.zeros(6), env.backend.max_gripper_opening_m)
    gravity = robot_model.bias_torque()
    action = np.concatenate([gravity / backend.joint_torque_limit_nm, [-1.0]]).astype(np.float32)
    ctrl = np.zeros(model.nu)
    ctrl[:6] = gravity
    ctrl[6] = backend.finger_travel_m
    qpos = backend.data.qpos.copy()

    if quick:
        repeats = min(repeats, 2)
    bare_steps = 5_000 if quick else 100_000
    env_steps = 500 if quick else 10_000
    controller = controller_for_env("scripted", env)
    samples = {"mujoco_bare": [], "ur5grasp_env": [], "ur5grasp_env_scripted": []}
    for _ in range(repeats):
        samples["mujoco_bare"].append(_bare_steps_per_s(model, qpos, ctrl, bare_steps))
        samples["ur5grasp_env"].append(_env_steps_per_s(env, action, env_steps) * substeps)
        samples["ur5grasp_env_scripted"].append(_env_steps_per_s(env, action, env_steps // 2, controller) * substeps)

    bare_mean, _ = mean_ci95(samples["mujoco_bare"])
    results, rows = [], []
    for name, physics_rates in samples.items():
        rate, rate_ci = mean_ci95(physics_rates)
        ratios = [bare_mean / r for r in physics_rates]
        ratio, ratio_ci = mean_ci95(ratios)
        row = {
            "name": name,
            "physics_steps_per_s": rate,
            "physics_steps_per_s_ci95": list(rate_ci),
            "sim_seconds_per_s": rate * physics_dt,
            "overhead_ratio": ratio,
            "overhead_ratio_ci95": list(ratio_ci),
        }
        if name != "mujoco_bare":
            row["env_steps_per_s"] = rate / substeps
            row["env_steps_per_s_ci95"] = [c / substeps for c in rate_ci]
        results.append(row)
        rows.append([name, f"{rate:,.0f} ± {(rate_ci[1] - rate_ci[0]) / 2:,.0f}",
                     row.get("env_steps_per_s", float("nan")), f"{rate * physics_dt:.1f}", f"{ratio:.2f}"])
    print(f"\nbench sim: robot={robot} physics dt={physics_dt * 1e3:g} ms, control dt={env.control_dt_s * 1e3:g} ms "
          f"({substeps} substeps), {repeats} repeats, one core ({pinned})")
    print(format_table(["variant", "physics steps/s (95% CI)", "env steps/s", "sim s per s", "overhead x"], rows))
    config = {"robot": robot, "physics_dt_s": physics_dt, "control_dt_s": env.control_dt_s, "repeats": repeats,
              "bare_steps": bare_steps, "env_steps": env_steps, "quick": quick, "pinned": pinned}
    env.close()
    return results, config
