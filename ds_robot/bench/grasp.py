"""``ds-robot bench grasp``: the hierarchical controller against the best non-learned alternatives.

In one run, on the ``--task`` preset's training and test object sets (default: the realistic
task, ``sim/tasks/realistic.yaml``; ``--sets`` picks others, e.g. ``stress``, the 48 generated
objects of ``sim/objects/stress.yaml``, on which the goals are judged too), for ``seeds`` base
seeds x ``episodes`` episodes each (defaults 3 x 200; episode seeds derive from the base seed,
identical for every variant; ``--variants`` picks rows):

- ``scripted``: the model-based computed-torque controller with its default option;
- ``best_fixed``: the single planner option (``DEFAULT_OPTIONS``) with the highest success on
  the *training* set, found here by running every option (``fixed_K`` rows, training set only),
  then reported on both sets;
- ``rule_gentle_first``: a hand-written planner on the same machine: the 5 N option first, the
  full grip for every re-plan (a slip or a missed grasp);
- ``rule_probe``: a hand-written planner with the probe option: weigh the object with a 4 N
  grip first, then the grip its weight needs by a friction rule (``PROBE_RULE_KG``). On the
  ``occluded`` task the camera cannot see the object in the hand, so a probe whose object slid
  down between the pads reads like a held one, with the friction the pads carried as its
  weight: the rule then takes that reading for the weight;
- ``hier``: the shipped hierarchical controller (``models/policies/grasp_hier.npz``, an ensemble
  of training seeds' planners since round 11, 4 since round 16; ``TRAINING_SEEDS`` runs each member alone too);
  ``hier_planner_only``: its residual skills off; ``hier_no_replan``: the re-plan of an empty
  lifted hand off; ``hier_no_torque``: the policy trained without torque features;
- ``flat``: the flat PPO policy of the first releases (``grasp_flat.pt``: raw torques, no
  gravity compensation; not the fair flat baseline issue 16 asks for);
- ``flat_ppo``: the fair flat baseline (``grasp_flat_ppo.pt``): PPO with a running observation
  normaliser on ``ds_robot/UR5GraspCartesian-v0`` (TCP velocity / wrist yaw / gripper at 20 Hz,
  gravity-compensated computed torque underneath, the task's potential-based reward);
  ``sb3_sac``: Stable-Baselines3 SAC on the same env (``grasp_sb3_sac.zip``). Each is reported
  as missing while its file is absent.

Per variant and set: success rate (Wilson 95% CI), time to lift (successful episodes), energy
(mean with CI, median, the worst episode), crushed episodes, re-plans, episodes that ended out of
reach (the object rolled where the machine does not go), ``planning_latency_ms`` (one high-level decision, timed around the
machine's ``_plan_attempt``), ``control_step_us`` (one full controller call), the residual
share of the torque, ``tracking_rms_mrad`` (the model-based machines: per episode the RMS over
its steps of the machine's joint target minus the true joint position, mean over episodes; a
residual that fights the PD loop underneath raises it), and the options chosen per object. Episodes run in ``workers`` processes,
one (variant, set, seed) job each, one thread per process, so the latencies are one-core numbers.
The verdict (printed, and in the JSON's config) judges issue 16's goals on each unseen set that
ran (``verdict``), including how many points the planner alone leaves the residual skills to add.
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

VARIANTS = ("scripted", "best_fixed", "rule_gentle_first", "rule_probe", "hier", "hier_planner_only", "hier_no_replan", "hier_no_torque", "flat",
            "flat_ppo", "sb3_sac", "hier_tau_err10", "hier_tau_err25")
# hier_tau_errNN: the shipped policy reading torques through a wrong calibration, each joint's
# torque x a factor drawn once per seed from [1 - NN%, 1 + NN%] (a real UR reports motor current:
# the node converts it with per-joint factors the operator identified, never exactly)
TORQUE_ERRORS = {"hier_tau_err10": 0.10, "hier_tau_err25": 0.25}
# peers whose absence is reported, not an error: why they are missing when their file is absent
OPTIONAL = {"flat_ppo": "no models/policies/grasp_flat_ppo.pt (train: see BENCHMARKS.md, flat baselines)",
            "sb3_sac": "no models/policies/grasp_sb3_sac.zip (train: see BENCHMARKS.md, flat baselines)"}
POLICY_FILES = {"flat": "grasp_flat.pt", "hier_no_torque": "grasp_hier_no_torque.npz", "hier": "grasp_hier.npz",
                "hier_planner_only": "grasp_hier.npz", "hier_no_replan": "grasp_hier.npz",
                "hier_tau_err10": "grasp_hier.npz", "hier_tau_err25": "grasp_hier.npz",
                "flat_ppo": "grasp_flat_ppo.pt", "sb3_sac": "grasp_sb3_sac.zip"}
# More training seeds of a learned variant (files in models/policies/ matching the pattern, used
# when present; ``_sK`` names the training seed, models/policies/README.md the shipped file's own):
# the variant is run with each of them on the same episodes too, and its rows report the success
# of every training seed and their mean with a 95% CI across the training seeds. When the shipped
# file is an ensemble of them (ds-robot ensemble; since round 11), the seeds are its members and
# the mean is over them alone
TRAINING_SEEDS = {"hier": "seeds/grasp_hier_s*.npz", "hier_no_torque": "seeds/grasp_hier_no_torque_s*.npz"}
NON_LEARNED = ("scripted", "best_fixed", "rule_gentle_first", "rule_probe")
SETS = ("train", "test")
SEED_CLAIMS = {"success": (0.72, 0.89), "planning_s": (3.2, 0.8), "energy_cut": 0.31}
GOALS = {"hier_success": 0.95, "margin_over_best_fixed": 0.10, "best_fixed_ceiling": 0.85, "energy_ratio": 0.69,
         "planning_ms": 1.0, "control_step_us": 500.0, "skills_margin": 0.05}


def _with_torque_calibration_error(controller, error: float, seed: int):
    """``controller`` seeing each joint's measured torque times a fixed wrong factor."""
    from ds_robot.envs.layout import OBS_SLICES

    factors = np.random.default_rng(10_000 + seed).uniform(1.0 - error, 1.0 + error, 6)
    act, reset, tau = controller.act, controller.reset, OBS_SLICES["tau"]

    def scaled(obs):
        obs = np.array(obs, dtype=np.float32)
        obs[tau] *= factors
        return obs

    controller.act, controller.reset = (lambda obs: act(scaled(obs))), (lambda obs: reset(scaled(obs)))
    return controller


