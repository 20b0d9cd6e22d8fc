"""``ds-robot bench atari``: Atari frames per second of the multi-process rollout engine against peers.

Source document claim (docs/architecture.md, formulas): "2400 frames/s on Atari with 4 workers, 6.8x one process". This benchmark
measures it on one game (Pong by default), preprocessing included, random actions:

- ``single``: one process, one env (``make_atari_env``), a plain ``step`` loop;
- ``ds_robot_w<N>_e<M>``: ``RolloutEngine`` with N worker processes x M envs each, in step
  mode (the Gymnasium ``VectorEnv`` API; environment only), N in {1, 2, 4}, M in {1, 4, 8}
  (``--quick``: w1_e4 and w2_e4);
- ``ds_robot_w<N>_e<M>_policy``: the best of those layouts with policy inference in the loop:
  a Nature-DQN-sized CNN (Mnih et al. 2015; random weights, one torch thread) on the learner
  samples each step's actions from the observation batch;
- ``ds_robot_w<N>_e<M>_collect``: the same layout in collect mode (the seed's design): each
  worker rolls out ``COLLECT_STEPS`` steps with its own policy and sends the trajectory back
  through shared memory; the policy draws uniform random actions (environment only, so it
  compares with the step-mode rows and the peers), and ``..._collect_policy`` runs the same
  CNN in every worker (one torch thread each) instead of on the learner;
- peers with the same number of envs as the best layout and the same preprocessing (frame
  skip 4 with max-pooling, 84x84 grayscale by area averaging, 4 stacked frames, up to 30
  no-op frames, sticky actions 0.25 as in v5, no episodic life, no FIRE reset, no reward
  clipping, 108,000-frame episodes): ``ale_vector`` (``ale_py.AtariVectorEnv``, C++ threads),
  ``envpool`` (C++ threads) and ``gym_async`` (``gymnasium.vector.AsyncVectorEnv`` of
  ``make_atari_env``, one process per env). The C++ peers get ``min(num_envs, cores)``
  threads, reported as ``workers``. A peer that is not installed is a ``missing`` row.

Frames are ALE frames: one env step = ``frame_skip`` (4) frames, so
``frames_per_s = env steps/s x num_envs x 4``. Each variant is built once, warmed up (workers
started, first episodes under way, caches hot), then timed ``repeats`` times for a fixed wall
time each, back to back; ``frames_per_s_ci95`` is the Student-t interval over those repeats
(it captures run-to-run noise on this machine, not differences between machines).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ds_robot.bench.report import format_table, write_json
from ds_robot.envs.atari import AtariEnvFactory, ale_rom_name, make_atari_env
from ds_robot.stats import mean_ci95

FRAME_SKIP = 4
SCREEN_SIZE = 84
FRAME_STACK = 4
NOOP_MAX = 30
STICKY_ACTIONS = 0.25
MAX_EPISODE_FRAMES = 108_000
FULL_LAYOUTS = tuple((w, e) for w in (1, 2, 4) for e in (1, 4, 8))
QUICK_LAYOUTS = ((1, 4), (2, 4))
SEED_CLAIM_FRAMES_PER_S = 2400.0
SEED_CLAIM_SPEEDUP = 6.8
GOAL_RATIO = 0.9
PEERS = ("ale_vector", "envpool", "gym_async")
COLLECT_STEPS = 32


@dataclass(frozen=True)
class Budget:
    """Wall-clock budget of one variant: warm-up once, then ``repeats`` timed windows."""

    warmup_s: float
    measure_s: float
    repeats: int


StepFn = Callable[[], None]


def time_frames_per_s(step: StepFn, frames_per_call: int, budget: Budget) -> list[float]:
    """Call ``step`` for ``warmup_s``, then count frames in ``repeats`` windows of ``measure_s``."""
    start = time.perf_counter()
    while time.perf_counter() - start < budget.warmup_s:
        step()
    rates = []
    for _ in range(budget.repeats):
        calls = 0
        start = now = time.perf_counter()
        while now - start < budget.measure_s:
            step()
            calls += 1
            now = time.perf_counter()
        rates.append(calls * frames_per_call / (now - start))
    return rates


class _RandomActions:
    """Pre-drawn random actions, cycled: drawing them is not part of what is measured."""

    def __init__(self, n_actions: int, num_envs: int | None, seed: int = 0, count: int = 4096):
        shape = (count,) if num_envs is None else (count, num_envs)
        self._actions = np.random.default_rng(seed).integers(0, n_actions, size=shape, dtype=np.int64)
        self._next = 0

    def __call__(self) -> Any:
        action = self._actions[self._next]
        self._next = (self._next + 1) % len(self._actions)
        return action


# -- the variants ---------------------------------------------------------------------------


def _factory(game: str) -> AtariEnvFactory:
    return AtariEnvFactory(game, frame_skip=FRAME_SKIP, noop_max=NOOP_MAX, frame_stack=FRAME_STACK,
                           screen_size=SCREEN_SIZE, repeat_action_probability=STICKY_ACTIONS,
                           max_episode_frames=MAX_EPISODE_FRAMES)


def _measure_single(game: str, budget: Budget) -> list[float]:
    env = _factory(game)()
    env.reset(seed=0)
    actions = _RandomActions(int(env.action_space.n), None)

    def step() -> None:
        _, _, terminated, truncated, _ = env.step(actions())
        if terminated or truncated:
            env.reset()

    try:
        return time_frames_per_s(step, FRAME_SKIP, budget)
    finally:
        env.close()


def _measure_engine(game: str, workers: int, envs_per_worker: int, budget: Budget, policy: bool) -> list[float]:
    from ds_robot.rollout import RolloutEngine

    with RolloutEngine(_factory(game), workers, envs_per_worker) as engine:
        num_envs = engine.num_envs
        obs, _ = engine.reset(seed=0)
        n_actions = int(engine.single_action_space.n)
        if not policy:
            actions = _RandomActions(n_actions, num_envs)

            def step() -> None:
                engine.step(actions())

            return time_frames_per_s(step, FRAME_SKIP * num_envs, budget)

        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(0)
            from ds_robot.rl.policies import CNNActorCritic

            net = CNNActorCritic((FRAME_STACK, 84, 84), n_actions).eval()  # the policy ds-robot trains Atari with
            generator = torch.Generator().manual_seed(0)
            latest = [obs]

            def step_with_policy() -> None:
                with torch.inference_mode():
                    logits, _ = net.logits_and_value(torch.from_numpy(latest[0]).float())
                    chosen = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator)
                latest[0] = engine.step(chosen.squeeze(1).numpy())[0]

            return time_frames_per_s(step_with_policy, FRAME_SKIP * num_envs, budget)
        finally:
            torch.set_num_threads(threads)


def random_policy(params: dict, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Collect-mode policy: uniform random actions (``params["n_actions"]``)."""
    return rng.integers(0, params["n_actions"], size=len(obs))


