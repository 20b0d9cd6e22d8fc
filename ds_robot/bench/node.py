"""``ds-robot bench node``: the ROS 2 policy node's real-time behaviour beside the MuJoCo sim node,
with the offline int8-vs-fp32 measurements of ``ds_robot.bench.quantize``.

Per variant, ``seconds`` each: the sim node at 500 Hz in real time plus the
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

from ds_robot.bench.quantize import agreement, rollout_features, step_latency_us, success
from ds_robot.bench.report import format_table, write_json
from ds_robot.deploy.loop_stats import LATE_FACTOR
from ds_robot.errors import ConfigError
from ds_robot.paths import policies_dir
from ds_robot.stats import mean_ci95

GOALS = {"late_vs_empty": 1.5, "int8_step_p99_us": 50.0, "int8_vs_torch": 0.38, "size_ratio": 0.26,
         "success_drop": 0.01}


# -- bench node --------------------------------------------------------------------------------------

RAW_TOPIC = "/ds_robot/bench/raw_joint_states"  # the sim's joint states before the corrupting relay


def _ros_variant(name: str, params: list[str], seconds: float, domain: int, stats: Path,
                 corrupt_per_real: int | None = None, realtime_priority: int = 0) -> dict[str, Any]:
    """One variant: the sim node, the policy node (``params``) and, with ``corrupt_per_real``, the
    corrupting relay between them (``ds_robot.bench.corrupt_relay``)."""
    from std_msgs.msg import Bool, String
    from std_srvs.srv import Trigger

    from ds_robot.deploy.session import RosSession

    session = RosSession(domain, "ds_robot_bench")
    rt = ["-p", f"realtime_priority:={realtime_priority}"] if realtime_priority else []
    episodes: list[dict] = []
    relay_stats = stats.with_suffix(".relay.json")
    try:
        status = session.listen(String, "/ds_robot/sim/status", latched=True, keep=False)
        estop = session.node.create_publisher(Bool, "/ds_robot/estop", 10)
        relay = None
        if corrupt_per_real is None:
            session.start("sim_node", "-p", "seed:=0", *rt)
        else:
            session.start("sim_node", "-p", "seed:=0", "-p", f"joint_states_topic:={RAW_TOPIC}", *rt)
            relay = session.start("ds_robot.bench.corrupt_relay", "-p", f"input_topic:={RAW_TOPIC}",
                                  "-p", f"corrupt_per_real:={corrupt_per_real}", "-p", f"stats_file:={relay_stats}")
        policy = session.start("policy_node", "-p", f"stats_file:={stats}", *params, *rt)
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
        if relay is not None:
            session.stop(relay)
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
                    "state_to_command_min_ms": float(ages.min()) if ages.size else math.nan,
                    "state_to_command_max_ms": float(ages.max()) if ages.size else math.nan,
                    "stops": data["stops"], "stop_reasons": data.get("stop_reasons", {}),
                    "watchdog_stops": int(data.get("stop_reasons", {}).get("joint_states stale", 0))})
    if corrupt_per_real is not None:
        row["corrupt_per_real"] = corrupt_per_real
        row["relayed"] = json.loads(relay_stats.read_text()) if relay_stats.exists() else {}
        row["refused"] = data.get("rejected", {})
        row["input_fault"] = int(data.get("stop_reasons", {}).get("input fault", 0)) > 0
    return row


def late_ratio(pairs: list[tuple[dict, dict]]) -> dict[str, Any]:
    """The int8 node's late-cycle rate over the empty loop's, per repeat (each pair run back to
    back), with the mean and a 95% t-interval across repeats."""
    ratios = [b["late_rate"] / a["late_rate"] if a["late_rate"] > 0 else math.inf for a, b in pairs]
    finite = [r for r in ratios if math.isfinite(r)]
    mean, ci = mean_ci95(finite) if len(finite) >= 2 else (finite[0] if finite else math.nan, (math.nan, math.nan))
    return {"name": "late_ratio", "ratios": ratios, "mean": mean, "ci95": list(ci), "repeats": len(pairs)}


def run_node_benchmark(seconds: float = 60.0, quick: bool = False, json_path: str | None = None,
                       episodes: int = 200, repeats: int = 3, realtime_priority: int = 0) -> int:
    from ds_robot.deploy.torch_runtime import torch_policy
    from ds_robot.hier.policy import HierPolicy

    if seconds <= 0 or episodes < 0 or repeats < 1:
        raise ConfigError(f"need seconds > 0, episodes >= 0 and repeats >= 1, got {seconds}, {episodes}, {repeats}")
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
    # (row name, variant, seconds, corrupted copies per real joint state): the empty loop and the
    # int8 node back to back per repeat (the late-cycle ratio's CI), then the other runtimes, then
    # the corrupted stream (1 per real state: the grasp must go on; 9: the input-fault latch must fire)
    plan = [(f"{v}{f' r{r + 1}' if r else ''}", v, seconds, None) for r in range(repeats) for v in ("empty_loop", "int8")]
    plan += [("torch_fp32", "torch_fp32", seconds, None), ("numpy_fp32", "numpy_fp32", seconds, None),
             ("int8_corrupted", "int8", seconds, 1), ("int8_corrupted_x9", "int8", min(seconds, 15.0), 9)]
    results = []
    domain = 150 + os.getpid() % 50
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, variant, secs, corrupt) in enumerate(plan):
            print(f"  [{i + 1}/{len(plan)}] {name}: {secs:g} s at 500 Hz beside the sim node"
                  + (f", {corrupt} corrupted joint state(s) after each real one" if corrupt else ""))
            row = _ros_variant(variant if corrupt is None else name, variants[variant], secs, domain,
                               Path(tmp) / f"{i}.json", corrupt_per_real=corrupt, realtime_priority=realtime_priority)
            row["name"] = name
            if name == variant:
                row.update(offline.get(name, {}))
                if name in sizes:
                    row["size_bytes"] = sizes[name]
                if name in grasp:
                    row.update(grasp[name])
            results.append(row)
    by = {r["name"]: r for r in results}
    pairs = [(by["empty_loop" + (f" r{r + 1}" if r else "")], by["int8" + (f" r{r + 1}" if r else "")])
             for r in range(repeats)]
    results.append(late_ratio(pairs))
    results.append({"name": "agreement", **agree})
    print_node(results)
    for line in node_verdict(results):
        print(line)
    if json_path:
        write_json(json_path, "node", {"seconds": seconds, "repeats": repeats, "realtime_priority": realtime_priority, "rate_hz": 500.0, "late_threshold_ms": 2.5,
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
             _fmt(r, "state_to_command_p99_ms", ".2f"), _fmt(r, "state_to_command_max_ms", ".1f"),
             _fmt(r, "watchdog_stops", "d"), _fmt(r, "size_bytes", ",d"), _fmt(r, "success_rate", ".3f"),
             f"{r['ros_success_rate']:.2f} ({r['ros_episodes']})" if r.get("ros_episodes") else "-"]
            for r in results if r["name"] not in ("agreement", "late_ratio")]
    print(format_table(["variant", "late", "period P50 ms", "P99 ms", "max ms", "net step P99 us",
                        "control step P99 us", "state->cmd P99 ms", "max ms", "watchdog stops", "file bytes",
                        "grasp success", "ROS grasps"],
                       rows))


def node_verdict(results: list[dict]) -> list[str]:
    by = {r["name"]: r for r in results}
    torch_, int8, fp32, agree = (by.get(k) for k in ("torch_fp32", "int8", "numpy_fp32", "agreement"))
    lines = []

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    ratio_row = by.get("late_ratio")
    if ratio_row:
        mean, (lo, hi) = ratio_row["mean"], ratio_row["ci95"]
        each = ", ".join(f"{r:.2f}x" for r in ratio_row["ratios"])
        lines.append(f"late cycles, int8 node / empty loop, {ratio_row['repeats']} back-to-back repeats: {each}; "
                     f"mean {mean:.2f}x [95% CI {lo:.2f}, {hi:.2f}] (goal <= {GOALS['late_vs_empty']}x: "
                     f"{met(mean <= GOALS['late_vs_empty'])}"
                     f"{'' if not hi <= GOALS['late_vs_empty'] else ', the whole interval'})")
    nominal = [r for r in results if r["name"].split(" ")[0] == "int8" and "watchdog_stops" in r]
    if nominal:
        stops, cycles = sum(r["watchdog_stops"] for r in nominal), sum(r["cycles"] for r in nominal)
        lines.append(f"watchdog stops in nominal operation (int8 node, {len(nominal)} runs, {cycles:,} cycles): "
                     f"{stops} (goal 0: {met(stops == 0)})")
    for key in ("int8_corrupted", "int8_corrupted_x9"):
        r = by.get(key)
        if r:
            relayed = r.get("relayed", {})
            bad = sum(v for k, v in relayed.items() if k != "real")
            refused = sum(r.get("refused", {}).values())
            lines.append(f"{key}: {relayed.get('real', 0):,} real and {bad:,} corrupted joint states, "
                         f"{refused:,} refused by the node; state->command age {_fmt(r, 'state_to_command_min_ms', '.2f')}"
                         f"..{_fmt(r, 'state_to_command_max_ms', '.1f')} ms; stops {r.get('stops', 0):,}; "
                         f"ROS grasps {_fmt(r, 'ros_success_rate', '.2f')} ({r.get('ros_episodes', 0)}); "
                         f"input-fault latch {'fired' if r.get('input_fault') else 'did not fire'}")
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