# rule_probe's grips by the payload a probe weighed: per pad, the force that holds m kg with a
# friction coefficient of 0.5 and a safety factor of 2 is m g / (2 x 0.5) x 2 ~ 19.6 m N
PROBE_RULE_KG = ((0.25, 5.0), (0.6, 12.0))  # up to 0.25 kg: the 5 N grip; up to 0.6 kg: 12 N; else full


def _narrow(grip_n: float, probe: bool = False):
    """The default option with the narrow axis, the 12 cm pre-grasp and lift and this grip (0: full),
    looked up by what it is (not by its index, which a reordered option list would change)."""
    from ds_robot.control.scripted import GraspOption

    return GraspOption("narrow", 0.12, 0.12, grip_n, probe=probe)


def _probe_rule(machine):
    """A hand-written planner with the probe: weigh first (the narrow probe), then the grip the
    weight needs (``PROBE_RULE_KG``; the full grip when the probe slipped or without a weight); the
    full grip for every attempt after a slip or a miss."""
    from ds_robot.hier.options import PROBE_GRIP_N

    probe, full = _narrow(PROBE_GRIP_N, probe=True), _narrow(0.0)

    def choose(obs, attempt):
        if machine.phase != "decide":
            return probe if attempt == 0 else full
        load = machine.last_payload_kg
        if machine.last_outcome != "probed" or not math.isfinite(load):
            return full
        return _narrow(next((grip for kg, grip in PROBE_RULE_KG if load <= kg), 0.0))

    return choose


def _controller(variant: str, env, policies: dict[str, Path], seed: int = 0):
    from ds_robot.deploy.controllers import controller_for_env

    if variant.startswith("fixed_"):
        return controller_for_env("fixed", env, option=int(variant.split("_")[1]))
    if variant == "rule_gentle_first":
        controller = controller_for_env("fixed", env, option=0)
        gentle, firm = _narrow(5.0), _narrow(0.0)
        controller.option_chooser = lambda obs, attempt: gentle if attempt == 0 else firm
        controller.name = variant
        return controller
    if variant == "rule_probe":
        controller = controller_for_env("fixed", env, option=0)
        controller.option_chooser = _probe_rule(controller)
        controller.name = variant
        return controller
    if variant in ("scripted", "flat"):
        return controller_for_env(variant, env, policy=policies.get(variant))
    if variant == "flat_ppo":
        controller = controller_for_env("flat", env, policy=policies[variant])
        controller.name = variant
        return controller
    if variant == "sb3_sac":
        from ds_robot.control.learned import SB3CartesianController

        return SB3CartesianController(policies[variant], env.unwrapped.backend.variant, env.unwrapped.control_dt_s)
    controller = controller_for_env("hier", env, policy=policies[variant], residual=variant != "hier_planner_only",
                                    replan=variant != "hier_no_replan")
    if variant in TORQUE_ERRORS:
        return _with_torque_calibration_error(controller, TORQUE_ERRORS[variant], seed)
    return controller