_WORKER_NET: dict[str, Any] = {}


def cnn_policy(params: dict, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Collect-mode policy: the CNN actor-critic, rebuilt in the worker when new weights arrive."""
    import torch

    from ds_robot.rl.policies import CNNActorCritic

    if _WORKER_NET.get("params") is not params:
        torch.set_num_threads(1)
        net = CNNActorCritic((FRAME_STACK, SCREEN_SIZE, SCREEN_SIZE), int(params["n_actions"])).eval()
        net.load_state_dict({k: torch.from_numpy(v) for k, v in params["state_dict"].items()})
        _WORKER_NET.update(params=params, net=net)
    with torch.inference_mode():
        logits, _ = _WORKER_NET["net"].logits_and_value(torch.from_numpy(obs).float())
        probs = torch.softmax(logits, dim=1).numpy().astype(np.float64)
    cumulative = probs.cumsum(axis=1)
    draws = rng.random((len(obs), 1)) * cumulative[:, -1:]
    return np.minimum((cumulative < draws).sum(axis=1), probs.shape[1] - 1)


def _measure_collect(game: str, workers: int, envs_per_worker: int, budget: Budget, policy: bool) -> list[float]:
    from ds_robot.rollout import RolloutEngine

    with RolloutEngine(_factory(game), workers, envs_per_worker,
                       policy_fn=cnn_policy if policy else random_policy) as engine:
        engine.reset(seed=0)
        n_actions = int(engine.single_action_space.n)
        params: dict[str, Any] = {"n_actions": n_actions}
        if policy:
            import torch

            from ds_robot.rl.policies import CNNActorCritic

            torch.manual_seed(0)
            net = CNNActorCritic((FRAME_STACK, SCREEN_SIZE, SCREEN_SIZE), n_actions)
            params["state_dict"] = {k: v.numpy() for k, v in net.state_dict().items()}
        engine.broadcast(params, version=1)
        return time_frames_per_s(lambda: engine.collect(COLLECT_STEPS), FRAME_SKIP * engine.num_envs * COLLECT_STEPS,
                                 budget)


def _peer_threads(num_envs: int) -> int:
    return max(1, min(num_envs, os.cpu_count() or 1))


def _measure_ale_vector(game: str, num_envs: int, budget: Budget) -> list[float]:
    import ale_py

    if not hasattr(ale_py, "AtariVectorEnv"):
        raise ImportError(f"ale-py {ale_py.__version__} has no AtariVectorEnv (added in 0.11)")
    envs = ale_py.AtariVectorEnv(
        ale_rom_name(game), num_envs, num_threads=_peer_threads(num_envs), frameskip=FRAME_SKIP, maxpool=True,
        grayscale=True, img_height=SCREEN_SIZE, img_width=SCREEN_SIZE, stack_num=FRAME_STACK, noop_max=NOOP_MAX,
        repeat_action_probability=STICKY_ACTIONS, episodic_life=False, use_fire_reset=False, reward_clipping=False,
        max_num_frames_per_episode=MAX_EPISODE_FRAMES)
    try:
        envs.reset(seed=0)
        actions = _RandomActions(int(envs.single_action_space.n), num_envs)
        return time_frames_per_s(lambda: envs.step(actions()), FRAME_SKIP * num_envs, budget)
    finally:
        envs.close()


def _measure_envpool(game: str, num_envs: int, budget: Budget) -> list[float]:
    import envpool

    envs = envpool.make(
        f"{game}-v5", env_type="gymnasium", num_envs=num_envs, batch_size=num_envs,
        num_threads=_peer_threads(num_envs), seed=0, frame_skip=FRAME_SKIP, img_height=SCREEN_SIZE,
        img_width=SCREEN_SIZE, gray_scale=True, use_inter_area_resize=True, stack_num=FRAME_STACK,
        noop_max=NOOP_MAX, repeat_action_probability=STICKY_ACTIONS, episodic_life=False, use_fire_reset=False,
        reward_clip=False, max_episode_steps=MAX_EPISODE_FRAMES // FRAME_SKIP)
    try:
        envs.reset()
        actions = _RandomActions(int(envs.action_space.n), num_envs)
        return time_frames_per_s(lambda: envs.step(actions()), FRAME_SKIP * num_envs, budget)
    finally:
        envs.close()


def _measure_gym_async(game: str, num_envs: int, budget: Budget) -> list[float]:
    import gymnasium as gym

    envs = gym.vector.AsyncVectorEnv([_factory(game)] * num_envs, shared_memory=True)
    try:
        envs.reset(seed=0)
        actions = _RandomActions(int(envs.single_action_space.n), num_envs)
        return time_frames_per_s(lambda: envs.step(actions()), FRAME_SKIP * num_envs, budget)
    finally:
        envs.close()


_PEER_RUNNERS: dict[str, Callable[[str, int, Budget], list[float]]] = {
    "ale_vector": _measure_ale_vector,
    "envpool": _measure_envpool,
    "gym_async": _measure_gym_async,
}


# -- the benchmark --------------------------------------------------------------------------


def _row(name: str, kind: str, rates: list[float], num_envs: int, workers: int, **extra: Any) -> dict[str, Any]:
    mean, ci = mean_ci95(rates)
    return {"name": name, "kind": kind, "frames_per_s": mean, "frames_per_s_ci95": list(ci),
            "env_steps_per_s": mean / FRAME_SKIP, "num_envs": num_envs, "workers": workers,
            "samples_frames_per_s": rates, **extra}


def run_atari_benchmark(quick: bool, json_path: str | Path | None, plot_path: str | Path | None = None,
                        repeats: int = 3, game: str = "Pong") -> int:
    """Measure every variant and peer (module docstring), print the table and verdict, write JSON/PNG."""
    make_atari_env(game).close()  # fail early, with the env's own message, on a missing ale-py or unknown game
    layouts = QUICK_LAYOUTS if quick else FULL_LAYOUTS
    budget = Budget(warmup_s=0.3, measure_s=0.5, repeats=min(repeats, 2)) if quick else \
        Budget(warmup_s=1.5, measure_s=4.0, repeats=repeats)
    total = len(layouts) + 4 + len(PEERS)
    print(f"bench atari: {game}, {len(layouts)} ds-robot layouts + policy + single + {len(PEERS)} peers; "
          f"{budget.repeats} x {budget.measure_s:g} s per variant after {budget.warmup_s:g} s warm-up")

    def announce(n: int, name: str) -> None:
        print(f"  [{n}/{total}] {name}", flush=True)

    results: list[dict[str, Any]] = []
    announce(1, "single")
    single_rates = _measure_single(game, budget)
    results.append(_row("single", "baseline", single_rates, num_envs=1, workers=1, envs_per_worker=1))
    for n, (workers, envs_per_worker) in enumerate(layouts, start=2):
        name = f"ds_robot_w{workers}_e{envs_per_worker}"
        announce(n, name)
        rates = _measure_engine(game, workers, envs_per_worker, budget, policy=False)
        results.append(_row(name, "ds_robot", rates, num_envs=workers * envs_per_worker, workers=workers,
                            envs_per_worker=envs_per_worker))
    best = max((r for r in results if r["kind"] == "ds_robot"), key=lambda r: r["frames_per_s"])  # step mode
    num_envs = best["num_envs"]
    n = len(layouts) + 2
    for peer in PEERS:
        announce(n, f"{peer} ({num_envs} envs)")
        n += 1
        try:
            rates = _PEER_RUNNERS[peer](game, num_envs, budget)
        except ImportError as exc:
            results.append({"name": peer, "kind": "peer", "missing": True, "num_envs": num_envs,
                            "reason": f"not installed: {exc}"})
            continue
        except Exception as exc:  # an installed peer that fails is reported, and the others still run
            results.append({"name": peer, "kind": "peer", "failed": True, "num_envs": num_envs,
                            "reason": f"{type(exc).__name__}: {exc}"})
            continue
        workers = num_envs if peer == "gym_async" else _peer_threads(num_envs)
        results.append(_row(peer, "peer", rates, num_envs=num_envs, workers=workers))
    policy_name = f"{best['name']}_policy"
    announce(n, policy_name)
    rates = _measure_engine(game, best["workers"], best["envs_per_worker"], budget, policy=True)
    results.append(_row(policy_name, "ds_robot_policy", rates, num_envs=num_envs, workers=best["workers"],
                        envs_per_worker=best["envs_per_worker"]))
    for policy in (False, True):
        n += 1
        name = f"{best['name']}_collect{'_policy' if policy else ''}"
        announce(n, name)
        rates = _measure_collect(game, best["workers"], best["envs_per_worker"], budget, policy)
        results.append(_row(name, "ds_robot_policy" if policy else "ds_robot_collect", rates, num_envs=num_envs,
                            workers=best["workers"], envs_per_worker=best["envs_per_worker"]))

    single = results[0]["frames_per_s"]
    for row in results:
        if _measured(row):
            row["speedup_vs_single"] = row["frames_per_s"] / single

    _print_table(results)
    for line in verdict(results):
        print(line)
    if json_path:
        config = {"game": game, "env_id": f"ALE/{game}-v5", "frame_skip": FRAME_SKIP, "screen_size": SCREEN_SIZE,
                  "frame_stack": FRAME_STACK, "noop_max": NOOP_MAX, "repeat_action_probability": STICKY_ACTIONS,
                  "max_episode_frames": MAX_EPISODE_FRAMES, "episodic_life": False, "fire_reset": False,
                  "actions": "uniform random", "layouts": [list(layout) for layout in layouts],
                  "best_layout": best["name"], "policy": "Nature-DQN CNN, random weights, 1 torch thread",
                  "collect_steps": COLLECT_STEPS,
                  "warmup_s": budget.warmup_s, "measure_s": budget.measure_s, "repeats": budget.repeats,
                  "quick": quick, "verdict": verdict(results)}
        write_json(json_path, "atari", config, results)
        print(f"wrote {json_path}")
    if plot_path:
        plot_results(plot_path, results, game)
        print(f"wrote {plot_path}")
    return 0


def _measured(row: dict[str, Any]) -> bool:
    return not (row.get("missing") or row.get("failed"))


def _print_table(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        if not _measured(r):
            rows.append([r["name"], "missing" if r.get("missing") else "failed", "-", r["num_envs"], "-", "-"])
            continue
        lo, hi = r["frames_per_s_ci95"]
        ci = f"± {(hi - lo) / 2:,.0f}" if math.isfinite(lo) else "-"
        rows.append([r["name"], r["frames_per_s"], ci, r["num_envs"], r["workers"], f"{r['speedup_vs_single']:.2f}"])
    print(format_table(["variant", "frames/s", "95% CI", "envs", "workers", "x single"], rows))


def verdict(results: list[dict[str, Any]]) -> list[str]:
    """The honest summary: ds-robot vs the best peer, 1 -> 2 worker scaling, and the seed's claim."""
    measured = [r for r in results if _measured(r)]
    single = next(r for r in measured if r["name"] == "single")["frames_per_s"]
    ours = [r for r in measured if r["kind"] in ("ds_robot", "ds_robot_collect")]  # environment only
    best = max(ours, key=lambda r: r["frames_per_s"])
    lines = []
    peers = [r for r in measured if r["kind"] == "peer"]
    if peers:
        peer = max(peers, key=lambda r: r["frames_per_s"])
        ratio = best["frames_per_s"] / peer["frames_per_s"]
        lines.append(f"best ds-robot {best['name']} {best['frames_per_s']:,.0f} frames/s vs best peer {peer['name']} "
                     f"{peer['frames_per_s']:,.0f} frames/s: {ratio:.3f}x (goal >= {GOAL_RATIO}x: "
                     f"{'met' if ratio >= GOAL_RATIO else 'not met'})")
    else:
        lines.append("no peer installed: nothing to compare against")

    def best_with(workers: int) -> dict[str, Any] | None:
        rows = [r for r in ours if r["workers"] == workers]
        return max(rows, key=lambda r: r["frames_per_s"]) if rows else None

    cores = os.cpu_count() or 1
    one, two, four = best_with(1), best_with(2), best_with(4)
    if one and two:
        lines.append(f"scaling 1 -> 2 workers: {one['frames_per_s']:,.0f} -> {two['frames_per_s']:,.0f} frames/s = "
                     f"{two['frames_per_s'] / one['frames_per_s']:.2f}x ({one['name']} -> {two['name']}, "
                     f"{cores} cores)")
    if four:
        speedup = four["frames_per_s"] / single
        holds = four["frames_per_s"] >= SEED_CLAIM_FRAMES_PER_S and speedup >= SEED_CLAIM_SPEEDUP
        lines.append(f"seed claim '2,400 frames/s with 4 workers, 6.8x one process': {four['name']} gives "
                     f"{four['frames_per_s']:,.0f} frames/s = {speedup:.1f}x one process ({single:,.0f} frames/s): "
                     f"{'holds' if holds else 'does not hold as stated'}; on {cores} cores the speedup is bounded "
                     f"near {cores}x, and the throughput part depends on the game and the machine")
    else:
        lines.append("seed claim '2,400 frames/s with 4 workers, 6.8x one process': not measured (no 4-worker layout "
                     "in this run; the full run has them)")
    return lines


def plot_results(path: str | Path, results: list[dict[str, Any]], game: str) -> None:
    """Bars of frames/s (95% CI) for every variant and peer, and frames/s against workers per layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in results if _measured(r)]
    colors = {"baseline": "#8C8C8C", "ds_robot": "#4C72B0", "ds_robot_collect": "#64B5CD", "ds_robot_policy": "#55A868",
              "peer": "#DD8452"}
    fig, (bars, scaling) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    means = np.array([r["frames_per_s"] for r in measured])
    errors = np.array([[r["frames_per_s"] - r["frames_per_s_ci95"][0], r["frames_per_s_ci95"][1] - r["frames_per_s"]]
                       for r in measured]).T
    errors = np.where(np.isfinite(errors), errors, 0.0)
    y = np.arange(len(measured))
    bars.barh(y, means, xerr=errors, color=[colors[r["kind"]] for r in measured], capsize=3)
    bars.set_yticks(y, [f"{r['name']} ({r['num_envs']} envs)" for r in measured])
    bars.invert_yaxis()
    bars.set_xlabel("frames/s (frame skip 4 counted), mean and 95% CI")
    bars.set_title(f"{game}: throughput, random actions, preprocessing included")

    ours = [r for r in measured if r["kind"] == "ds_robot"]
    for envs_per_worker in sorted({r["envs_per_worker"] for r in ours}):
        line = sorted((r for r in ours if r["envs_per_worker"] == envs_per_worker), key=lambda r: r["workers"])
        scaling.plot([r["workers"] for r in line], [r["frames_per_s"] for r in line], marker="o",
                     label=f"{envs_per_worker} envs/worker")
    scaling.axhline(measured[0]["frames_per_s"], color=colors["baseline"], linestyle="--", label="single")
    for peer in (r for r in measured if r["kind"] == "peer"):
        scaling.axhline(peer["frames_per_s"], color=colors["peer"], linestyle=":", linewidth=1)
        scaling.annotate(peer["name"], (1, peer["frames_per_s"]), fontsize=8, color=colors["peer"])
    scaling.set_ylim(bottom=0)
    scaling.set_xlabel("worker processes")
    scaling.set_ylabel("frames/s")
    scaling.set_xticks(sorted({r["workers"] for r in ours}))
    scaling.set_title(f"RolloutEngine scaling ({os.cpu_count()} cores)")
    scaling.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
