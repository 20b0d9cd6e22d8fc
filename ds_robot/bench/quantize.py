"""``ds-robot quantize``: write the int8 policy and compare it with fp32 (no ROS).

File sizes; action agreement on the features of fp32 rollouts (planner decisions, and the
residual torque in N m); network latency per control step (the active skill's MLP at batch 1)
for torch fp32 eager, NumPy fp32 and the int8 file; grasp success of fp32 and int8 over the
same seeded episodes. ``ds-robot bench node`` reuses these offline measurements beside its ROS
part.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ds_robot.bench.report import format_table, write_json
from ds_robot.errors import ConfigError
from ds_robot.stats import wilson_ci95


def _env(task: str):
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.envs.presets import load_task

    return UR5GraspEnv(**load_task(task).env_kwargs("train"))


def rollout_features(policy, episodes: int, seed: int = 0, task: str = "realistic") -> tuple[np.ndarray, np.ndarray]:
    """The 47-D features the fp32 controller sees over ``episodes`` episodes, and which of them
    came with a planning decision."""
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.evaluate import episode_seeds
    from ds_robot.hier.features import H

    env = _env(task)
    controller = controller_for_env("hier", env, policy=policy)
    features = []
    for s in episode_seeds(seed, episodes):
        obs, _ = env.reset(seed=s)
        controller.reset(obs)
        done = False
        while not done:
            action = controller.act(obs)
            features.append(controller.features.copy())
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    x = np.array(features)
    return x, x[:, H["decision"]][:, 0] > 0.5


def step_latency_us(policy, features: np.ndarray, calls: int = 20_000) -> dict[str, float]:
    """One control step's network work at batch 1: the active skill's MLP."""
    from ds_robot.hier.features import skill_of

    skills = skill_of(features)
    rows = features[np.resize(np.arange(len(features)), calls)]
    idx = skills[np.resize(np.arange(len(features)), calls)]
    nets = policy.skills
    for i in range(200):  # warm-up
        nets[idx[i]](rows[i])
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        nets[idx[i]](rows[i])
        times[i] = time.perf_counter() - start
    times *= 1e6
    return {"step_p50_us": float(np.percentile(times, 50)), "step_p99_us": float(np.percentile(times, 99)),
            "step_mean_us": float(times.mean())}


def agreement(fp32, other, features: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
    from ds_robot.hier.features import skill_of
    from ds_robot.model.params import default_description

    limit = np.array(default_description().variant(fp32.variant).joint_torque_limit_nm)
    skills = skill_of(features)
    err = np.zeros((len(features), 7))
    for k in range(len(fp32.skills)):
        rows = skills == k
        if rows.any():
            a = np.clip(fp32.skills[k](features[rows]), -1, 1)
            b = np.clip(other.skills[k](features[rows]), -1, 1)
            err[rows] = np.abs(a - b)
    torque_err = err[:, :6] * fp32.residual_scale * limit
    planner_same = fp32.choose(features[decisions]) == other.choose(features[decisions])
    # "accuracy": the share of control steps whose whole command (6 torques + gripper) is within
    # 1% of each action's range ([-1, 1] -> 0.02) of fp32's.
    within = np.all(err <= 0.02, axis=1)
    return {"decision_agreement": float(planner_same.mean()) if planner_same.size else math.nan,
            "decisions": int(planner_same.size), "action_accuracy": float(within.mean()),
            "action_err_max": float(err.max()), "action_err_mean": float(err.mean()),
            "torque_err_max_nm": float(torque_err.max()), "torque_err_mean_nm": float(torque_err.mean())}


def success(policy, episodes: int, seed: int = 0, task: str = "realistic") -> dict[str, Any]:
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.evaluate import run_episodes

    env = _env(task)
    results = run_episodes(env, controller_for_env("hier", env, policy=policy), episodes, seed, progress=False)
    wins = sum(r.success for r in results)
    rate, ci = wilson_ci95(wins, episodes)
    return {"success_rate": rate, "success_rate_ci95": ci, "episodes": episodes,
            "energy_j": float(np.mean([r.energy_j for r in results]))}


def quantize_report(policy_path: Path, out: Path, scheme: str, episodes: int, success_episodes: int,
                    json_path: str | None = None, task: str = "realistic") -> int:
    """Quantize, then compare int8 with fp32 on episodes of the ``task`` preset's training set."""
    from ds_robot.deploy.torch_runtime import torch_policy
    from ds_robot.hier.policy import HierPolicy

    if Path(policy_path).suffix != ".npz":
        raise ConfigError(f"{policy_path}: quantize takes a hierarchical policy (.npz); the flat PPO checkpoint "
                          "(.pt) is a torch baseline and is not deployed")
    fp32 = HierPolicy.load(policy_path)
    if fp32.quantization != "fp32":
        raise ConfigError(f"{policy_path} is already quantized ({fp32.quantization})")
    fp32.meta = {**fp32.meta, "quantized_from": Path(policy_path).name}
    fp32.save(out, scheme)
    int8 = HierPolicy.load(out)
    size_fp32, size_int8 = Path(policy_path).stat().st_size, Path(out).stat().st_size
    print(f"wrote {out} ({scheme}): {size_int8:,} bytes, {size_int8 / size_fp32:.3f}x the fp32 file "
          f"({size_fp32:,} bytes)")
    features, decisions = rollout_features(fp32, episodes, task=task)
    agree = agreement(fp32, int8, features, decisions)
    runtimes = {"torch_fp32": torch_policy(fp32), "numpy_fp32": fp32, "int8": int8}
    rows, results = [], []
    for name, pol in runtimes.items():
        lat = step_latency_us(pol, features)
        size = size_int8 if name == "int8" else size_fp32
        row = {"name": name, **lat, "size_bytes": size}
        if name != "torch_fp32" and success_episodes:
            row.update(success(pol, success_episodes, task=task))
        results.append(row)
        rows.append([name, f"{lat['step_p50_us']:.1f}", f"{lat['step_p99_us']:.1f}", f"{size:,}",
                     f"{row['success_rate']:.3f}" if "success_rate" in row else "(= numpy_fp32)"])
    print(format_table(["runtime", "step P50 us", "step P99 us", "file bytes", "grasp success"], rows))
    print(f"int8 vs fp32 on {len(features):,} control steps of {episodes} fp32 episodes: planner decisions agree "
          f"{agree['decision_agreement']:.1%} ({agree['decisions']}), commands within 1% of range "
          f"{agree['action_accuracy']:.1%}, residual torque error max {agree['torque_err_max_nm']:.3f} N m "
          f"(mean {agree['torque_err_mean_nm']:.4f})")
    if json_path:
        write_json(json_path, "quantize", {"policy": str(policy_path), "scheme": scheme, "episodes": episodes,
                                           "success_episodes": success_episodes, "task": task},
                   [*results, {"name": "agreement", **agree}])
        print(f"wrote {json_path}")
    return 0
