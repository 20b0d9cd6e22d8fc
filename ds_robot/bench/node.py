"""``ds-robot quantize`` and ``ds-robot bench node``: the int8 policy against fp32, and the ROS 2
policy node's real-time behaviour beside the MuJoCo sim node.

quantize report (no ROS): file sizes; action agreement on the features of fp32 rollouts
(planner decisions, and the residual torque in N m); network latency per control step (the
active skill's MLP at batch 1) for torch fp32 eager, NumPy fp32 and the int8 file; grasp
success of fp32 and int8 over the same seeded episodes.

bench node (ROS, per variant, ``seconds`` each): the sim node at 500 Hz in real time plus the
policy node at 500 Hz (``empty_loop``: the same node with ``controller: none``, only the
timer). The bench cycles grasp episodes over ROS (e-stop, sim reset, policy reset) and at the
end reads the node's stats file: late cycles (period > 2.5 ms = 1.25 periods), period
percentiles, the full control step in the node, and the age of the joint state each command
was computed from (stamp -> command).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ds_robot.bench.report import format_table, write_json
from ds_robot.errors import ConfigError
from ds_robot.paths import policies_dir
from ds_robot.stats import wilson_ci95

LATE_FACTOR = 1.25  # a period longer than 1.25x nominal is late (2.5 ms at 500 Hz)
GOALS = {"late_vs_empty": 1.5, "int8_step_p99_us": 50.0, "int8_vs_torch": 0.38, "size_ratio": 0.26,
         "success_drop": 0.01}


# -- quantize report ---------------------------------------------------------------------------------

def rollout_features(policy, episodes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 47-D features the fp32 controller sees over ``episodes`` episodes, and which of them
    came with a planning decision."""
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.evaluate import episode_seeds
    from ds_robot.hier.features import H

    env = UR5GraspEnv()
    controller = controller_for_env("hier", env, policy=policy)
    features = []
    for s in episode_seeds(seed, episodes):
        obs, _ = env.reset(seed=s)
        controller.reset(obs)
        done = False
        while not done:
            action = controller.act(obs)
            features.append(controller._features.copy())
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
    planner_same = (fp32.planner(features[decisions]).argmax(1) == other.planner(features[decisions]).argmax(1))
    # "accuracy": the share of control steps whose whole command (6 torques + gripper) is within
    # 1% of each action's range ([-1, 1] -> 0.02) of fp32's.
    within = np.all(err <= 0.02, axis=1)
    return {"decision_agreement": float(planner_same.mean()) if planner_same.size else math.nan,
            "decisions": int(planner_same.size), "action_accuracy": float(within.mean()),
            "action_err_max": float(err.max()), "action_err_mean": float(err.mean()),
            "torque_err_max_nm": float(torque_err.max()), "torque_err_mean_nm": float(torque_err.mean())}


def success(policy, episodes: int, seed: int = 0) -> dict[str, Any]:
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.evaluate import run_episodes

    env = UR5GraspEnv()
    results = run_episodes(env, controller_for_env("hier", env, policy=policy), episodes, seed, progress=False)
    wins = sum(r.success for r in results)
    rate, ci = wilson_ci95(wins, episodes)
    return {"success_rate": rate, "success_rate_ci95": ci, "episodes": episodes,
            "energy_j": float(np.mean([r.energy_j for r in results]))}


def quantize_report(policy_path: Path, out: Path, scheme: str, episodes: int, success_episodes: int,
                    json_path: str | None = None) -> int:
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
    features, decisions = rollout_features(fp32, episodes)
    agree = agreement(fp32, int8, features, decisions)
    runtimes = {"torch_fp32": torch_policy(fp32), "numpy_fp32": fp32, "int8": int8}
    rows, results = [], []
    for name, pol in runtimes.items():
        lat = step_latency_us(pol, features)
        size = size_int8 if name == "int8" else size_fp32
        row = {"name": name, **lat, "size_bytes": size}
        if name != "torch_fp32" and success_episodes:
            row.update(success(pol, success_episodes))
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
                                           "success_episodes": success_episodes},
                   [*results, {"name": "agreement", **agree}])
        print(f"wrote {json_path}")
    return 0


# -- bench node --------------------------------------------------------------------------------------