def run_job(variant: str, split: str, seed: int, episodes: int, policies: dict[str, Path],
            task: str = "realistic") -> dict[str, Any]:
    """Run one (variant, set, seed) job in this process; returns per-episode records."""
    import torch

    torch.set_num_threads(1)
    from ds_robot.deploy.controllers import skill_machine
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.envs.presets import load_task
    from ds_robot.evaluate import episode_seeds, run_episode
    from ds_robot.hier.controller import HierarchicalController

    env = UR5GraspEnv(**load_task(task).env_kwargs(split))
    controller = _controller(variant, env, policies, seed)
    hier = isinstance(controller, HierarchicalController)
    machine = controller.machine if hier else controller
    episodes_out = []
    skills = skill_machine(controller)  # the model-based machine with the joint targets; None for a flat policy
    for episode_seed in episode_seeds(seed, episodes):
        before = len(controller.chosen) if hier else 0
        squared: list[float] = []

        def track(env, squared=squared):  # the true joint position against the machine's target
            squared.append(float(np.mean((skills.q_des - env.state.q_rad) ** 2)))

        result = run_episode(env, controller, episode_seed, on_step=track if skills is not None else None)
        fixed = [int(variant.split("_")[1])] if variant.startswith("fixed_") else []
        episodes_out.append({"object": result.object, "rest": env.setup.obj.rest, "success": result.success,
                             "time_to_lift_s": result.time_to_lift_s, "energy_j": result.energy_j,
                             "control_step_us": result.control_step_us, "crushed": bool(env.task.crushed),
                             "replans": int(getattr(machine, "replans", 0)),
                             "out_of_reach": skills is not None and skills.phase == "out_of_reach",
                             "options": list(controller.chosen[before:]) if hier else fixed,
                             "residual_share": controller.residual_share if hier else None,
                             "tracking_rms_mrad": 1e3 * math.sqrt(np.mean(squared)) if squared else None})
    env.close()
    return {"variant": variant, "set": split, "seed": seed, "episodes": episodes_out,
            "planning_s": list(controller.planning_s),
            "option_names": [o.describe() for o in controller.policy.options] if hier else []}


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
        "energy_j_median": float(np.median([e["energy_j"] for e in episodes])),
        "energy_j_max": float(max(e["energy_j"] for e in episodes)),
        "control_step_us": step, "control_step_us_ci95": list(step_ci),
        "planning_latency_ms": float(plans.mean()) if len(plans) else math.nan,
        "planning_latency_p99_ms": float(np.percentile(plans, 99)) if len(plans) else math.nan,
        "decisions": int(len(plans)),
    }
    shares = [e["residual_share"] for e in episodes if e["residual_share"] is not None]
    if shares:
        row["residual_share"] = float(np.mean(shares))
    tracking = [e["tracking_rms_mrad"] for e in episodes if e.get("tracking_rms_mrad") is not None]
    if tracking:  # RMS over each episode's steps of the joint target minus the true joint position
        row["tracking_rms_mrad"], row["tracking_rms_mrad_ci95"] = mean_ci95(tracking)
    row["crushed"] = int(sum(e["crushed"] for e in episodes))
    if jobs and jobs[0].get("option_names"):
        row["option_names"] = jobs[0]["option_names"]
    row["replans"] = int(sum(e["replans"] for e in episodes))
    # episodes that ended with the arm holding because the object was seen out of reach (rolled away)
    row["out_of_reach"] = int(sum(e.get("out_of_reach", False) for e in episodes))
    options = Counter(o for e in episodes for o in e["options"])
    if options:
        row["options_chosen"] = {str(k): v for k, v in sorted(options.items())}
    row["per_object_success"] = _per_object_success(episodes)
    row["per_object_options"] = {o: {str(k): v for k, v in sorted(Counter(
        x for e in episodes if e["object"] == o for x in e["options"]).items())} for o in row["per_object_success"]}
    return row


