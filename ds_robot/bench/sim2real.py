"""``ds-robot bench sim2real``: the shipped hierarchical controller with and without online
physics correction, on the nominal world and on physics-shifted MuJoCo; the same with its
residual skills off (``hier_planner_only``: the residual's contribution where the model under
the computed torque is wrong), and the scripted controller.

Per world (``nominal``, ``shifted``, ``unmodelled``: physics outside the estimator's model class,
``pybullet``) and mode (``none``: the shipped policy;
``correction``: with online correction; ``randomisation``: the policy trained with domain
randomisation, ``models/policies/grasp_hier_dr.npz``; ``both``), ``seeds`` x
``episodes`` episodes (the same episode seeds, hence the same hidden shifts, for every mode):
success (Wilson 95% CI), time to lift, energy, control-step time; with correction also the
estimator's cost per step (``estimator_us``, mean and P99 pooled over the row's steps; the
whole correction's, ``correction_us``; and the same for a row ``hier_shifted_correction_alone``
run after the others with nothing else on the machine, which the cost goals are judged on), the one-step joint-velocity prediction error of
the nominal model against the corrected one (``pred_error_ratio_2s``: RMS over 1.5–2.0 s of
each episode, nominal / corrected, median over episodes; > 1 means the correction predicts
better), and on the shifted world the estimate's error against the hidden truth at 2 s, before
the grasp's contacts (motor gain of joints 1–5, payload; latency identified).

Predictions step the controller's MuJoCo model of the arm and gripper (nominal, or with the
current estimate written in) over one control period exactly as the world is stepped
(:class:`~ds_robot.sim2real.estimator.ModelPredictor`); they run between control steps, outside
the timed control step. Per-step curves over the first 3 s (median over episodes: prediction
errors, estimate errors) go into the JSON (``curves``) and the plot.

The episodes are the ``task`` preset's test set with its perception and sensor noise (``--task``,
default realistic); ``task=None`` runs the env's default objects without noise (the first
sim-to-real rounds' numbers). The randomisation rows are skipped when the domain-randomised
policy file is absent.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ds_robot.bench.report import ci_text, format_table, write_json
from ds_robot.errors import ConfigError
from ds_robot.sim2real import WORLDS
from ds_robot.stats import mean_ci95, wilson_ci95

MODES = ("none", "correction", "randomisation", "both")
# hier_planner_only: the same policy files with the skills' residual off, in every mode: where the
# model under the computed torque is wrong is where a residual should earn its place (issue 16).
# Randomisation is a hier policy: the scripted controller has none and correction.
BENCH_CONTROLLERS = ("hier", "hier_planner_only", "scripted")
HIER_KINDS = ("hier", "hier_planner_only")

DR_POLICY = "grasp_hier_dr.npz"  # trained with --randomize-physics
WINDOW = slice(150, 200)  # control steps 1.5-2.0 s at 100 Hz
CURVE_STEPS = 300  # per-step curves (prediction error, estimate error) over the first 3 s
# pred_error_ratio: the first sim-to-real issue's, on the shifted world; _out_of_class: issue 15's, on the
# unmodelled and pybullet worlds; the estimator's P99 within 20% of the ROS node's 2 ms period
GOALS = {"pred_error_ratio": 5.0, "pred_error_ratio_out_of_class": 3.0, "success_gap": 0.03, "estimator_share": 0.2,
         "control_period_s": 0.002}


def _curve(values) -> np.ndarray:
    """The first ``CURVE_STEPS`` values of a per-step series, NaN-padded."""
    out = np.full(CURVE_STEPS, np.nan)
    values = np.asarray(values[:CURVE_STEPS], dtype=float)
    out[: len(values)] = values
    return out


def _rms(values) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if len(values) else math.nan


def _job(world: str, mode: str, seed: int, episodes: int, kind: str = "hier",
         task: str | None = None, compensate_latency: bool = True) -> list[dict[str, Any]]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ds_robot.deploy.controllers import controller_for_env
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.evaluate import episode_seeds, run_episode
    from ds_robot.paths import policies_dir
    from ds_robot.sim2real.worlds import build_world

    if task is None:  # the env's default objects (the nominal task's set)
        env = UR5GraspEnv(backend=build_world(world, seed=0))
    else:  # the preset's test set (objects never trained on), perception and sensor noise
        from ds_robot.envs.presets import load_task

        env = UR5GraspEnv(backend=build_world(world, seed=0), **load_task(task).env_kwargs("test"))
    policy_file = DR_POLICY if mode in ("randomisation", "both") else "grasp_hier.npz"
    corrected = mode in ("correction", "both")
    policy = ({"policy": policies_dir() / policy_file, "residual": kind == "hier"} if kind in HIER_KINDS else {})
    controller = controller_for_env("hier" if kind in HIER_KINDS else kind, env, correction=corrected, **policy,
                                    **({"track_prediction": True, "compensate_latency": compensate_latency}
                                       if corrected else {}))
    rows = []
    for episode_seed in episode_seeds(seed, episodes):
        # The one-step predictions (benchmark only) run between control steps, untimed.
        result = run_episode(env, controller, episode_seed,
                             on_step=_TruthScoredFlush(controller) if mode in ("correction", "both") else None)
        row = {"success": result.success, "time_to_lift_s": result.time_to_lift_s, "energy_j": result.energy_j,
               "control_step_us": result.control_step_us,
               "unstable": bool(getattr(env.backend, "instabilities", 0))}  # MuJoCo blew up and restarted it
        if mode in ("correction", "both"):
            est = controller.estimator
            pe = est.pred_error
            row["estimator_costs_us"] = np.asarray(est.cost_s) * 1e6  # every step's: pooled per row
            row["correction_costs_us"] = np.asarray(controller.cost_s) * 1e6
            for suffix, errors in (("", pe), ("_true", est.pred_error_true)):
                nominal, corrected = _rms(errors["nominal"][WINDOW]), _rms(errors["corrected"][WINDOW])
                row[f"pred_error_nominal_2s{suffix}"], row[f"pred_error_corrected_2s{suffix}"] = nominal, corrected
                row[f"pred_error_ratio_2s{suffix}"] = nominal / corrected if corrected > 0 else math.nan
            row["curve_pred_nominal"], row["curve_pred_corrected"] = _curve(pe["nominal"]), _curve(pe["corrected"])
            pe_true = est.pred_error_true
            row["curve_pred_true_nominal"] = _curve(pe_true["nominal"])
            row["curve_pred_true_corrected"] = _curve(pe_true["corrected"])
            if world == "shifted":
                truth = env.backend.shift
                row["curve_gain_error"] = _curve([np.abs(h["gain"][:5] - truth.gain[:5]).mean() for h in est.history])
                row["curve_payload_error_kg"] = _curve([abs(h["payload_kg"] - truth.payload_kg) for h in est.history])
            if world == "shifted" and est.estimate_2s is not None:
                truth, e = env.backend.shift, est.estimate_2s
                row["gain_error"] = float(np.abs(e["gain"][:5] - np.array(truth.gain[:5])).mean())
                row["payload_error_kg"] = abs(e["payload_kg"] - truth.payload_kg)
                row["latency_right"] = e["latency_steps"] == truth.latency_steps
        rows.append(row)
    return rows


class _TruthScoredFlush:
    """``on_step`` of a corrected episode: the estimator's pending one-step predictions, from the
    measured state and, for scoring, from the world's true state (``env.state``) against its true
    next velocities."""

    def __init__(self, controller):
        self.controller = controller
        self.previous: tuple[np.ndarray, np.ndarray] | None = None  # the true (q, qd) one step ago

    def __call__(self, env) -> None:
        state = env.state
        truth = None if self.previous is None else (*self.previous, state.qd_rad_s)
        self.controller.estimator.flush_prediction(truth)
        self.previous = (np.array(state.q_rad, dtype=float), np.array(state.qd_rad_s, dtype=float))


def _nanmedian(curves: list[np.ndarray]) -> np.ndarray:
    stack = np.vstack(curves)
    enough = np.isfinite(stack).sum(axis=0) >= 0.5 * len(curves)
    out = np.full(stack.shape[1], np.nan)
    out[enough] = np.nanmedian(stack[:, enough], axis=0)
    return out


def _summarise(kind: str, world: str, mode: str, rows: list[dict]) -> dict[str, Any]:
    wins = sum(r["success"] for r in rows)
    rate, ci = wilson_ci95(wins, len(rows))
    lifts = [r["time_to_lift_s"] for r in rows if r["success"]]
    energy, energy_ci = mean_ci95([r["energy_j"] for r in rows])
    out: dict[str, Any] = {"name": f"{kind}_{world}_{mode}", "controller": kind, "world": world, "mode": mode,
                           "episodes": len(rows),
                           "success_rate": rate, "success_rate_ci95": ci,
                           "time_to_lift_s": float(np.mean(lifts)) if lifts else math.nan,
                           "energy_j": energy, "energy_j_ci95": energy_ci,
                           "control_step_us": float(np.mean([r["control_step_us"] for r in rows])),
                           "unstable_episodes": int(sum(r["unstable"] for r in rows))}
    if mode in ("correction", "both"):
        out.update(_costs(rows))
        for suffix in ("", "_true"):  # measured, and from the true state
            ratios = [r[f"pred_error_ratio_2s{suffix}"] for r in rows if math.isfinite(r[f"pred_error_ratio_2s{suffix}"])]
            out.update({f"pred_error_ratio_2s{suffix}": float(np.median(ratios)) if ratios else math.nan,
                        f"pred_error_ratio_2s{suffix}_p10_p90": [float(np.percentile(ratios, 10)),
                                                                 float(np.percentile(ratios, 90))]
                        if ratios else [math.nan, math.nan]})
            for key in ("nominal", "corrected"):
                name = f"pred_error_{key}_2s{suffix}"
                out[name] = float(np.median([r[name] for r in rows]))
        keys = [k for k in rows[0] if k.startswith("curve_")]
        # Median over episodes at each step; NaN where fewer than half the episodes still ran.
        out["curves"] = {k[len("curve_"):]: [round(float(v), 6) if math.isfinite(v) else None
                                            for v in _nanmedian([r[k] for r in rows])] for k in keys}
        scored = [r for r in rows if "gain_error" in r]
        if world == "shifted" and scored:
            out.update({"gain_error": float(np.mean([r["gain_error"] for r in scored])),
                        "payload_error_kg": float(np.mean([r["payload_error_kg"] for r in scored])),
                        "latency_identified": float(np.mean([r["latency_right"] for r in scored]))})
    return out


def _costs(rows: list[dict]) -> dict[str, float]:
    """The estimator's update and the whole correction's own work (the estimator, the model writes,
    the latency compensation's rollout: everything but the wrapped controller) per control step,
    pooled over every step of the rows' episodes."""
    estimator, correction = (np.concatenate([r[key] for r in rows]) for key in ("estimator_costs_us", "correction_costs_us"))
    return {"estimator_us": float(np.mean(estimator)), "estimator_us_p99": float(np.percentile(estimator, 99)),
            "correction_us": float(np.mean(correction)), "correction_us_p99": float(np.percentile(correction, 99))}


def _timing_alone(episodes: int, task: str | None, compensate_latency: bool) -> dict[str, Any]:
    """The corrected hier controller's costs on the shifted world with nothing else running (after
    the pool): the bench's own rows share the 2 cores with a second worker and this process."""
    rows = _job("shifted", "correction", 0, episodes, "hier", task, compensate_latency)
    return {"name": "hier_shifted_correction_alone", "controller": "hier", "world": "shifted", "mode": "alone",
            "episodes": len(rows), "control_step_us": float(np.mean([r["control_step_us"] for r in rows])), **_costs(rows)}


def run_sim2real_benchmark(quick: bool, json_path: str | Path | None, plot_path: str | Path | None = None,
                           seeds: int = 3, episodes: int | None = None, workers: int = 2,
                           task: str | None = "realistic", compensate_latency: bool = True) -> int:
    episodes = episodes or (5 if quick else 200)
    seeds = 1 if quick else seeds
    if episodes < 1 or seeds < 1 or workers < 1:
        raise ConfigError(f"need episodes, seeds and workers >= 1, got {episodes}, {seeds}, {workers}")
    from ds_robot.paths import policies_dir

    modes = MODES if (policies_dir() / DR_POLICY).is_file() else ("none", "correction")
    if len(modes) < len(MODES):
        print(f"bench sim2real: {policies_dir() / DR_POLICY} not found: randomisation rows skipped")
    cells = [(k, w, m) for k in BENCH_CONTROLLERS for w in WORLDS for m in modes
             if k in HIER_KINDS or m in ("none", "correction")]
    jobs = [(k, w, m, s) for k, w, m in cells for s in range(seeds)]
    print(f"bench sim2real: {len(BENCH_CONTROLLERS)} controllers x {len(WORLDS)} worlds x {len(modes)} modes (the scripted "
          f"controller: none and correction) x {seeds} seeds x {episodes} episodes, "
          f"{'task ' + str(task) + ', test set' if task else 'the env default objects'}, {workers} processes"
          + ("" if compensate_latency else ", latency compensation off"))
    rows: dict[tuple[str, str, str], list] = {cell: [] for cell in cells}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_job, w, m, s, episodes, k, task, compensate_latency): (k, w, m) for k, w, m, s in jobs}
        for future in tqdm(futures, desc="bench sim2real", unit="job"):
            rows[futures[future]].extend(future.result())
    results = [_summarise(*cell, rows[cell]) for cell in cells]
    alone = _timing_alone(1 if quick else 5, task, compensate_latency)
    table = []
    for r in results:
        table.append([r["name"], r["episodes"], ci_text(r["success_rate"], r["success_rate_ci95"], digits=3),
                      f"{r['time_to_lift_s']:.2f}", ci_text(r["energy_j"], r["energy_j_ci95"], digits=1),
                      f"{r['control_step_us']:.0f}",
                      f"{r['estimator_us']:.0f} / {r['estimator_us_p99']:.0f}" if "estimator_us" in r else "-",
                      f"{r['pred_error_nominal_2s']:.2g} / {r['pred_error_corrected_2s']:.2g}"
                      if "pred_error_ratio_2s" in r else "-",
                      f"{r['pred_error_ratio_2s']:.3g}" if "pred_error_ratio_2s" in r else "-",
                      f"{r['pred_error_ratio_2s_true']:.3g}" if "pred_error_ratio_2s_true" in r else "-"])
    print(format_table(["variant", "episodes", "success [95% CI]", "lift s", "energy J", "step us",
                        "estimator us mean / P99",
                        "pred err rad/s nom / corr", "ratio 2s measured", "ratio 2s true state"], table))
    print(f"alone on the machine ({alone['name']}, {alone['episodes']} episodes): control step {alone['control_step_us']:.0f} us "
          f"mean; estimator {alone['estimator_us']:.0f} us mean / {alone['estimator_us_p99']:.0f} us P99; the whole "
          f"correction {alone['correction_us']:.0f} / {alone['correction_us_p99']:.0f} us")
    unstable = {r["name"]: r["unstable_episodes"] for r in results if r["unstable_episodes"]}
    if unstable:
        print(f"episodes whose simulation blew up (MuJoCo restarted it; counted as run): {unstable}")
    for line in verdict(results, alone):
        print(line)
    if json_path:
        write_json(json_path, "sim2real", {"episodes_per_seed": episodes, "seeds": seeds, "controllers": list(BENCH_CONTROLLERS), "task": task,
                                           "latency_compensation": compensate_latency,
                                           "object_set": "test" if task else "env default",
                                           "window_s": [1.5, 2.0]}, [*results, alone])
        print(f"wrote {json_path}")
    if plot_path:
        plot(results, plot_path)
        print(f"wrote {plot_path}")
    return 0


