"""``ds-robot bench grasp``: the hierarchical controller against the scripted and flat baselines.

In one run, on the default object set and the harder one (``sim/objects/hard.yaml``), for
``seeds`` base seeds x ``episodes`` episodes each (defaults 3 x 200; episode seeds derive from
the base seed, identical for every variant):

- ``scripted``: the model-based computed-torque controller (``ScriptedGraspController``);
- ``flat``: one PPO policy from observation to torques, no hierarchy, no torque features
  (``models/policies/grasp_flat.pt``: the seed's "before");
- ``hier_no_torque``: the hierarchical controller trained without torque features
  (``models/policies/grasp_hier_no_torque.npz``);
- ``hier``: the shipped hierarchical controller (``models/policies/grasp_hier.npz``);
- ``hier_planner_only``: ``hier``'s planner with its residual skill policies switched off (the
  bare model-based skills), to show what the learned residual contributes.

Per variant and set: success rate (Wilson 95% CI), time to lift (successful episodes), energy,
``planning_latency_ms`` (one high-level decision: choosing and planning an attempt, timed
around the machine's ``_plan_attempt``), ``control_step_us`` (one full controller call, all
policies included), the residual share of the torque and the options chosen. Episodes run in
``workers`` processes, one (variant, set, seed) job each, one thread per process, so the
latencies are one-core numbers.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ds_robot.bench.report import ci_text, format_table, write_json
from ds_robot.errors import ConfigError
from ds_robot.stats import mean_ci95, wilson_ci95

VARIANTS = ("scripted", "flat", "hier_no_torque", "hier", "hier_planner_only")
POLICY_FILES = {"flat": "grasp_flat.pt", "hier_no_torque": "grasp_hier_no_torque.npz", "hier": "grasp_hier.npz",
                "hier_planner_only": "grasp_hier.npz"}
SETS = ("default", "hard")
SEED_CLAIMS = {"success": (0.72, 0.89), "planning_s": (3.2, 0.8), "energy_cut": 0.31}
GOALS = {"hier_success": 0.95, "energy_ratio": 0.69, "planning_ms": 1.0, "control_step_us": 500.0}


def _object_set_path(name: str) -> Path:
    from ds_robot.paths import sim_dir

    return sim_dir() / "objects" / f"{name}.yaml"


def _controller(variant: str, env, policies: dict[str, Path]):
    from ds_robot.deploy.controllers import controller_for_env

    if variant in ("scripted", "flat"):
        return controller_for_env(variant, env, policy=policies.get(variant))
    return controller_for_env("hier", env, policy=policies[variant], residual=variant != "hier_planner_only")


def run_job(variant: str, object_set: str, seed: int, episodes: int, policies: dict[str, Path]) -> dict[str, Any]:
    """Run one (variant, set, seed) job in this process; returns per-episode records."""
    import torch

    torch.set_num_threads(1)
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.evaluate import episode_seeds, run_episode
    from ds_robot.hier.controller import HierarchicalController

    env = UR5GraspEnv(objects=_object_set_path(object_set))
    controller = _controller(variant, env, policies)
    hier = isinstance(controller, HierarchicalController)
    episodes_out = []
    for episode_seed in episode_seeds(seed, episodes):
        result = run_episode(env, controller, episode_seed)
        episodes_out.append({"object": result.object, "success": result.success,
                             "time_to_lift_s": result.time_to_lift_s, "energy_j": result.energy_j,
                             "control_step_us": result.control_step_us,
                             "residual_share": controller.residual_share if hier else None})
    env.close()
    return {"variant": variant, "set": object_set, "seed": seed, "episodes": episodes_out,
            "planning_s": list(controller.planning_s), "options": list(controller.chosen) if hier else []}


def summarise_jobs(variant: str, object_set: str, jobs: list[dict]) -> dict[str, Any]:
    episodes = [e for j in jobs for e in j["episodes"]]
    successes = sum(e["success"] for e in episodes)
    rate, rate_ci = wilson_ci95(successes, len(episodes))
    lift, lift_ci = mean_ci95([e["time_to_lift_s"] for e in episodes if e["success"]])
    energy, energy_ci = mean_ci95([e["energy_j"] for e in episodes])
    step, step_ci = mean_ci95([e["control_step_us"] for e in episodes])
    plans = np.array([p for j in jobs for p in j["planning_s"]]) * 1e3
    per_seed = [sum(e["success"] for e in j["episodes"]) / len(j["episodes"]) for j in jobs]
    row: dict[str, Any] = {
        "name": variant, "object_set": object_set, "episodes": len(episodes), "seeds": [j["seed"] for j in jobs],
        "success_rate": rate, "success_rate_ci95": list(rate_ci), "success_rate_per_seed": per_seed,
        "time_to_lift_s": lift, "time_to_lift_s_ci95": list(lift_ci),
        "energy_j": energy, "energy_j_ci95": list(energy_ci),
        "control_step_us": step, "control_step_us_ci95": list(step_ci),
        "planning_latency_ms": float(plans.mean()) if len(plans) else math.nan,
        "planning_latency_p99_ms": float(np.percentile(plans, 99)) if len(plans) else math.nan,
        "decisions": int(len(plans)),
    }
    shares = [e["residual_share"] for e in episodes if e["residual_share"] is not None]
    if shares:
        row["residual_share"] = float(np.mean(shares))
    options = Counter(o for j in jobs for o in j["options"])
    if options:
        row["options_chosen"] = {str(k): v for k, v in sorted(options.items())}
    objects = sorted({e["object"] for e in episodes})
    row["per_object_success"] = {o: float(np.mean([e["success"] for e in episodes if e["object"] == o]))
                                 for o in objects}
    return row


def run_grasp_benchmark(quick: bool, json_path: str | Path | None, plot_path: str | Path | None = None,
                        seeds: int = 3, episodes: int | None = None, workers: int | None = None,
                        policies: dict[str, Path] | None = None, variants=VARIANTS, sets=SETS) -> int:
    from ds_robot.paths import policies_dir

    episodes = episodes or (10 if quick else 200)
    seeds = min(seeds, 2) if quick else seeds
    workers = workers or os.cpu_count() or 1
    policies = {**{k: policies_dir() / v for k, v in POLICY_FILES.items()}, **(policies or {})}
    for variant in variants:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown grasp variant '{variant}': choose from {', '.join(VARIANTS)}")
        if variant in policies and not Path(policies[variant]).is_file():
            raise ConfigError(f"bench grasp: {variant} needs its policy file {policies[variant]} (train it, see "
                              "BENCHMARKS.md, or pass another)")
    jobs = [(v, s, seed, episodes, policies) for s in sets for v in variants for seed in range(seeds)]
    print(f"bench grasp: {len(variants)} variants x {len(sets)} object sets x {seeds} seeds x {episodes} episodes, "
          f"{workers} processes")
    done: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_job, *job) for job in jobs]
        for future in tqdm(futures, desc="bench grasp", unit="job"):
            done.append(future.result())
    results = [summarise_jobs(v, s, [j for j in done if j["variant"] == v and j["set"] == s])
               for s in sets for v in variants]
    _print_table(results)
    lines = verdict(results)
    for line in lines:
        print(line)
    if json_path:
        config = {"variants": list(variants), "object_sets": {s: str(_object_set_path(s)) for s in sets},
                  "seeds": seeds, "episodes_per_seed": episodes, "processes": workers,
                  "policies": {k: str(v) for k, v in policies.items()}, "quick": quick, "verdict": lines,
                  "goals": GOALS, "seed_claims": SEED_CLAIMS}
        write_json(json_path, "grasp", config, results)
        print(f"wrote {json_path}")
    if plot_path:
        plot_results(plot_path, results)
        print(f"wrote {plot_path}")
    return 0


def _print_table(results: list[dict]) -> None:
    rows = [[r["object_set"], r["name"], r["episodes"], ci_text(r["success_rate"], r["success_rate_ci95"], digits=3),
             ci_text(r["time_to_lift_s"], r["time_to_lift_s_ci95"]), ci_text(r["energy_j"], r["energy_j_ci95"], digits=1),
             "-" if math.isnan(r["planning_latency_ms"]) else f"{r['planning_latency_ms']:.3f}",
             f"{r['control_step_us']:.0f}", f"{r['residual_share']:.3f}" if "residual_share" in r else "-"]
            for r in results]
    print(format_table(["set", "variant", "episodes", "success [95% CI]", "time to lift s", "energy J",
                        "plan ms", "step us", "residual share"], rows))


def verdict(results: list[dict]) -> list[str]:
    """The goals and the seed's three claims, on the default set."""
    by = {(r["object_set"], r["name"]): r for r in results}
    lines = []
    hier, scripted, flat = by.get(("default", "hier")), by.get(("default", "scripted")), by.get(("default", "flat"))
    if hier:
        ok = hier["success_rate"] >= GOALS["hier_success"]
        lines.append(f"hier success on the default set {hier['success_rate']:.3f} "
                     f"[{hier['success_rate_ci95'][0]:.3f}, {hier['success_rate_ci95'][1]:.3f}] "
                     f"(goal >= {GOALS['hier_success']}: {'met' if ok else 'not met'})")
        lines.append(f"planning latency {hier['planning_latency_ms']:.3f} ms mean, "
                     f"{hier['planning_latency_p99_ms']:.3f} ms P99 (goal <= {GOALS['planning_ms']} ms: "
                     f"{'met' if hier['planning_latency_p99_ms'] <= GOALS['planning_ms'] else 'not met'}); control "
                     f"step {hier['control_step_us']:.0f} us mean (goal <= {GOALS['control_step_us']:.0f} us: "
                     f"{'met' if hier['control_step_us'] <= GOALS['control_step_us'] else 'not met'})")
    if hier and scripted:
        ratio = hier["energy_j"] / scripted["energy_j"]
        equal_or_better = hier["success_rate_ci95"][1] >= scripted["success_rate"]
        lines.append(f"energy hier / scripted = {ratio:.3f} (goal <= {GOALS['energy_ratio']} at equal or better "
                     f"success: {'met' if ratio <= GOALS['energy_ratio'] and equal_or_better else 'not met'}); "
                     f"seed claim -31% energy: {'holds' if ratio <= 1 - SEED_CLAIMS['energy_cut'] else 'not reproduced'}"
                     f" (measured {100 * (ratio - 1):+.1f}%)")
    if hier and flat:
        lines.append(f"seed claim success 72% -> 89% (flat -> hierarchical with torque): measured "
                     f"{100 * flat['success_rate']:.1f}% -> {100 * hier['success_rate']:.1f}%")
    planner_only = by.get(("default", "hier_planner_only"))
    if hier and planner_only:
        lines.append(f"learned residual: hier {hier['success_rate']:.3f} success / {hier['energy_j']:.1f} J vs the same "
                     f"planner on bare model-based skills {planner_only['success_rate']:.3f} / "
                     f"{planner_only['energy_j']:.1f} J; residual share of the torque "
                     f"{hier.get('residual_share', math.nan):.3f}")
    no_torque = by.get(("default", "hier_no_torque"))
    if hier and no_torque:
        lo, hi = hier["success_rate_ci95"]
        nlo, nhi = no_torque["success_rate_ci95"]
        overlap = not (lo > nhi or nlo > hi)
        lines.append(f"torque features: hier {hier['success_rate']:.3f} vs hier_no_torque "
                     f"{no_torque['success_rate']:.3f} success, energy {hier['energy_j']:.1f} vs "
                     f"{no_torque['energy_j']:.1f} J ({'CIs overlap: no measurable effect' if overlap else 'differs'})")
    if hier and scripted:
        lines.append(f"seed claim planning time 3.2 s -> 0.8 s: one high-level decision takes "
                     f"{hier['planning_latency_ms']:.3f} ms here (scripted planning {scripted['planning_latency_ms']:.3f} "
                     f"ms); time to lift {scripted['time_to_lift_s']:.2f} s scripted -> {hier['time_to_lift_s']:.2f} s "
                     "hier")
    return lines


