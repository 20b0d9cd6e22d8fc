"""``ds-robot bench amp``: mixed precision on CPU, and the loss scaler under forced overflows.

1. A2C on CartPole-v1 (seed network, beta 0.01), fp32 against bf16 autocast with the seed's
   dynamic loss scaler, same seeds: env steps and seconds to solve (the CartPole protocol of
   ``bench cartpole``) and training throughput.
2. Forced overflows: the same training with the value head's output multiplied by 1e36 (the
   squared value loss and its gradients overflow to inf) on the first attempt of every 200th
   update (growth interval 50). The scaler must halve and retry the same batch, grow back
   after ``growth_interval`` clean steps, and the run must still solve.

GPU memory and throughput (the seed's "-40% memory, 2.3x throughput" on a V100) need a GPU;
this benchmark reports CPU only.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from ds_robot.bench.cartpole import ENV_ID, SolveWatcher
from ds_robot.bench.report import format_table, write_json
from ds_robot.rl.diagnostics import TrainingWarning
from ds_robot.stats import mean_ci95


def _run(seed: int, amp: bool, budget: int, inject_every: int | None = None, growth_interval: int = 2000) -> dict:
    from ds_robot.rl.a2c import A2C, A2CConfig

    agent = A2C(A2CConfig(env_id=ENV_ID, total_steps=budget, ent_coef=0.01, seed=seed, amp=amp))
    agent.scaler.growth_interval = growth_interval
    if inject_every:
        original = agent.policy.dist_and_value
        poisoned_update = {"last": -1}

        def poisoned(obs):
            dist, value = original(obs)
            is_update_batch = obs.shape[0] > agent.config.n_envs  # not action selection
            if is_update_batch and agent.updates % inject_every == 0 and poisoned_update["last"] != agent.updates:
                poisoned_update["last"] = agent.updates  # the first attempt only; the retry is clean
                value = value * 1e36
            return dist, value

        agent.policy.dist_and_value = poisoned
    watcher = SolveWatcher(lambda o: agent.act(o), 2_500, seed)
    scales = []

    def callback(a, stats):
        scales.append(stats["loss_scale"])
        return watcher(a.steps)

    result = agent.train(callback, progress=False)
    agent.close()
    return {"seed": seed, "solve_steps": watcher.solve_steps, "solve_s": watcher.solve_s,
            "steps_per_s": agent.steps / max(result.seconds - watcher.eval_seconds, 1e-9),
            "overflows": agent.scaler.overflows, "final_scale": agent.scaler.scale,
            "min_scale": min(scales) if scales else None, "updates": agent.updates}


def run_amp_benchmark(quick: bool = False, json_path=None, seeds: int = 5) -> int:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", TrainingWarning)
    budget = 20_000 if quick else 100_000
    seed_list = list(range(2 if quick else seeds))
    variants = {
        "fp32": dict(amp=False),
        "bf16": dict(amp=True),
        "bf16_forced_overflow": dict(amp=True, inject_every=200, growth_interval=50),
    }
    results, rows = [], []
    for name, kwargs in variants.items():
        start = time.perf_counter()
        runs = [_run(seed, budget=budget, **kwargs) for seed in seed_list]
        solved = [r for r in runs if r["solve_steps"] is not None]
        row = {"name": name, "runs": len(runs), "solved_rate": len(solved) / len(runs), "per_seed": runs,
               "wall_s": time.perf_counter() - start}
        for key in ("solve_steps", "solve_s", "steps_per_s", "overflows"):
            values = [r[key] if r[key] is not None else np.nan for r in runs]
            mean, ci = mean_ci95(values)
            row[key], row[f"{key}_ci95"] = mean, list(ci)
        results.append(row)
        rows.append([name, f"{row['solved_rate']:.0%}", f"{row['solve_steps']:,.0f}", f"{row['solve_s']:.2f}",
                     f"{row['steps_per_s']:,.0f}", f"{row['overflows']:.1f}",
                     f"{np.mean([r['final_scale'] for r in runs]):.3g}" if kwargs["amp"] else "off"])
    print(f"\nbench amp: A2C on {ENV_ID}, {len(seed_list)} seeds, budget {budget:,} steps (CPU: bf16 autocast)")
    print(format_table(["variant", "solved", "mean solve steps", "mean solve s", "train steps/s",
                        "overflows/run", "final scale"], rows))
    if json_path:
        write_json(json_path, "amp", {"env": ENV_ID, "seeds": seed_list, "budget_steps": budget,
                                      "device": "cpu", "gpu_measured": False}, results)
        print(f"wrote {json_path}")
    return 0