def verdict(results: list[dict], alone: dict | None = None) -> list[str]:
    by = {r["name"]: r for r in results}
    lines = []
    lines.append("prediction error ratios (nominal / corrected model, one step, 1.5-2 s, median over episodes): "
                 "'measured' compares with the measured velocities (bounded by the sensor noise: with 0.01 rad/s per "
                 "joint a perfect model's error is ~0.035 rad/s), 'true' predicts from the world's true state and "
                 "compares with its true next velocities (the models' quality; the goals are judged on it)")
    s = by.get("hier_shifted_correction")
    if s:
        ratio = s["pred_error_ratio_2s_true"]
        lines.append(f"shifted MuJoCo: true {ratio:.2f}x (p10-p90 {s['pred_error_ratio_2s_true_p10_p90'][0]:.2f}-"
                     f"{s['pred_error_ratio_2s_true_p10_p90'][1]:.2f}), measured {s['pred_error_ratio_2s']:.2f}x; "
                     f"goal >= {GOALS['pred_error_ratio']:g}x: {'met' if ratio >= GOALS['pred_error_ratio'] else 'not met'}")
        lines.append(f"estimate at 2 s (before the grasp's contacts): motor gain error {s['gain_error']:.3f} (joints 1-5, mean abs), payload "
                     f"error {s['payload_error_kg']:.3f} kg, latency identified in {s['latency_identified']:.0%} of "
                     f"episodes")
    costs = [r for r in results if "estimator_us_p99" in r]
    if costs:
        budget = GOALS["estimator_share"] * GOALS["control_period_s"] * 1e6
        goal = (f"goal P99 <= {GOALS['estimator_share']:.0%} of the {GOALS['control_period_s'] * 1e3:g} ms period of the "
                f"ROS node = {budget:.0f} us")
        if alone is not None:
            lines.append(f"estimator cost alone on the machine {alone['estimator_us']:.0f} us mean, "
                         f"{alone['estimator_us_p99']:.0f} us P99 per step; {goal}: "
                         f"{'met' if alone['estimator_us_p99'] <= budget else 'not met'}; control step with correction "
                         f"{alone['control_step_us']:.0f} us mean (goal <= 1000 us: "
                         f"{'met' if alone['control_step_us'] <= 1000 else 'not met'})")
        p99 = max(r["estimator_us_p99"] for r in costs)
        lines.append(f"estimator cost in the bench's rows (2 worker processes on the machine) "
                     f"{np.mean([r['estimator_us'] for r in costs]):.0f} us mean, {p99:.0f} us P99 (the worst row, pooled "
                     f"over its steps)")
    for kind in BENCH_CONTROLLERS:
        nominal = by.get(f"{kind}_nominal_none")
        for world in WORLDS:
            on, off = by.get(f"{kind}_{world}_correction"), by.get(f"{kind}_{world}_none")
            if world == "nominal" or not (on and off and nominal):
                continue
            gap = nominal["success_rate"] - on["success_rate"]
            goal = GOALS["pred_error_ratio"] if world == "shifted" else GOALS["pred_error_ratio_out_of_class"]
            ratio = on["pred_error_ratio_2s_true"]
            lines.append(f"{kind} on {world}: success {off['success_rate']:.3f} -> {on['success_rate']:.3f} with correction "
                         f"(nominal world {nominal['success_rate']:.3f}: gap {gap * 100:+.1f} points, goal <= "
                         f"{GOALS['success_gap'] * 100:g}: {'met' if gap <= GOALS['success_gap'] else 'not met'}); energy "
                         f"{off['energy_j']:.1f} -> {on['energy_j']:.1f} J; prediction error ratio true {ratio:.2f}x, "
                         f"measured {on['pred_error_ratio_2s']:.2f}x (goal >= {goal:g}x: {'met' if ratio >= goal else 'not met'})")
    for world in WORLDS:
        for mode in MODES:
            full, bare = by.get(f"hier_{world}_{mode}"), by.get(f"hier_planner_only_{world}_{mode}")
            if full and bare:
                lines.append(f"residual skills on {world} ({mode}): hier {full['success_rate']:.3f} / "
                             f"{full['energy_j']:.1f} J, hier_planner_only {bare['success_rate']:.3f} / "
                             f"{bare['energy_j']:.1f} J ({(full['success_rate'] - bare['success_rate']) * 100:+.1f} points)")
    for world in WORLDS:
        dr, both = by.get(f"hier_{world}_randomisation"), by.get(f"hier_{world}_both")
        on = by.get(f"hier_{world}_correction")
        if dr and both and on:
            lines.append(f"hier on {world}: domain randomisation {dr['success_rate']:.3f} success / {dr['energy_j']:.1f} J, "
                         f"randomisation + correction {both['success_rate']:.3f} / {both['energy_j']:.1f} J; correction "
                         f"{'>=' if on['success_rate'] >= dr['success_rate'] else '<'} randomisation")
    return lines