def plot_results(path: str | Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["object_set"] for r in results))
    variants = list(dict.fromkeys(r["name"] for r in results))
    colors = {"scripted": "#8C8C8C", "flat": "#DD8452", "hier_no_torque": "#8172B3", "hier": "#4C72B0",
              "hier_planner_only": "#64B5CD"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        rows = [next(r for r in results if r["object_set"] == s and r["name"] == variant) for s in sets]
        x = np.arange(len(sets)) + i * width
        for ax, key in zip(axes, ("success_rate", "energy_j", "time_to_lift_s"), strict=True):
            values = np.array([r[key] for r in rows], dtype=float)
            ci = np.array([r[f"{key}_ci95"] for r in rows], dtype=float)
            err = np.nan_to_num(np.abs(np.stack([values - ci[:, 0], ci[:, 1] - values])))
            ax.bar(x, np.nan_to_num(values), width, yerr=err, capsize=3, color=colors.get(variant), label=variant)
    for ax, label in zip(axes, ("success rate (95% Wilson CI)", "energy per episode, J", "time to lift, s"),
                         strict=True):
        ax.set_xticks(np.arange(len(sets)) + width * (len(variants) - 1) / 2, sets)
        ax.set_ylabel(label)
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("bench grasp: scripted vs flat PPO vs hierarchical (with / without torque features)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- success against wall-clock training time -------------------------------------------------


def _curve_job(path: str, episodes: int, seed: int) -> dict[str, Any]:
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.evaluate import episode_seeds, run_episode
    from ds_robot.hier.policy import HierPolicy

    policy = HierPolicy.load(path)
    env = UR5GraspEnv()
    controller = controller_for_env("hier", env, policy=policy)
    results = [run_episode(env, controller, s) for s in episode_seeds(seed, episodes)]
    env.close()
    return {"policy": path, "minutes": policy.meta.get("wall_seconds", math.nan) / 60.0,
            "steps": policy.meta.get("steps"), "successes": sum(r.success for r in results), "episodes": episodes,
            "energy_j": float(np.mean([r.energy_j for r in results]))}


def run_grasp_curve(run_dir: str | Path, episodes: int, json_path: str | Path | None, plot_path: str | Path | None,
                    workers: int = 2, seed: int = 1000) -> int:
    """Deterministic success of every snapshot of a ``train grasp`` run (and its final policy)
    on the default set, against the wall-clock minutes of training that produced it."""
    run_dir = Path(run_dir)
    paths = sorted((run_dir / "snapshots").glob("policy_*s.npz"))
    if (run_dir / "policy.npz").is_file():
        paths.append(run_dir / "policy.npz")
    if not paths:
        raise ConfigError(f"{run_dir}: no snapshots/policy_*s.npz or policy.npz (is it a train grasp run directory?)")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_curve_job, str(p), episodes, seed) for p in paths]
        rows = [f.result() for f in tqdm(futures, desc="grasp curve", unit="policy")]
    for row in rows:
        rate, ci = wilson_ci95(row["successes"], row["episodes"])
        row.update(name=Path(row["policy"]).stem, success_rate=rate, success_rate_ci95=list(ci))
    rows.sort(key=lambda r: r["minutes"])
    print(format_table(["policy", "minutes", "steps", "success [95% CI]", "energy J"],
                       [[r["name"], f"{r['minutes']:.1f}", f"{r['steps']:,}",
                         ci_text(r["success_rate"], r["success_rate_ci95"], digits=3), f"{r['energy_j']:.1f}"]
                        for r in rows]))
    first = next((r for r in rows if r["success_rate"] >= 0.9), None)
    reached = "none" if first is None else f"{first['name']} after {first['minutes']:.1f} min"
    print(f"first policy at >= 90% deterministic success: {reached}")
    if json_path:
        write_json(json_path, "grasp_curve", {"run": str(run_dir), "episodes": episodes, "seed": seed}, rows)
        print(f"wrote {json_path}")
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        minutes = [r["minutes"] for r in rows]
        rates = np.array([r["success_rate"] for r in rows])
        ci = np.array([r["success_rate_ci95"] for r in rows])
        ax.errorbar(minutes, rates, yerr=np.maximum([rates - ci[:, 0], ci[:, 1] - rates], 0), marker="o", capsize=3,
                    label=f"policy snapshots, deterministic ({episodes} episodes each)")
        progress = run_dir / "progress.csv"
        if progress.is_file():
            data = np.genfromtxt(progress, delimiter=",", names=True)
            ax.plot(np.atleast_1d(data["seconds"]) / 60, np.atleast_1d(data["success_rate"]), color="#8C8C8C",
                    alpha=0.7, label="training episodes (exploring)")
        ax.axhline(0.9, color="k", ls="--", lw=1, label="90%")
        ax.set_xlabel("wall-clock training time, min (2-core machine)")
        ax.set_ylabel("success rate")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("train grasp: success against training time")
        fig.tight_layout()
        fig.savefig(plot_path, dpi=110)
        plt.close(fig)
        print(f"wrote {plot_path}")
    return 0
