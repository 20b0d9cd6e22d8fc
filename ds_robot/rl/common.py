"""Pieces every algorithm shares: vector envs, evaluation, seeding, the run directory."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ds_robot.errors import ConfigError
from ds_robot.rollout import EnvFactory, RolloutEngine


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def make_env(env_id: str, **kwargs) -> gym.Env:
    return env_factory(env_id)() if env_id.startswith("ALE/") else EnvFactory(env_id, kwargs)()


def env_factory(env_id: str, wrappers=()):
    """A picklable env factory; Atari ids (``ALE/<Game>-v5``) get the standard preprocessing
    (frame skip 4 with max-pooling, 84x84 grayscale, 4 stacked frames, no-op starts)."""
    if env_id.startswith("ALE/"):
        from ds_robot.envs.atari import AtariEnvFactory

        if wrappers:
            raise ConfigError("extra wrappers are not supported on the preprocessed Atari envs")
        return AtariEnvFactory(env_id)
    return EnvFactory(env_id, wrappers=tuple(wrappers))


def make_vector_env(env_id: str, n_envs: int, seed: int, wrappers=(), workers: int = 0, backend: str = "local",
                    address: str | None = None) -> gym.vector.VectorEnv:
    """A vector env with same-step autoreset: an episode's last observation is in
    ``info["final_obs"]`` and the returned observation is already the next episode's first.

    ``workers = 0`` steps the envs in this process (``SyncVectorEnv``); ``workers = W`` spreads
    them over W processes of the rollout engine (``n_envs`` must divide evenly), or over W Ray
    actors with ``backend="ray"`` (a local Ray instance, or the cluster at ``address``). Env j is
    seeded with ``seed + j`` in every case, so all of them give the same trajectories.
    """
    factory = env_factory(env_id, wrappers)
    if workers < 0 or (workers and n_envs % workers):
        raise ConfigError(f"{n_envs} envs cannot be split evenly over {workers} workers")
    if backend == "ray":
        from ds_robot.rollout.ray_backend import RayRolloutEngine

        count = workers or 1
        envs = RayRolloutEngine(factory, num_workers=count, envs_per_worker=n_envs // count, address=address)
    elif backend != "local":
        raise ConfigError(f"unknown backend '{backend}': choose local or ray")
    elif workers:
        envs = RolloutEngine(factory, num_workers=workers, envs_per_worker=n_envs // workers)
    else:
        envs = gym.vector.SyncVectorEnv([factory] * n_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.reset(seed=seed)
    return envs


def evaluate(act, env_id: str, episodes: int, seed: int, max_steps: int = 100_000) -> np.ndarray:
    """Returns of ``episodes`` episodes run in parallel; ``act(obs_batch) -> action_batch``."""
    envs = gym.vector.SyncVectorEnv([lambda: make_env(env_id)] * episodes,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    for _ in range(max_steps):
        obs, reward, terminated, truncated, _ = envs.step(act(obs))
        returns += reward * running
        running &= ~(terminated | truncated)
        if not running.any():
            break
    envs.close()
    return returns


@dataclass
class RunDir:
    """``out/`` holds ``checkpoint.pt`` (latest), ``final.pt`` and ``tb/`` (TensorBoard)."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def final(self) -> Path:
        return self.root / "final.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def writer(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.tensorboard))


def train_in_run(agent, run: RunDir, resume: bool, train):
    """Resume ``agent`` from ``run``'s checkpoint when asked, then return ``train()``; Ctrl-C
    saves a checkpoint first (``--resume`` continues from it). The agent is closed either way."""
    try:
        if resume and run.checkpoint.exists():
            agent.load(run.checkpoint)
            print(f"resumed {run.checkpoint} at step {agent.steps:,}")
        return train()
    except KeyboardInterrupt:
        agent.save(run.checkpoint)
        print(f"\ninterrupted at step {agent.steps:,}; saved {run.checkpoint} (continue with --resume)")
        raise
    finally:
        agent.close()


def log_scalars(writer, stats: dict, step: int, prefix: str = "train/") -> None:
    if writer is not None:
        for key, value in stats.items():
            writer.add_scalar(prefix + key, value, step)


def flat_obs_dim(space: gym.Space) -> int:
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"this algorithm needs a Box observation space, the env has {space}")
    return int(np.prod(space.shape))