def _ros_variant(name: str, params: list[str], seconds: float, domain: int, stats: Path) -> dict[str, Any]:
    from std_msgs.msg import Bool, String
    from std_srvs.srv import Trigger

    from ds_robot.deploy.session import RosSession

    session = RosSession(domain, "ds_robot_bench")
    episodes: list[dict] = []
    try:
        status = session.listen(String, "/ds_robot/sim/status", latched=True, keep=False)
        estop = session.node.create_publisher(Bool, "/ds_robot/estop", 10)
        session.start("sim_node", "-p", "seed:=0")
        policy = session.start("policy_node", "-p", f"stats_file:={stats}", *params)
        if not session.spin(60, until=lambda: bool(status)):
            raise RuntimeError(f"{name}: the sim node did not come up")
        session.spin(2.0)  # the policy node loads and starts its loop
        end = time.monotonic() + seconds
        started = time.monotonic()
        while time.monotonic() < end:
            current = json.loads(status[-1][1].data)
            if current["done"] or time.monotonic() - started > 10.0:
                if name != "empty_loop":
                    episodes.append(current)
                estop.publish(Bool(data=True))
                session.spin(0.05)
                session.call(Trigger, "/ds_robot_sim/reset")
                session.spin(5.0, until=lambda old=current["seed"]: json.loads(status[-1][1].data)["seed"] != old)
                session.call(Trigger, "/ds_robot_policy/reset")
                started = time.monotonic()
            session.spin(0.05)
        logs = session.stop(policy)
        if not stats.exists():
            raise RuntimeError(f"{name}: the policy node wrote no stats file; its log:\n{logs[-2000:]}")
    finally:
        session.close()
    data = json.loads(stats.read_text())
    periods = np.array(data["periods_s"]) * 1e3
    period_s = 1.0 / 500.0
    late = periods > LATE_FACTOR * period_s * 1e3
    row: dict[str, Any] = {"name": name, "cycles": int(periods.size), "late_rate": float(late.mean()),
                           "period_p50_ms": float(np.percentile(periods, 50)),
                           "period_p99_ms": float(np.percentile(periods, 99)), "period_max_ms": float(periods.max())}
    if data["policy_step_s"]:
        steps = np.array(data["policy_step_s"]) * 1e6
        ages = np.array(data["state_age_s"]) * 1e3
        wins = sum(bool(e["success"]) for e in episodes)
        row.update({"control_step_p50_us": float(np.percentile(steps, 50)),
                    "control_step_p99_us": float(np.percentile(steps, 99)),
                    "state_to_command_p50_ms": float(np.percentile(ages, 50)),
                    "state_to_command_p99_ms": float(np.percentile(ages, 99)),
                    "ros_episodes": len(episodes), "ros_success_rate": wins / len(episodes) if episodes else math.nan,
                    "stops": data["stops"]})
    return row


def run_node_benchmark(seconds: float = 60.0, quick: bool = False, json_path: str | None = None,
                       episodes: int = 200) -> int:
    from ds_robot.deploy.torch_runtime import torch_policy
    from ds_robot.hier.policy import HierPolicy

    if seconds <= 0 or episodes < 0:
        raise ConfigError(f"need seconds > 0 and episodes >= 0, got {seconds}, {episodes}")
    fp32_path, int8_path = policies_dir() / "grasp_hier.npz", policies_dir() / "grasp_hier_int8.npz"
    fp32, int8 = HierPolicy.load(fp32_path), HierPolicy.load(int8_path)
    print(f"bench node: offline part (features of {3 if quick else 10} episodes, latency, "
          f"{episodes} grasp episodes per runtime)")
    features, decisions = rollout_features(fp32, 3 if quick else 10)
    agree = agreement(fp32, int8, features, decisions)
    offline = {"torch_fp32": step_latency_us(torch_policy(fp32), features),
               "numpy_fp32": step_latency_us(fp32, features), "int8": step_latency_us(int8, features)}
    grasp = {"numpy_fp32": success(fp32, episodes), "int8": success(int8, episodes)} if episodes else {}
    sizes = {"torch_fp32": fp32_path.stat().st_size, "numpy_fp32": fp32_path.stat().st_size,
             "int8": int8_path.stat().st_size}
    variants = {
        "empty_loop": ["-p", "controller:=none"],
        "torch_fp32": ["-p", f"policy:={fp32_path}", "-p", "runtime:=torch"],
        "numpy_fp32": ["-p", f"policy:={fp32_path}", "-p", "runtime:=numpy"],
        "int8": ["-p", f"policy:={int8_path}", "-p", "runtime:=numpy"],
    }
    results = []
    domain = 150 + os.getpid() % 50
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, params) in enumerate(variants.items()):
            print(f"  [{i + 1}/{len(variants)}] {name}: {seconds:g} s at 500 Hz beside the sim node")
            row = _ros_variant(name, params, seconds, domain, Path(tmp) / f"{name}.json")
            row.update(offline.get(name, {}))
            if name in sizes:
                row["size_bytes"] = sizes[name]
            if name in grasp:
                row.update(grasp[name])
            results.append(row)
    results.append({"name": "agreement", **agree})
    print_node(results)
    for line in node_verdict(results):
        print(line)
    if json_path:
        write_json(json_path, "node", {"seconds": seconds, "rate_hz": 500.0, "late_threshold_ms": 2.5,
                                       "episodes": episodes, "policy_fp32": str(fp32_path),
                                       "policy_int8": str(int8_path)}, results)
        print(f"wrote {json_path}")
    return 0