def _per_object_success(episodes: list[dict]) -> dict[str, float]:
    """Each object's success rate over ``episodes``, by object name."""
    return {o: float(np.mean([e["success"] for e in episodes if e["object"] == o]))
            for o in sorted({e["object"] for e in episodes})}


def _run(jobs: list[tuple], workers: int, desc: str) -> list[dict]:
    done: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_job, *job) for job in jobs]
        for future in tqdm(futures, desc=desc, unit="job"):
            done.append(future.result())
    return done


def _policy_metas(policies: dict[str, Path], variants) -> dict[str, dict]:
    """Each hierarchical variant's policy file metadata (how it was trained), read once."""
    from ds_robot.hier.policy import HierPolicy

    return {v: HierPolicy.load(policies[v]).meta for v in variants
            if policies.get(v) is not None and str(policies[v]).endswith(".npz")}


def _trained_on(metas: dict[str, dict]) -> dict[str, str]:
    """The task each hierarchical variant's policy was trained on (files from before task presets
    trained the nominal task)."""
    return {v: str(meta.get("config", {}).get("task", "nominal")) for v, meta in metas.items()}


def _ensembles(metas: dict[str, dict]) -> dict[str, int]:
    """The hierarchical variants whose policy is an ensemble (``ds-robot ensemble``): its member count."""
    return {v: len(meta["ensemble"]["members"]) for v, meta in metas.items() if meta.get("ensemble")}


