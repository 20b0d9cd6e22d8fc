"""Entry points behind ``ds-robot train a2c|ppo|sac`` and ``ds-robot eval a2c|ppo|sac``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.rl.checkpoint import load_checkpoint
from ds_robot.rl.common import RunDir, evaluate, train_in_run
from ds_robot.stats import mean_ci95


def algorithms() -> dict:
    from ds_robot.rl.a2c import A2C, A2CConfig
    from ds_robot.rl.ppo import PPO, PPOConfig
    from ds_robot.rl.sac import SAC, SACConfig

    return {"a2c": (A2C, A2CConfig), "ppo": (PPO, PPOConfig), "sac": (SAC, SACConfig)}


def atari_defaults(algo: str) -> dict:
    """Settings for Atari frames (Nature CNN; PPO as in Schulman et al. 2017, Table 5)."""
    if algo == "ppo":
        return {"policy": "cnn", "n_envs": 8, "n_steps": 128, "n_epochs": 4, "minibatch_size": 256,
                "learning_rate": 2.5e-4, "clip_range": 0.1, "ent_coef": 0.01}
    return {"policy": "cnn", "n_envs": 16, "n_steps": 5}


def build_config(algo: str, overrides: dict):
    """The algorithm's config with ``overrides`` applied (None means: keep the default)."""
    _, config_cls = algorithms()[algo]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"{algo} has no setting {', '.join(unknown)}")
    return config_cls(**overrides)


def train(algo: str, out: str | Path, resume: bool, progress: bool = True, budget_s: float | None = None,
          **overrides):
    agent_cls, _ = algorithms()[algo]
    run = RunDir(Path(out))
    if run.checkpoint.exists() and not resume:
        raise ConfigError(f"{run.checkpoint} already exists: pass --resume to continue that run, "
                          "or choose another --out")
    if algo in ("a2c", "ppo") and str(overrides.get("env_id", "")).startswith("ALE/"):
        overrides = {**atari_defaults(algo), **{k: v for k, v in overrides.items() if v is not None}}
    config = build_config(algo, overrides)
    if resume and run.checkpoint.exists():
        saved = load_checkpoint(run.checkpoint, {"algo": algo})
        # The run continues with its own settings; only the step budget may grow (and a longer
        # budget stretches the learning-rate decay from here on).
        budget = overrides.get("total_steps") or saved["config"]["total_steps"]
        if budget <= saved["steps"]:
            raise ConfigError(f"{run.checkpoint} is already at step {saved['steps']:,}; "
                              f"give --steps above that to train further")
        config = dataclasses.replace(build_config(algo, saved["config"]), total_steps=budget)
    agent = agent_cls(config, out=out)
    result = train_in_run(agent, run, resume, lambda: agent.train(progress=progress, budget_s=budget_s))
    return agent, result


def evaluate_checkpoint(checkpoint: str | Path, episodes: int, seed: int, env_id: str | None = None,
                        algo: str | None = None) -> dict:
    payload = load_checkpoint(checkpoint)
    saved_algo = payload.get("algo")
    if algo is not None and algo != saved_algo:
        raise ConfigError(f"{checkpoint} holds a {saved_algo} policy, not {algo}")
    agent_cls, _ = algorithms()[saved_algo]
    config = build_config(saved_algo, {**payload["config"], "n_envs": 1})
    if env_id is not None and env_id != config.env_id:
        raise ConfigError(f"{checkpoint} was trained on {config.env_id}; evaluating it on {env_id} is not supported")
    agent = agent_cls(config)
    agent.load(checkpoint, weights_only=True)
    returns = evaluate(lambda obs: agent.act(obs, deterministic=True), config.env_id, episodes, seed)
    agent.close()
    mean, ci = mean_ci95(returns)
    return {"name": saved_algo, "env": config.env_id, "episodes": episodes, "return_mean": mean,
            "return_mean_ci95": list(ci), "return_min": float(np.min(returns)), "return_max": float(np.max(returns)),
            "trained_steps": int(payload["steps"])}