def plot(results: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 2, figsize=(18, 11))
    axes = grid.ravel()
    names = [r["name"] for r in results]
    palette = {"none": "#888888", "correction": "#4c72b0", "randomisation": "#dd8452", "both": "#55a868"}
    colors = [palette[r["mode"]] for r in results]
    axes[0].bar(names, [r["success_rate"] for r in results],
                yerr=np.array([[r["success_rate"] - r["success_rate_ci95"][0], r["success_rate_ci95"][1] - r["success_rate"]]
                               for r in results]).T, capsize=3, color=colors)
    axes[0].set_ylabel("grasp success (95% Wilson CI)")
    axes[0].set_ylim(0, 1.05)
    axes[1].bar(names, [r["energy_j"] for r in results], color=colors, capsize=3,
                yerr=np.array([[r["energy_j"] - r["energy_j_ci95"][0], r["energy_j_ci95"][1] - r["energy_j"]]
                               for r in results]).T)
    axes[1].set_ylabel("energy per episode, J (95% CI)")
    for ax in axes[:2]:  # up to 40 rows: vertical names
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    by = {r["name"]: r for r in results}
    t = (np.arange(CURVE_STEPS) + 1) * 0.01
    for world, color in (("shifted", "#c44e52"), ("unmodelled", "#937860"), ("pybullet", "#8172b3"),
                         ("nominal", "#888888")):
        curves = by.get(f"hier_{world}_correction", {}).get("curves")
        if not curves:
            continue
        as_array = {k: np.array([np.nan if v is None else v for v in c]) for k, c in curves.items()}
        axes[2].plot(t, as_array["pred_true_nominal"], "--", color=color, label=f"{world}: nominal model")
        axes[2].plot(t, as_array["pred_true_corrected"], "-", color=color, label=f"{world}: corrected model")
        if world == "shifted":
            axes[3].plot(t, as_array["gain_error"], color="#4c72b0", label="motor gain, joints 1-5 (mean |error|)")
            axes[3].plot(t, as_array["payload_error_kg"], color="#dd8452", label="payload, kg (|error|)")
            # the first step's estimate is the prior: the do-nothing estimator's error, for reference
            for key, c in (("gain_error", "#4c72b0"), ("payload_error_kg", "#dd8452")):
                if np.isfinite(as_array[key][0]):
                    axes[3].axhline(as_array[key][0], color=c, linestyle=":", linewidth=1)
            axes[3].plot([], [], ":", color="#555555", label="do-nothing estimate (the prior)")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("time in episode, s")
    axes[2].set_ylabel("one-step joint-velocity prediction error, rad/s (median)")
    axes[2].set_title("from the true state, against the true next velocities", fontsize=10)
    axes[2].axvspan(1.5, 2.0, color="#eeeeee", zorder=0)
    axes[2].legend(fontsize=8)
    axes[3].set_xlabel("time in episode, s")
    axes[3].set_ylabel("estimate error against the hidden truth (median)")
    axes[3].set_title("shifted MuJoCo, correction on (from ~2.2 s the fingers close on the object:\n"
                      "contact and the object's load enter the estimate)", fontsize=10)
    axes[3].legend(fontsize=8)
    fig.suptitle("bench sim2real: hierarchical (hier, and hier_planner_only without its residual skills) and scripted "
                 "controllers; online correction, domain randomisation "
                 "(hier), both; curves: hier")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