def run_grasp_benchmark(quick: bool, json_path: str | Path | None, plot_path: str | Path | None = None,
                        seeds: int = 3, episodes: int | None = None, workers: int | None = None,
                        policies: dict[str, Path] | None = None, variants=VARIANTS, sets=SETS,
                        task: str = "realistic", training_seeds: dict[str, list[Path]] | None = None) -> int:
    from ds_robot.envs.presets import load_task
    from ds_robot.hier.options import DEFAULT_OPTIONS
    from ds_robot.paths import policies_dir

    preset = load_task(task)
    for split in sets:
        preset.object_set(split)  # an unknown split, or one this preset lacks: a ConfigError before any work
    episodes = episodes or (10 if quick else 200)
    seeds = min(seeds, 2) if quick else seeds
    workers = workers or os.cpu_count() or 1
    policies = {**{k: policies_dir() / v for k, v in POLICY_FILES.items()}, **(policies or {})}
    missing = {v: why for v, why in OPTIONAL.items() if v in variants and not Path(policies[v]).is_file()}
    for variant in variants:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown grasp variant '{variant}': choose from {', '.join(VARIANTS)}")
        if variant in policies and variant not in missing and not Path(policies[variant]).is_file():
            raise ConfigError(f"bench grasp: {variant} needs its policy file {policies[variant]} (train it, see "
                              "BENCHMARKS.md, or pass another)")
    runnable = [v for v in variants if v not in missing]
    print(f"bench grasp: task {preset.name}, {len(runnable)} variants x {len(sets)} object sets x {seeds} seeds x "
          f"{episodes} episodes, {workers} processes")
    search: list[dict] = []
    best = None
    if "best_fixed" in runnable:
        # every option on the training set, the same episodes; the best one is best_fixed
        fixed = [f"fixed_{k}" for k in range(len(DEFAULT_OPTIONS))]
        search = _run([(v, "train", seed, episodes, policies, task) for v in fixed for seed in range(seeds)],
                      workers, "bench grasp: options")
        rates = {v: np.mean([e["success"] for j in search if j["variant"] == v for e in j["episodes"]]) for v in fixed}
        best = max(fixed, key=lambda v: (rates[v], -int(v.split("_")[1])))
        print("options on the training set: " + ", ".join(f"{v.split('_')[1]} ({DEFAULT_OPTIONS[int(v.split('_')[1])].describe()}) "
                                                          f"{rates[v]:.3f}" for v in fixed) + f"; best_fixed = {best}")
    jobs = [(best if v == "best_fixed" else v, s, seed, episodes, policies, task)
            for s in sets for v in runnable if not (v == "best_fixed" and s == "train") for seed in range(seeds)]
    done = _run(jobs, workers, "bench grasp") + [{**j, "variant": "best_fixed"} for j in search if j["variant"] == best]
    if training_seeds is None:
        training_seeds = {v: sorted(policies_dir().glob(pattern)) for v, pattern in TRAINING_SEEDS.items()
                          if v in policies and Path(policies[v]) == policies_dir() / POLICY_FILES[v]}
    training_seeds = {v: [Path(f) for f in files if Path(f).is_file()] for v, files in training_seeds.items()
                      if v in runnable}
    seed_jobs = [(v, s, seed, episodes, {**policies, v: f}, task) for v, files in training_seeds.items()
                 for f in files for s in sets for seed in range(seeds)]
    seed_done = _run(seed_jobs, workers, "bench grasp: training seeds") if seed_jobs else []
    for job in done:
        if best is not None and job["variant"] == best:
            job["variant"] = "best_fixed"
    results = [summarise_jobs(v, s, [j for j in done if j["variant"] == v and j["set"] == s])
               for s in sets for v in runnable]
    metas = _policy_metas(policies, runnable)
    trained_on, ensembles = _trained_on(metas), _ensembles(metas)
    for row in results:
        if row["name"] in trained_on:
            row["policy_trained_on"] = trained_on[row["name"]]
        if row["name"] == "best_fixed":
            k = int(best.split("_")[1])
            row["option"] = {"index": k, "describe": DEFAULT_OPTIONS[k].describe()}
        files = training_seeds.get(row["name"])
        if files:
            # an ensemble of the training seeds (ds-robot ensemble) is not one of them: the spread is over the members
            shipped = [] if row["name"] in ensembles else [row["success_rate"]]
            member_episodes = [[e for (j, job) in zip(seed_done, seed_jobs, strict=True)
                                if job[0] == row["name"] and job[1] == row["object_set"] and job[4][job[0]] == f
                                for e in j["episodes"]] for f in files]
            rates = shipped + [float(np.mean([e["success"] for e in eps])) for eps in member_episodes]
            mean, ci = mean_ci95(rates)
            row["training_seeds"] = {"ensemble": not shipped,
                                     "policies": [str(policies[row["name"]])] * bool(shipped) + [*map(str, files)],
                                     "success_rate": rates, "mean": mean, "ci95": list(ci),
                                     # each seed file's own per-object success, in the order of the seed
                                     # files (the end of "policies", which starts with a shipped non-ensemble file)
                                     "per_object_success": [_per_object_success(eps) for eps in member_episodes]}
    options_rows = [summarise_jobs(v, "train", [j for j in search if j["variant"] == v])
                    for v in dict.fromkeys(j["variant"] for j in search)]
    results += [{"name": v, "object_set": s, "missing": why} for v, why in missing.items() for s in sets]
    _print_table([r for r in results if "missing" not in r])
    for row in results:
        if row.get("name") == "hier" and row.get("per_object_options"):
            _print_choices(row)
    for v, why in missing.items():
        print(f"{v}: missing ({why})")
    lines = verdict(results)
    lines += [f"{v}: its policy was trained on the {t} task, not on {preset.name}" for v, t in trained_on.items()
              if t != preset.name]
    for line in lines:
        print(line)
    if json_path:
        config = {"task": preset.name, "task_file": str(preset.source), "variants": list(variants),
                  "object_sets": {s: str(preset.object_set(s)) for s in sets}, "seeds": seeds,
                  "episodes_per_seed": episodes, "processes": workers, "best_fixed": best,
                  "options": [o.describe() for o in DEFAULT_OPTIONS],
                  "policies": {k: str(v) for k, v in policies.items()}, "quick": quick, "verdict": lines,
                  "goals": GOALS, "seed_claims": SEED_CLAIMS}
        write_json(json_path, "grasp", config, results + options_rows)
        print(f"wrote {json_path}")
    if plot_path:
        plot_results(plot_path, [r for r in results if "missing" not in r])
        print(f"wrote {plot_path}")
    return 0


def _print_table(results: list[dict]) -> None:
    rows = [[r["object_set"], r["name"], r["episodes"], ci_text(r["success_rate"], r["success_rate_ci95"], digits=3),
             ci_text(r["time_to_lift_s"], r["time_to_lift_s_ci95"]), ci_text(r["energy_j"], r["energy_j_ci95"], digits=1),
             r["crushed"], r["replans"], r["out_of_reach"],
             "-" if math.isnan(r["planning_latency_ms"]) else f"{r['planning_latency_ms']:.3f}",
             f"{r['control_step_us']:.0f}", f"{r['residual_share']:.3f}" if "residual_share" in r else "-",
             f"{r['tracking_rms_mrad']:.1f}" if "tracking_rms_mrad" in r else "-"]
            for r in results]
    print(format_table(["set", "variant", "episodes", "success [95% CI]", "time to lift s", "energy J", "crushed",
                        "re-plans", "out of reach", "plan ms", "step us", "residual share", "tracking mrad"], rows))