def _fmt(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_node(results: list[dict]) -> None:
    rows = [[r["name"], _fmt(r, "late_rate", ".2%"), _fmt(r, "period_p50_ms", ".2f"), _fmt(r, "period_p99_ms", ".2f"),
             _fmt(r, "period_max_ms", ".1f"), _fmt(r, "step_p99_us", ".1f"), _fmt(r, "control_step_p99_us", ".0f"),
             _fmt(r, "state_to_command_p99_ms", ".2f"), _fmt(r, "size_bytes", ",d"), _fmt(r, "success_rate", ".3f"),
             f"{r['ros_success_rate']:.2f} ({r['ros_episodes']})" if r.get("ros_episodes") else "-"]
            for r in results if r["name"] != "agreement"]
    print(format_table(["variant", "late", "period P50 ms", "P99 ms", "max ms", "net step P99 us",
                        "control step P99 us", "state->cmd P99 ms", "file bytes", "grasp success", "ROS grasps"],
                       rows))


def node_verdict(results: list[dict]) -> list[str]:
    by = {r["name"]: r for r in results}
    empty, torch_, int8, fp32, agree = (by.get(k) for k in ("empty_loop", "torch_fp32", "int8", "numpy_fp32",
                                                            "agreement"))
    lines = []

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    if empty and int8:
        ratio = int8["late_rate"] / empty["late_rate"] if empty["late_rate"] > 0 else math.inf
        lines.append(f"late cycles: int8 node {int8['late_rate']:.2%} vs empty loop {empty['late_rate']:.2%} "
                     f"= {ratio:.2f}x (goal <= {GOALS['late_vs_empty']}x: {met(ratio <= GOALS['late_vs_empty'])})")
    if int8 and torch_:
        p99, ratio = int8["step_p99_us"], int8["step_p99_us"] / torch_["step_p99_us"]
        lines.append(f"policy step P99: int8 {p99:.1f} us (goal <= {GOALS['int8_step_p99_us']:g}: "
                     f"{met(p99 <= GOALS['int8_step_p99_us'])}), {ratio:.2f}x torch fp32 {torch_['step_p99_us']:.1f} us "
                     f"(goal <= {GOALS['int8_vs_torch']}x: {met(ratio <= GOALS['int8_vs_torch'])})")
    if int8 and fp32:
        size = int8["size_bytes"] / fp32["size_bytes"]
        lines.append(f"file size: {int8['size_bytes']:,} vs {fp32['size_bytes']:,} bytes = {size:.3f}x "
                     f"(goal <= {GOALS['size_ratio']}x: {met(size <= GOALS['size_ratio'])})")
        if "success_rate" in int8 and "success_rate" in fp32:
            drop = fp32["success_rate"] - int8["success_rate"]
            lines.append(f"grasp success: int8 {int8['success_rate']:.3f} vs fp32 {fp32['success_rate']:.3f} "
                         f"({int8['episodes']} episodes each; drop {drop * 100:+.1f} points, goal <= 1: "
                         f"{met(drop <= GOALS['success_drop'])})")
        if agree and torch_:
            lat = 1 - int8["step_p99_us"] / torch_["step_p99_us"]
            lines.append(f"seed claim '98% accuracy, -75% storage, -62% latency': commands within 1% of fp32 on "
                         f"{agree['action_accuracy']:.1%} of steps (planner decisions {agree['decision_agreement']:.1%}), "
                         f"storage {size - 1:+.0%}, latency vs torch fp32 {-lat:+.0%} — the latency gain comes from "
                         f"NumPy instead of torch (NumPy fp32: {fp32['step_p99_us']:.1f} us), not from int8 "
                         f"arithmetic (the runtime dequantizes at load)")
    return lines
