"""``ds-robot bench cartpole``: A2C entropy coefficients against Stable-Baselines3 A2C.

Protocol, identical for every variant: CartPole-v1, 8 envs x 5 steps per update; every
``eval_every`` env steps the greedy policy plays 20 evaluation episodes (seeded, run in
parallel); the run is *solved* when their mean return is >= 475. ``solve_steps`` and
``solve_s`` are the env steps and training wall-clock seconds at that moment (evaluation time
excluded, for everyone). A run that does not solve within ``budget`` steps is censored: it
counts as unsolved and its solve figures are the budget and the training time it used
(``solved_rate`` says how many runs that concerns).
``action_entropy`` is the mean entropy (nats; ln 2 = 0.693 is uniform) of the policy over the
states its greedy policy visits at the end of the run; ``train_entropy`` is the mean
entropy over training batches.

Variants: ``ds_robot_a2c_beta_<b>`` for b in 0, 0.01, 0.05, 0.1 and the seed's halving
schedule (0.1, halved every 100k steps — identical to 0.1 for any run that solves before
100k steps), on the seed's network with a constant learning rate 7e-4, RMSprop, 8 envs x 5
steps; peer ``sb3_a2c`` with the rl-zoo CartPole settings (8 envs, n_steps 5, lr 7e-4 constant,
ent_coef 0, its default MLP).
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from ds_robot.bench.report import format_table, write_json
from ds_robot.rl.common import evaluate, make_env
from ds_robot.rl.diagnostics import TrainingWarning
from ds_robot.stats import mean_ci95

ENV_ID = "CartPole-v1"
SOLVED_RETURN = 475.0
EVAL_EPISODES = 20
BETAS = ("0", "0.01", "0.05", "0.1", "halving")


class SolveWatcher:
    """Evaluates every ``eval_every`` steps with the clock paused; remembers when it solved."""

    def __init__(self, act, eval_every: int, seed: int):
        self.act = act
        self.eval_every = eval_every
        self.seed = seed
        self.next_eval = eval_every
        self.eval_seconds = 0.0
        self.start = time.perf_counter()
        self.solve_steps: int | None = None
        self.solve_s: float | None = None

    def __call__(self, steps: int) -> bool:
        if steps < self.next_eval:
            return False
        self.next_eval += self.eval_every
        paused = time.perf_counter()
        mean_return = float(evaluate(self.act, ENV_ID, EVAL_EPISODES, seed=10_000 + self.seed).mean())
        self.eval_seconds += time.perf_counter() - paused
        if mean_return >= SOLVED_RETURN:
            self.solve_steps = steps
            self.solve_s = self.training_seconds(paused)
            return True
        return False

    def training_seconds(self, now: float) -> float:
        """Wall-clock since the start, minus the evaluations that finished before ``now``."""
        return now - self.start - (self.eval_seconds - (time.perf_counter() - now))


def visited_state_entropy(probabilities, act, seed: int, n_states: int = 2000) -> float:
    """Mean policy entropy over states the greedy policy visits."""
    env = make_env(ENV_ID)
    obs, _ = env.reset(seed=seed)
    states = []
    while len(states) < n_states:
        states.append(obs)
        obs, _, terminated, truncated, _ = env.step(int(act(obs[None])[0]))
        if terminated or truncated:
            obs, _ = env.reset()
    p = np.clip(probabilities(np.array(states, dtype=np.float32)), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum(-1).mean())


def run_ds_robot(beta: str, seed: int, budget: int, eval_every: int) -> dict:
    from ds_robot.rl.a2c import A2C, A2CConfig

    # Constant learning rate, like the SB3 peer, so that the budget does not shape the run.
    agent = A2C(A2CConfig(env_id=ENV_ID, total_steps=budget, ent_coef=beta, seed=seed, lr_decay=False))
    watcher = SolveWatcher(lambda o: agent.act(o), eval_every, seed)
    result = agent.train(lambda a, stats: watcher(a.steps), progress=False)

    def probabilities(states):
        with torch.no_grad():
            return agent.policy.net.probabilities(torch.as_tensor(states)).numpy()

    entropies = [h["entropy"] for h in result.history]
    out = {
        "solve_steps": watcher.solve_steps,
        "solve_s": watcher.solve_s,
        "train_s": result.seconds - watcher.eval_seconds,
        "action_entropy": visited_state_entropy(probabilities, agent.act, seed),
        "train_entropy": float(np.mean(entropies)),
        "steps_per_s": agent.steps / max(result.seconds - watcher.eval_seconds, 1e-9),
    }
    agent.close()
    return out


def run_sb3(seed: int, budget: int, eval_every: int) -> dict:
    from stable_baselines3 import A2C as SB3A2C
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(ENV_ID, n_envs=8, seed=seed)
    model = SB3A2C("MlpPolicy", env, n_steps=5, learning_rate=7e-4, ent_coef=0.0, seed=seed, verbose=0,
                   device="cpu")
    watcher = SolveWatcher(lambda o: model.predict(o, deterministic=True)[0], eval_every, seed)
    entropies: list[float] = []

    class Stop(BaseCallback):
        def _on_step(self) -> bool:
            return not watcher(self.num_timesteps)

        def _on_rollout_end(self) -> None:
            value = self.logger.name_to_value.get("train/entropy_loss")
            if value is not None:
                entropies.append(-float(value))

    start = time.perf_counter()
    model.learn(total_timesteps=budget, callback=Stop())
    seconds = time.perf_counter() - start

    def probabilities(states):
        with torch.no_grad():
            dist = model.policy.get_distribution(torch.as_tensor(states))
            return dist.distribution.probs.numpy()

    act = lambda o: model.predict(o, deterministic=True)[0]  # noqa: E731
    return {
        "solve_steps": watcher.solve_steps,
        "solve_s": watcher.solve_s,
        "train_s": seconds - watcher.eval_seconds,
        "action_entropy": visited_state_entropy(probabilities, act, seed),
        "train_entropy": float(np.mean(entropies)) if entropies else math.nan,
        "steps_per_s": model.num_timesteps / max(seconds - watcher.eval_seconds, 1e-9),
    }


def summarise(name: str, runs: list[dict], budget: int, elapsed_s: float) -> dict:
    solved = [r for r in runs if r["solve_steps"] is not None]
    steps = [r["solve_steps"] if r["solve_steps"] is not None else budget for r in runs]
    seconds = [r["solve_s"] if r["solve_s"] is not None else r["train_s"] for r in runs]
    row = {"name": name, "runs": len(runs), "solved_rate": len(solved) / len(runs)}
    for key, values in (("solve_steps", steps), ("solve_s", seconds),
                        ("action_entropy", [r["action_entropy"] for r in runs]),
                        ("train_entropy", [r["train_entropy"] for r in runs]),
                        ("steps_per_s", [r["steps_per_s"] for r in runs])):
        mean, ci = mean_ci95(values)
        row[key] = mean
        row[f"{key}_ci95"] = list(ci)
        row[f"{key}_median"] = float(np.nanmedian(values)) if np.isfinite(values).any() else math.nan
    row["per_seed"] = runs
    row["wall_s"] = elapsed_s
    return row


def run_cartpole_benchmark(quick: bool = False, json_path=None, seeds: int = 5, plot_path=None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingWarning)  # low entropy is what some variants are about
        return _run(quick, json_path, seeds, plot_path)


def _run(quick: bool, json_path, seeds: int, plot_path) -> int:
    torch.set_num_threads(1)
    budget = 20_000 if quick else 200_000
    eval_every = 2_500
    seed_list = list(range(2 if quick else seeds))
    variants = [(f"ds_robot_a2c_beta_{b}", b) for b in (("0", "0.01") if quick else BETAS)] + [("sb3_a2c", None)]
    try:
        import stable_baselines3  # noqa: F401
        have_sb3 = True
    except ImportError:
        have_sb3 = False
    results, rows = [], []
    for name, beta in variants:
        if beta is None and not have_sb3:
            results.append({"name": name, "missing": True})
            rows.append([name, "missing (pip install stable-baselines3)", "", "", "", ""])
            continue
        start = time.perf_counter()
        runs = []
        for seed in seed_list:
            run = run_sb3(seed, budget, eval_every) if beta is None else run_ds_robot(beta, seed, budget, eval_every)
            runs.append({"seed": seed, **run})
            print(f"  {name} seed {seed}: solve_steps={run['solve_steps']} solve_s="
                  f"{run['solve_s'] if run['solve_s'] is None else round(run['solve_s'], 2)} "
                  f"entropy={run['action_entropy']:.3f}", flush=True)
        row = summarise(name, runs, budget, time.perf_counter() - start)
        results.append(row)
        rows.append([name, f"{row['solved_rate']:.0%}", f"{row['solve_steps_median']:,.0f}",
                     f"{row['solve_s_median']:.2f}", f"{row['action_entropy']:.3f}", f"{row['steps_per_s']:,.0f}"])
    print(f"\nbench cartpole: {len(seed_list)} seeds, budget {budget:,} steps, eval every {eval_every:,} steps "
          f"({EVAL_EPISODES} episodes, solved at mean return >= {SOLVED_RETURN:g})")
    print(format_table(["variant", "solved", "median solve steps", "median solve s", "action entropy",
                        "train steps/s"], rows))
    if json_path:
        write_json(json_path, "cartpole", {"env": ENV_ID, "seeds": seed_list, "budget_steps": budget,
                                           "eval_every_steps": eval_every, "eval_episodes": EVAL_EPISODES,
                                           "solved_return": SOLVED_RETURN, "quick": quick}, results)
        print(f"wrote {json_path}")
    if plot_path:
        plot_cartpole(plot_path, [r for r in results if not r.get("missing")], budget)
        print(f"wrote {plot_path}")
    return 0


def plot_cartpole(path, results: list[dict], budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    names = [r["name"].replace("ds_robot_a2c_", "") for r in results]
    for i, r in enumerate(results):
        steps = [s["solve_steps"] if s["solve_steps"] is not None else budget for s in r["per_seed"]]
        axes[0].scatter([i] * len(steps), steps, alpha=0.7)
        axes[1].scatter([i] * len(r["per_seed"]), [s["action_entropy"] for s in r["per_seed"]], alpha=0.7)
    for ax, label in ((axes[0], "env steps to solve (budget = unsolved)"), (axes[1], "policy entropy, nats")):
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    fig.suptitle("CartPole-v1: A2C entropy coefficient vs SB3 A2C")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