def _print_choices(row: dict) -> None:
    """Per object: success and the options the planner chose (first decisions and re-plans)."""
    print(f"\nhier on the {row['object_set']} set: options chosen per object (index: count; "
          + ", ".join(f"{i} = {name}" for i, name in enumerate(row.get("option_names", []))) + ")")
    print(format_table(["object", "success", "options chosen"],
                       [[name, f"{row['per_object_success'][name]:.2f}",
                         " ".join(f"{k}:{v}" for k, v in counts.items())]
                        for name, counts in row["per_object_options"].items()]))


def _rate(row: dict) -> str:
    lo, hi = row["success_rate_ci95"]
    return f"{row['success_rate']:.3f} [{lo:.3f}, {hi:.3f}]"


UNSEEN_SETS = ("test", "stress")  # the sets the goals are judged on (stress: generated, sim/objects/stress.yaml)


def verdict(results: list[dict]) -> list[str]:
    """The goals of issue 16 and the seed's claims, on each unseen set that ran (test, stress)."""
    by = {(r["object_set"], r["name"]): r for r in results if "missing" not in r}
    lines = []
    for unseen in UNSEEN_SETS:
        lines += _set_verdict(by, unseen)
    for row in results:
        seeds = row.get("training_seeds")
        if seeds:
            lo, hi = seeds["ci95"]
            n = len(seeds["success_rate"])
            what = f"its ensemble's {n} members alone" if seeds.get("ensemble") else f"{n} training seeds"
            lines.append(f"{row['name']} on the {row['object_set']} set over {what}: "
                         f"{seeds['mean']:.3f} [{lo:.3f}, {hi:.3f}] (95% CI across seeds; per seed "
                         + ", ".join(f"{r:.3f}" for r in seeds["success_rate"]) + ")")
    return lines


def _set_verdict(by: dict, unseen: str) -> list[str]:
    lines = []
    on = f"on the {unseen} set"
    hier, scripted, best = by.get((unseen, "hier")), by.get((unseen, "scripted")), by.get((unseen, "best_fixed"))
    if best:
        too_easy = best["success_rate"] > GOALS["best_fixed_ceiling"]
        lines.append(f"best_fixed (option {best['option']['describe']}, chosen on the training set) {on} "
                     f"{_rate(best)}: the task is {'still too easy' if too_easy else 'hard enough'} for a fixed "
                     f"option (ceiling {GOALS['best_fixed_ceiling']})")
    if hier:
        ok = hier["success_rate"] >= GOALS["hier_success"]
        lines.append(f"hier success {on} {_rate(hier)} (goal >= {GOALS['hier_success']}: "
                     f"{'met' if ok else 'not met'})")
        if best:
            margin = hier["success_rate"] - best["success_rate"]
            lines.append(f"hier - best_fixed {on} {100 * margin:+.1f} points (goal >= "
                         f"+{100 * GOALS['margin_over_best_fixed']:.0f}: "
                         f"{'met' if margin >= GOALS['margin_over_best_fixed'] - 1e-9 else 'not met'})")
        used = {k for k, v in hier.get("options_chosen", {}).items() if v}
        lines.append(f"hier uses {len(used)} options {on} (goal >= 3: {'met' if len(used) >= 3 else 'not met'})")
        lines.append(f"planning latency {hier['planning_latency_ms']:.3f} ms mean, "
                     f"{hier['planning_latency_p99_ms']:.3f} ms P99 (goal <= {GOALS['planning_ms']} ms); control "
                     f"step {hier['control_step_us']:.0f} us mean (goal <= {GOALS['control_step_us']:.0f} us)")
    if hier and scripted:
        # judged on the medians: one episode whose physics ran away (kJ) moves a mean of 120 by
        # tens of J; scripted's on round 15's stress set was 100.9 J [11, 190], the others' ~39-44 J
        ratio = hier["energy_j"] / scripted["energy_j"]
        median = hier["energy_j_median"] / scripted["energy_j_median"]
        equal_or_better = hier["success_rate_ci95"][1] >= scripted["success_rate"]
        lines.append(f"energy hier / scripted {on} = {median:.3f} by the medians, {ratio:.3f} by the means (goal <= "
                     f"{GOALS['energy_ratio']} at equal or better success, by the medians: "
                     f"{'met' if median <= GOALS['energy_ratio'] and equal_or_better else 'not met'})")
    alone = by.get((unseen, "hier_planner_only"))
    if hier and alone:
        # the skills' goal: hier_planner_only at least 5 points below hier. A planner whose success
        # alone is above 1 - 5 points leaves the skills too little to add: with its 95% CI above
        # that, no residual can meet the goal on this set, however it is trained
        margin, room = hier["success_rate"] - alone["success_rate"], 1.0 - alone["success_rate"]
        reach = alone["success_rate_ci95"][0] > 1.0 - GOALS["skills_margin"]
        lines.append(f"the residual skills add {100 * margin:+.1f} points {on} (goal >= "
                     f"+{100 * GOALS['skills_margin']:.0f}: {'met' if margin >= GOALS['skills_margin'] - 1e-9 else 'not met'}); "
                     f"the planner alone leaves {100 * room:.1f} points to add"
                     + (f", its 95% CI lies above {1 - GOALS['skills_margin']:.2f}: out of reach on this set" if reach else ""))
    non_learned = [by[(unseen, n)] for n in NON_LEARNED if (unseen, n) in by]
    if hier and non_learned:
        top = max(non_learned, key=lambda r: r["success_rate"])
        lines.append(f"best non-learned controller {on}: {top['name']} {_rate(top)}; hier "
                     f"{100 * (hier['success_rate'] - top['success_rate']):+.1f} points against it")
    for ablation in ("rule_gentle_first", "rule_probe", "hier_planner_only", "hier_no_replan", "hier_no_torque"):
        row = by.get((unseen, ablation))
        if hier and row:
            lines.append(f"{ablation} {on} {_rate(row)} vs hier {_rate(hier)} "
                         f"({100 * (row['success_rate'] - hier['success_rate']):+.1f} points)")
    return lines


