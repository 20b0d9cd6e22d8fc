"""``ds-robot bench humanoid``: SAC on Humanoid-v5 with uniform replay, prioritized replay
(PER) and PER with the seed's novelty term, several seeds, a step budget that fits a 2-core
CPU machine.

Every ``eval_every`` steps the deterministic policy plays ``eval_episodes`` episodes; the
curve of those returns is the result. Per variant: return at budget (mean over seeds, 95% CI),
area under the return curve (sample use), steps to reach the uniform variant's final mean
return (where reached), and training wall-clock (evaluation excluded).

Runs are independent processes (``workers`` at a time, one torch thread each); each finished
run is appended to ``<json>.runs.jsonl`` and skipped when the benchmark is started again, so a
long benchmark that is interrupted resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
import warnings
from pathlib import Path

import numpy as np

from ds_robot.bench.report import format_table, write_json
from ds_robot.stats import mean_ci95

ENV_ID = "Humanoid-v5"
VARIANTS = ("uniform", "per", "per_novelty")


def run_one(args: tuple) -> dict:
    replay, seed, steps, eval_every, eval_episodes, learning_starts = args
    import torch

    from ds_robot.rl.common import evaluate
    from ds_robot.rl.diagnostics import TrainingWarning
    from ds_robot.rl.sac import SAC, SACConfig

    warnings.simplefilter("ignore", TrainingWarning)
    torch.set_num_threads(1)
    agent = SAC(SACConfig(env_id=ENV_ID, total_steps=steps, replay=replay, seed=seed,
                          learning_starts=learning_starts, buffer_size=max(steps, 1_000)))
    curve, eval_seconds = [], 0.0

    def on_step(a, stats) -> bool:
        nonlocal eval_seconds
        if a.steps % eval_every == 0:
            start = time.perf_counter()
            returns = evaluate(lambda o: a.act(o), ENV_ID, eval_episodes, seed=1_000 + seed)
            eval_seconds += time.perf_counter() - start
            curve.append([a.steps, float(returns.mean())])
        return False

    result = agent.train(on_step, progress=False)
    agent.close()
    return {"replay": replay, "seed": seed, "curve": curve, "train_s": result.seconds - eval_seconds}


def _load_done(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(runs: list[dict], steps: int) -> list[dict]:
    uniform_final = [r["curve"][-1][1] for r in runs if r["replay"] == "uniform" and r["curve"]]
    threshold = float(np.mean(uniform_final)) if uniform_final else math.nan
    rows = []
    for replay in VARIANTS:
        mine = [r for r in runs if r["replay"] == replay]
        if not mine:
            continue
        finals = [r["curve"][-1][1] for r in mine]
        areas = [float(np.mean([v for _, v in r["curve"]])) for r in mine]
        reach = []
        for r in mine:
            hit = [s for s, v in r["curve"] if v >= threshold]
            reach.append(hit[0] if hit else math.nan)
        row = {"name": f"sac_{replay}", "replay": replay, "seeds": len(mine), "budget_steps": steps}
        for key, values in (("return_at_budget", finals), ("return_curve_mean", areas),
                            ("steps_to_uniform_final", reach), ("train_s", [r["train_s"] for r in mine])):
            mean, ci = mean_ci95(values)
            row[key], row[f"{key}_ci95"] = mean, list(ci)
        row["reached_uniform_final"] = int(np.isfinite(reach).sum())
        row["curves"] = [r["curve"] for r in mine]
        rows.append(row)
    return rows


def run_humanoid_benchmark(quick: bool = False, json_path=None, plot_path=None, seeds: int = 3,
                           steps: int | None = None, workers: int = 2) -> int:
    steps = steps or (2_000 if quick else 20_000)
    eval_every = 1_000 if quick else 5_000
    eval_episodes = 2 if quick else 5
    learning_starts = 500 if quick else 2_500
    seed_list = list(range(1 if quick else seeds))
    log = Path(json_path).with_suffix(".runs.jsonl") if json_path else None
    done = _load_done(log) if log else []
    done = [r for r in done if r.get("budget_steps") == steps]
    todo = [(v, s, steps, eval_every, eval_episodes, learning_starts) for v in VARIANTS for s in seed_list
            if not any(r["replay"] == v and r["seed"] == s for r in done)]
    print(f"bench humanoid: {len(done)} runs already done, {len(todo)} to go ({steps:,} steps each, "
          f"{workers} at a time)", flush=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for run in pool.imap_unordered(run_one, todo):
            run["budget_steps"] = steps
            done.append(run)
            final = run["curve"][-1][1] if run["curve"] else math.nan
            print(f"  sac_{run['replay']} seed {run['seed']}: return {final:.0f} after {steps:,} steps, "
                  f"{run['train_s']:.0f} s", flush=True)
            if log:
                log.parent.mkdir(parents=True, exist_ok=True)
                with log.open("a") as f:
                    f.write(json.dumps(run) + "\n")
    rows = summarise(done, steps)
    table = [[r["name"], r["seeds"], f"{r['return_at_budget']:.0f} [{r['return_at_budget_ci95'][0]:.0f}, "
              f"{r['return_at_budget_ci95'][1]:.0f}]", f"{r['return_curve_mean']:.0f}",
              f"{r['reached_uniform_final']}/{r['seeds']}", f"{r['train_s']:.0f}"] for r in rows]
    print(f"\nbench humanoid: SAC on {ENV_ID}, {steps:,} steps, eval every {eval_every:,} ({eval_episodes} episodes)")
    print(format_table(["variant", "seeds", "return at budget [95% CI]", "mean of curve", "reached uniform final",
                        "train s"], table))
    if json_path:
        write_json(json_path, "humanoid", {"env": ENV_ID, "budget_steps": steps, "seeds": seed_list,
                                           "eval_every": eval_every, "eval_episodes": eval_episodes,
                                           "learning_starts": learning_starts, "quick": quick}, rows)
        print(f"wrote {json_path}")
    if plot_path:
        plot_curves(plot_path, rows)
        print(f"wrote {plot_path}")
    return 0


def plot_curves(path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row, color in zip(rows, ("#4C72B0", "#DD8452", "#55A868"), strict=False):
        curves = [np.array(c) for c in row["curves"] if c]
        length = min(len(c) for c in curves)
        values = np.stack([c[:length, 1] for c in curves])
        x = curves[0][:length, 0]
        mean = values.mean(0)
        ax.plot(x, mean, color=color, label=row["name"])
        if len(values) > 1:
            half = 1.96 * values.std(0, ddof=1) / np.sqrt(len(values))
            ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"SAC on {ENV_ID}: replay variants (mean, 95% CI over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
