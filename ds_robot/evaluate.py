"""Grasp evaluation: run a controller for many seeded episodes and summarise the metrics of docs/architecture.md."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.stats import mean_ci95, wilson_ci95


@dataclass
class EpisodeResult:
    seed: int
    object: str
    success: bool
    time_to_lift_s: float
    energy_j: float
    control_step_us: float  # mean wall time of one controller call


def episode_seeds(seed: int, episodes: int) -> list[int]:
    """Independent, reproducible per-episode seeds derived from one base seed."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(episodes)]


def run_episode(env: UR5GraspEnv, controller, seed: int, on_step: Callable | None = None) -> EpisodeResult:
    obs, info = env.reset(seed=seed)
    controller.reset(obs)
    done, steps, act_s = False, 0, 0.0
    while not done:
        start = time.perf_counter()
        action = controller.act(obs)
        act_s += time.perf_counter() - start
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        done = terminated or truncated
        if on_step is not None:
            on_step(env)
    return EpisodeResult(
        seed=seed,
        object=info["object"],
        success=bool(info["success"]),
        time_to_lift_s=float(info["time_to_lift_s"]),
        energy_j=float(info["energy_j"]),
        control_step_us=act_s / steps * 1e6,
    )


def run_episodes(env: UR5GraspEnv, controller, episodes: int, seed: int, progress: bool = True) -> list[EpisodeResult]:
    results = []
    bar = tqdm(episode_seeds(seed, episodes), desc=f"eval {controller.name}", unit="ep", disable=not progress)
    for episode_seed in bar:
        results.append(run_episode(env, controller, episode_seed))
        bar.set_postfix(success=f"{np.mean([r.success for r in results]):.3f}")
    return results


def summarise(name: str, results: list[EpisodeResult]) -> dict:
    """One result row (docs/architecture.md benchmark-output keys): success with Wilson CI, means with t CIs.

    ``time_to_lift_s`` averages successful episodes only; ``energy_j`` averages all of them.
    """
    successes = sum(r.success for r in results)
    rate, rate_ci = wilson_ci95(successes, len(results))
    lift, lift_ci = mean_ci95([r.time_to_lift_s for r in results if r.success])
    energy, energy_ci = mean_ci95([r.energy_j for r in results])
    step_us, step_ci = mean_ci95([r.control_step_us for r in results])
    return {
        "name": name,
        "episodes": len(results),
        "success_rate": rate,
        "success_rate_ci95": list(rate_ci),
        "time_to_lift_s": lift,
        "time_to_lift_s_ci95": list(lift_ci),
        "energy_j": energy,
        "energy_j_ci95": list(energy_ci),
        "control_step_us": step_us,
        "control_step_us_ci95": list(step_ci),
    }


def per_object(results: list[EpisodeResult]) -> dict[str, dict]:
    names = sorted({r.object for r in results})
    return {n: summarise(n, [r for r in results if r.object == n]) for n in names}


def plot_evaluation(path, title: str, overall: dict, objects: dict[str, dict], results: list[EpisodeResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(objects)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    rates = np.array([objects[n]["success_rate"] for n in names])
    lo = rates - np.array([objects[n]["success_rate_ci95"][0] for n in names])
    hi = np.array([objects[n]["success_rate_ci95"][1] for n in names]) - rates
    axes[0].bar(names, rates, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=3, color="#4C72B0")
    axes[0].axhline(overall["success_rate"], color="k", ls="--", lw=1, label=f"all: {overall['success_rate']:.3f}")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("success rate (95% Wilson CI)")
    axes[0].legend(loc="lower right")
    lifts = [r.time_to_lift_s for r in results if r.success]
    axes[1].hist(lifts, bins=20, color="#55A868")
    axes[1].set_xlabel("time to lift, s (successful episodes)")
    axes[1].set_ylabel("episodes")
    axes[2].boxplot([[r.energy_j for r in results if r.object == n] for n in names], tick_labels=names)
    axes[2].set_ylabel("energy per episode, J")
    for ax in (axes[0], axes[2]):
        ax.tick_params(axis="x", rotation=40)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