def plot_results(path: str | Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["object_set"] for r in results))
    variants = list(dict.fromkeys(r["name"] for r in results))
    colors = {"scripted": "#8C8C8C", "best_fixed": "#55A868", "flat": "#DD8452", "hier_no_torque": "#8172B3",
              "hier": "#4C72B0", "hier_planner_only": "#64B5CD", "hier_no_replan": "#C44E52",
              "rule_gentle_first": "#CCB974", "rule_probe": "#937860", "flat_ppo": "#DA8BC3", "sb3_sac": "#B07AA1"}
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
    # beside the panels, not over the bars (13 variants cover any corner of the success panel)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right", frameon=False)
    fig.suptitle("bench grasp: scripted / best fixed option vs hierarchical and its ablations")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- success against wall-clock training time -------------------------------------------------


def _curve_job(path: str, episodes: int, seed: int, task: str = "realistic") -> dict[str, Any]:
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.envs.presets import load_task
    from ds_robot.evaluate import episode_seeds, run_episode
    from ds_robot.hier.policy import HierPolicy

    policy = HierPolicy.load(path)
    env = UR5GraspEnv(**load_task(task).env_kwargs("train"))
    controller = controller_for_env("hier", env, policy=policy)
    results = [run_episode(env, controller, s) for s in episode_seeds(seed, episodes)]
    env.close()
    return {"policy": path, "minutes": policy.meta.get("wall_seconds", math.nan) / 60.0,
            "steps": policy.meta.get("steps"), "successes": sum(r.success for r in results), "episodes": episodes,
            "energy_j": float(np.mean([r.energy_j for r in results]))}


