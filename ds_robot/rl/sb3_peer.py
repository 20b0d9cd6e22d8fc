"""``ds-robot train sb3-sac``: the Stable-Baselines3 SAC peer on the flat Cartesian grasp env.

What an RL user would try first: SB3's ``SAC("MlpPolicy")`` with its defaults (one env, a
1M-transition replay buffer, ``learning_starts=100``, auto-tuned entropy) on
``ds_robot/UR5GraspCartesian-v0`` (the realistic task's training objects), under the same
wall-clock budget as the hierarchical controller's training. The run directory holds
``model.zip`` (the policy ``bench grasp`` runs as ``sb3_sac``), ``replay.pkl`` (for resume) and
``progress.csv``; both are rewritten every ``checkpoint_every_s`` and at the end, so a stop
loses at most that much; ``--resume`` continues from them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ds_robot.errors import ConfigError

SB3_ENV_ID = "ds_robot/UR5GraspCartesian-v0"


def train_sb3_sac(out: str | Path, budget_s: float, seed: int = 0, resume: bool = False,
                  checkpoint_every_s: float = 300.0, progress: bool = True, task: str = "realistic") -> dict:
    try:
        import gymnasium as gym
        import torch
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as exc:
        raise ConfigError("train sb3-sac needs stable-baselines3 and torch: pip install 'ds-robot[train,bench]'") from exc
    if budget_s <= 0 or checkpoint_every_s <= 0:
        raise ConfigError(f"train sb3-sac: budget and checkpoint period must be > 0, got {budget_s}, {checkpoint_every_s}")
    import ds_robot  # noqa: F401  (registers the env)

    out = Path(out)
    model_path, replay_path, csv = out / "model.zip", out / "replay.pkl", out / "progress.csv"
    if model_path.exists() and not resume:
        raise ConfigError(f"{model_path} already exists: pass --resume to continue that run, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    from tqdm import tqdm

    env = gym.make(SB3_ENV_ID, task=task)
    if resume and model_path.exists():
        model = SAC.load(model_path, env=env, device="cpu")
        if replay_path.exists():
            model.load_replay_buffer(replay_path)
        spent = float(np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)[-1, 1]) if csv.exists() else 0.0
    else:
        model = SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
        spent = 0.0
        csv.write_text("steps,seconds,episodes,success_rate\n")

    class Budget(BaseCallback):
        def __init__(self):
            super().__init__()
            self.start = time.monotonic()
            self.saved = self.start
            self.successes: list[bool] = []
            self.episodes = 0
            self.bar = tqdm(total=int(budget_s), initial=int(spent), unit="s", desc="train sb3-sac", disable=not progress)

        def _seconds(self) -> float:
            return spent + time.monotonic() - self.start

        def save(self) -> None:
            model.save(model_path)
            model.save_replay_buffer(replay_path)
            recent = self.successes[-50:]
            with csv.open("a") as f:
                f.write(f"{model.num_timesteps},{self._seconds():.1f},{self.episodes},"
                        f"{np.mean(recent) if recent else float('nan'):.4f}\n")
            self.saved = time.monotonic()

        def _on_step(self) -> bool:
            for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
                if done:
                    self.episodes += 1
                    self.successes.append(bool(info.get("success", False)))
            if time.monotonic() - self.saved >= checkpoint_every_s:
                self.save()
            seconds = self._seconds()
            if int(seconds) > self.bar.n:
                self.bar.update(int(seconds) - self.bar.n)
                recent = self.successes[-50:]
                self.bar.set_postfix(steps=model.num_timesteps, success=f"{np.mean(recent):.2f}" if recent else "-")
            return seconds < budget_s

    callback = Budget()
    model.learn(total_timesteps=10**9, callback=callback, reset_num_timesteps=not resume)
    callback.save()
    callback.bar.close()
    env.close()
    recent = callback.successes[-50:]
    return {"steps": int(model.num_timesteps), "seconds": callback._seconds(), "episodes": callback.episodes,
            "success_rate_last_50": float(np.mean(recent)) if recent else float("nan"), "model": str(model_path)}