def run_grasp_curve(run_dir, episodes: int, json_path: str | Path | None, plot_path: str | Path | None,
                    workers: int = 2, seed: int = 1000, task: str = "realistic") -> int:
    """Deterministic success of every snapshot of one or more ``train grasp`` runs (``run_dir``: a
    directory or a list, e.g. one per training seed; and each run's final policy) on the ``task``
    preset's training set, against the wall-clock minutes of training that produced it."""
    run_dirs = [Path(d) for d in ([run_dir] if isinstance(run_dir, (str, Path)) else run_dir)]
    jobs = []
    for run in run_dirs:
        paths = sorted((run / "snapshots").glob("policy_*s.npz"))
        if (run / "policy.npz").is_file():
            paths.append(run / "policy.npz")
        if not paths:
            raise ConfigError(f"{run}: no snapshots/policy_*s.npz or policy.npz (is it a train grasp run directory?)")
        jobs += [(run, p) for p in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_curve_job, str(p), episodes, seed, task) for _, p in jobs]
        rows = [f.result() for f in tqdm(futures, desc="grasp curve", unit="policy")]
    for row, (run, _) in zip(rows, jobs, strict=True):
        rate, ci = wilson_ci95(row["successes"], row["episodes"])
        row.update(run=str(run), name=Path(row["policy"]).stem, success_rate=rate, success_rate_ci95=list(ci))
    rows.sort(key=lambda r: (r["run"], r["minutes"]))
    print(format_table(["run", "policy", "minutes", "steps", "success [95% CI]", "energy J"],
                       [[r["run"], r["name"], f"{r['minutes']:.1f}", f"{r['steps']:,}",
                         ci_text(r["success_rate"], r["success_rate_ci95"], digits=3), f"{r['energy_j']:.1f}"]
                        for r in rows]))
    reached = {}
    for run in run_dirs:
        first = next((r for r in rows if r["run"] == str(run) and r["success_rate"] >= 0.9), None)
        reached[str(run)] = None if first is None else first["minutes"]
        print(f"{run}: first policy at >= 90% deterministic success: "
              + ("none" if first is None else f"{first['name']} after {first['minutes']:.1f} min"))
    if json_path:
        write_json(json_path, "grasp_curve", {"runs": [str(r) for r in run_dirs], "episodes": episodes, "seed": seed,
                                              "task": task, "minutes_to_90": reached}, rows)
        print(f"wrote {json_path}")
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for i, run in enumerate(run_dirs):
            mine = [r for r in rows if r["run"] == str(run)]
            minutes = [r["minutes"] for r in mine]
            rates = np.array([r["success_rate"] for r in mine])
            ci = np.array([r["success_rate_ci95"] for r in mine])
            line = ax.errorbar(minutes, rates, yerr=np.maximum([rates - ci[:, 0], ci[:, 1] - rates], 0), marker="o",
                               capsize=3, label=f"{run.name}: snapshots, deterministic ({episodes} episodes each)")
            progress = run / "progress.csv"
            if progress.is_file():
                data = np.genfromtxt(progress, delimiter=",", names=True)
                ax.plot(np.atleast_1d(data["seconds"]) / 60, np.atleast_1d(data["success_rate"]),
                        color=line[0].get_color(), alpha=0.3, lw=1,
                        label="training episodes (exploring, varied objects)" if i == 0 else None)
        ax.axhline(0.9, color="k", ls="--", lw=1, label="90%")
        ax.set_xlabel("wall-clock training time, min (2-core machine)")
        ax.set_ylabel("success rate")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="lower right", fontsize=7)
        ax.set_title("train grasp: success on the training set against training time")
        fig.tight_layout()
        fig.savefig(plot_path, dpi=110)
        plt.close(fig)
        print(f"wrote {plot_path}")
    return 0


def planner_value_spread(policy_path: str | Path, task: str = "realistic", split: str = "train",
                         episodes: int = 300) -> list[dict]:
    """How much the planner's option values at the first decision move between episodes of the
    same object, against the gap between its best two options (printed as a table; returned per
    object). A planner whose values swing by more than the gap chooses by noise, not by object."""
    from ds_robot.envs.presets import load_task
    from ds_robot.hier.env import HierGraspEnv
    from ds_robot.hier.policy import HierPolicy

    policy = HierPolicy.load(policy_path)
    temperature = float(policy.meta.get("config", {}).get("planner_temperature", 0.1))
    env = HierGraspEnv(options=policy.options, **load_task(task).env_kwargs(split))
    values: dict[str, list[np.ndarray]] = {}
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        values.setdefault(env.env.setup.obj.name, []).append(policy.planner(obs[None].astype(np.float64))[0] * temperature)
    env.close()
    rows = []
    for name, v in sorted(values.items()):
        v = np.array(v)
        mean = v.mean(0)
        best, second = np.argsort(-mean)[:2]
        rows.append({"object": name, "episodes": len(v), "best": int(best), "gap": float(mean[best] - mean[second]),
                     "value_sd": float(v.std(0).mean()), "best_share": float(np.mean(v.argmax(1) == best))})
    print(format_table(["object", "episodes", "best option", "gap to 2nd", "value sd over episodes", "argmax = best"],
                       [[r["object"], r["episodes"], r["best"], f"{r['gap']:.3f}", f"{r['value_sd']:.3f}",
                         f"{r['best_share']:.2f}"] for r in rows]))
    gaps, sds = np.median([r["gap"] for r in rows]), np.median([r["value_sd"] for r in rows])
    print(f"median gap {gaps:.3f}, median value sd {sds:.3f} (ratio {sds / max(gaps, 1e-9):.1f})")
    return rows
