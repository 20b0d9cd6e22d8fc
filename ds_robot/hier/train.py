"""``ds-robot train grasp``: the hierarchical controller, trained from scratch on the rollout engine.

Two learners share one stream of experience from ``HierGraspEnv`` (``n_envs`` envs over
``workers`` rollout-engine processes, step mode; or over ``workers`` Ray actors with
``backend="ray"``, on a local Ray instance or the cluster at ``ray_address``: env j is seeded
``seed + j`` either way, so both give the same trajectories):

- the **planner**: the value of each of the k grasp options, ``Q(s, o)``, regressed on every
  decision kept: the reward from the decision to the next one (without the skills' residual
  regulariser; undiscounted inside the episode) plus the best option's value there, or to the
  episode's end after the last (Q-learning over options; ``update_planner`` says why not the
  Monte-Carlo return or PPO), the mean of ``planner_heads`` independently initialised value
  networks; it explores with
  ``(1 - eps) softmax(Q / T) + eps / k`` and the exported policy's logits are ``Q / T`` (the run
  time takes the argmax). One decision per attempt: the first, and each re-plan after a missed
  grasp or an empty lifted hand;
- the three **skill policies** (PPO, clipped surrogate, GAE): diagonal-Gaussian residuals on
  the model-based torque, each trained on the steps where it was active, with advantages
  computed along the whole trajectory (each step's value from the active skill's critic).

The run directory holds ``checkpoint.pt`` (everything needed to resume, written every
``checkpoint_every_s`` and at the end), ``policy.npz`` (the NumPy runtime file, deterministic
actions), ``snapshots/policy_<seconds>s.npz`` every ``snapshot_every_s`` (for a
success-vs-wall-clock curve evaluated afterwards), ``progress.csv`` (training episodes:
success rate, energy, planner entropy against wall time) and ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from ds_robot.control.scripted import ScriptedConfig, valid_palm_clearance
from ds_robot.envs.presets import load_task
from ds_robot.errors import ConfigError
from ds_robot.hier.env import ENERGY_WEIGHT, RESIDUAL_WEIGHT
from ds_robot.hier.features import (
    GRIPPER_SCALE,
    HIER_ACTION_SIZE,
    HIER_OBS_SIZE,
    HIER_SLICES,
    PLANNER_FIELDS,
    RESIDUAL_SCALE,
    RESIDUAL_SIZE,
    SKILLS,
    H,
    available_options,
    feature_scale,
    skill_of,
)
from ds_robot.hier.options import DEFAULT_OPTIONS, MAX_OPTIONS, options_from_list, options_to_list
from ds_robot.hier.policy import HierPolicy, NumpyMLP, mean_mlp
from ds_robot.rl.amp import DynamicLossScaler, optimize_step
from ds_robot.rl.checkpoint import load_checkpoint, save_checkpoint
from ds_robot.rl.common import RunDir, log_scalars, seed_everything, train_in_run
from ds_robot.rl.loop import Iteration, TimeCheckpoints, train_loop
from ds_robot.rl.networks import mlp
from ds_robot.rl.onpolicy import Rollout, returns_and_advantages
from ds_robot.rl.policies import MLPActorCritic
from ds_robot.rl.ppo import clipped_surrogate
from ds_robot.rollout import EnvFactory, RolloutEngine

HIER_ENV_ID = "ds_robot/UR5GraspHier-v0"


@dataclass(frozen=True)
class HierTrainConfig:
    seed: int = 0
    workers: int = 2
    envs_per_worker: int = 8
    backend: str = "local"  # local: rollout-engine processes; ray: Ray actors (one machine or a cluster)
    ray_address: str | None = None  # None: a local Ray instance; "auto" or "HOST:PORT": a cluster
    n_steps: int = 64
    gamma: float = 0.99
    gae_lambda: float = 0.95
    skill_lr: float = 3e-4
    skill_epochs: int = 4
    skill_minibatch: int = 512
    clip_range: float = 0.2
    log_std_init: float = -1.0
    planner_lr: float = 1e-3
    planner_weight_decay: float = 0.01  # AdamW: ~10k noisy returns otherwise overfit into spiky option values
    planner_temperature: float = 0.1  # behaviour: softmax(Q / T) mixed with epsilon uniform
    planner_epsilon: float = 0.1
    planner_batch: int = 16  # new decisions per planner update (~one update every 10 s on 2 cores)
    planner_steps: int = 128  # minibatch steps per update, over the kept decisions
    planner_minibatch: int = 128
    planner_buffer: int = 20_000  # the most recent decisions kept
    # the option values' regression target (update_planner): "q", the reward to the next decision
    # plus the best option's value there (Q-learning over options); "mc", the return to the
    # episode's end under the exploring policy (runs before round 6)
    planner_target: str = "q"
    # independently initialised value networks trained on the same decisions (each its own
    # minibatches); the planner's value is their mean (a deep ensemble: update_planner says why
    # and what it measured)
    planner_heads: int = 1
    # clamp the bootstrapped next-decision value to the returns kept (update_planner); False: the
    # round-7 target, for the ablation
    planner_value_clamp: bool = True
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    amp: bool = False  # bf16 autocast with the dynamic loss scaler (rl.amp), as the other trainers
    torque_features: bool = True
    randomize_physics: bool = False  # domain randomisation: the caller's randomized world, new physics every episode
    task: str = "realistic"  # the task preset (sim/tasks/), its training object set unless ``objects``
    objects: str | None = None
    # the task's training_variation (sim/tasks/): each training episode's object varied in mass,
    # friction and fragility, so that its looks do not identify it (False: the set as listed)
    object_variation: bool = True
    options: tuple = tuple(tuple(o) for o in options_to_list(DEFAULT_OPTIONS))
    # what the planner decides from (hier.features: HIER_FIELDS names; the rest has input scale 0)
    planner_fields: tuple = PLANNER_FIELDS
    # reward charged when a failed grasp starts a new attempt (hier.env): without it a 12 N grip
    # that slips and is recovered by a full-force re-grasp scores nearly as well as the full grip
    attempt_penalty: float = 0.3
    # False: a probe starts only with an empty hand (hier.features.available_options), in
    # exploration, in the value target's max and at run time; True: the runs before round 9
    probe_in_hand: bool = False
    # False: the skills' residual is off during a probe (hier.features.residual_acts), in training
    # and at run time; True: the runs before round 9
    probe_residual: bool = False
    # the machine's palm clearance over the object's top (control.scripted.ScriptedConfig), in
    # training and at run time; None: the grasp at the object's centre, the runs before round 10
    palm_clearance_m: float | None = ScriptedConfig.palm_clearance_m
    # the planner's initiation sets after a slip and for the jaws' opening
    # (hier.features.available_options), in exploration, in the value target's max and at run
    # time (the exported file's keys); False: the runs before round 14
    escalate_after_slip: bool = False
    jaw_fit: bool = False
    # reward per joule of arm work (hier.env.ENERGY_WEIGHT says why it is not larger)
    energy_weight: float = ENERGY_WEIGHT
    # a policy file whose planner chooses every option, greedily and frozen: only the skills learn,
    # on top of a planner that is already trained (the shipped one, say), so that what they learn
    # is not confounded by options that change under them; None: both learn (rounds 1-12)
    planner_from: str | None = None
    # reward per step of -mean(tracking^2) (hier.env): a dense signal for the skills' job of making
    # the arm follow the machine's joint targets when the model under the computed torque is
    # wrong; the planner's return leaves it out, as the residual regulariser; 0: none (rounds 1-12)
    tracking_weight: float = 0.0
    total_steps: int = 50_000_000
    checkpoint_every_s: float = 120.0
    snapshot_every_s: float = 300.0

    def __post_init__(self):
        checks = {"workers": self.workers >= 0, "envs_per_worker": self.envs_per_worker >= 1,
                  "n_steps": self.n_steps >= 1, "gamma": 0 <= self.gamma <= 1, "gae_lambda": 0 <= self.gae_lambda <= 1,
                  "skill_lr": self.skill_lr > 0, "planner_lr": self.planner_lr > 0,
                  "planner_weight_decay": self.planner_weight_decay >= 0,
                  "attempt_penalty": math.isfinite(self.attempt_penalty) and self.attempt_penalty >= 0,
                  "energy_weight": math.isfinite(self.energy_weight) and self.energy_weight >= 0,
                  "tracking_weight": math.isfinite(self.tracking_weight) and self.tracking_weight >= 0,
                  "palm_clearance_m": valid_palm_clearance(self.palm_clearance_m),
                  "skill_epochs": self.skill_epochs >= 1, "skill_minibatch": self.skill_minibatch >= 1,
                  "clip_range": 0 < self.clip_range < 1, "planner_batch": self.planner_batch >= 1,
                  "planner_steps": self.planner_steps >= 1,
                  "planner_heads": 1 <= self.planner_heads <= 32, "planner_minibatch": self.planner_minibatch >= 1,
                  "planner_buffer": self.planner_buffer >= self.planner_batch,
                  "planner_temperature": self.planner_temperature > 0, "planner_epsilon": 0 <= self.planner_epsilon < 1,
                  "total_steps": self.total_steps >= 1,
                  "checkpoint_every_s": self.checkpoint_every_s > 0, "snapshot_every_s": self.snapshot_every_s > 0,
                  "backend": self.backend in ("local", "ray"), "planner_target": self.planner_target in ("q", "mc")}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("train grasp: impossible value for " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad))
        if not 2 <= len(self.options) <= MAX_OPTIONS:
            raise ConfigError(f"train grasp: the planner needs 2 to {MAX_OPTIONS} options, got {len(self.options)}")
        options_from_list(self.options)
        unknown = [f for f in self.planner_fields if f not in HIER_SLICES]
        if unknown or not self.planner_fields:
            raise ConfigError(f"train grasp: planner_fields {list(self.planner_fields)}: choose from "
                              + ", ".join(HIER_SLICES))

    @property
    def n_envs(self) -> int:
        return max(self.workers, 1) * self.envs_per_worker


class Planner(nn.Module):
    """The value of each option, ``Q(s, o)``: the return expected from choosing ``o`` in ``s`` (and
    acting as the current policy does afterwards), the mean of ``heads`` independently
    initialised MLPs. Inputs are scaled by ``feature_scale`` first (the export folds the scales
    into the first layer: ``x diag(s) W = x (diag(s) W)``, and the heads into one wider MLP)."""

    def __init__(self, obs_dim: int, n_options: int, fields=PLANNER_FIELDS, heads: int = 1):
        super().__init__()
        self.heads = nn.ModuleList(mlp([obs_dim, 64, 64, n_options], out_gain=0.01) for _ in range(heads))
        self.register_buffer("scale", torch.as_tensor(feature_scale(fields)))

    def all_heads(self, obs: torch.Tensor) -> torch.Tensor:
        """Every head's values, ``(..., heads, options)``."""
        x = obs * self.scale
        return torch.stack([head(x) for head in self.heads], dim=-2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.all_heads(obs).mean(dim=-2)

    def behaviour(self, obs: torch.Tensor, temperature: float, epsilon: float,
                  available: torch.Tensor | None = None) -> Categorical:
        """The exploring policy: ``(1 - eps) softmax(Q / T) + eps / k``, over the ``available``
        options only where given (``(..., k)`` booleans)."""
        values = self(obs) / temperature
        if available is None:
            available = torch.ones_like(values, dtype=torch.bool)
        probs = torch.softmax(values.masked_fill(~available, -math.inf), dim=-1)
        uniform = available.float() / available.sum(dim=-1, keepdim=True)
        return Categorical(probs=(1 - epsilon) * probs + epsilon * uniform)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        # checkpoints from before the heads hold one network under "q."
        state = {("heads.0." + k[2:] if k.startswith("q.") else k): v for k, v in state.items()}
        return super().load_state_dict(state, strict=strict, assign=assign)


def _decision(d) -> tuple:
    """A kept decision ``(features, option, return to the end, reward to the next decision, next
    features or None)``; a 3-entry one (checkpoints before round 6) counts as the episode's last."""
    features, option, ret = np.asarray(d[0], np.float32), int(d[1]), float(d[2])
    if len(d) == 3:
        return features, option, ret, ret, None
    return features, option, ret, float(d[3]), None if d[4] is None else np.asarray(d[4], np.float32)


def _numpy_mlp(seq: nn.Sequential, input_scale: np.ndarray | None = None, output_scale: float = 1.0) -> NumpyMLP:
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().double().numpy().T.copy() for m in linears]
    biases = [m.bias.detach().double().numpy().copy() for m in linears]
    if input_scale is not None:
        weights[0] *= np.asarray(input_scale, dtype=np.float64)[:, None]
    weights[-1] *= output_scale
    biases[-1] *= output_scale
    return NumpyMLP(weights, biases)


def _ensemble_numpy_mlp(heads, input_scale: np.ndarray, output_scale: float = 1.0) -> NumpyMLP:
    """The mean of ``heads`` (same-shaped ``nn.Sequential`` MLPs) as one wider MLP
    (:func:`ds_robot.hier.policy.mean_mlp`). One head gives that head's MLP exactly."""
    return mean_mlp([_numpy_mlp(h, input_scale, output_scale) for h in heads])


class HierTrainer:
    """``randomized_world``: the backend factory a ``randomize_physics`` run trains in
    (``UR5GraspEnv``'s ``backend_factory``; the CLI passes the shifted-MuJoCo world of
    ``ds_robot.sim2real``, which this layer does not import)."""

    def __init__(self, config: HierTrainConfig, out: str | Path | None = None, randomized_world=None):
        self.config = cfg = config
        self.rng = seed_everything(cfg.seed)
        self.options = options_from_list(cfg.options)
        # before the envs start: a refused file leaves no worker processes behind
        self.frozen_planner = _frozen_planner(cfg) if cfg.planner_from is not None else None
        env_kwargs = {**load_task(cfg.task).env_kwargs("train", training=cfg.object_variation), "options": self.options,
                      "torque_features": cfg.torque_features, "attempt_penalty": cfg.attempt_penalty,
                      "energy_weight": cfg.energy_weight, "probe_residual": cfg.probe_residual,
                      "palm_clearance_m": cfg.palm_clearance_m, "tracking_weight": cfg.tracking_weight}
        if cfg.randomize_physics:
            if randomized_world is None:
                raise ConfigError("randomize_physics needs the world to randomise over: pass randomized_world "
                                  "(e.g. ds_robot.sim2real.worlds.ShiftedMuJoCoBackend)")
            env_kwargs["backend_factory"] = randomized_world
        # Recorded in checkpoints: a run resumes only in the world it was trained in.
        self.world = f"{randomized_world.__module__}.{randomized_world.__qualname__}" if cfg.randomize_physics else None
        if cfg.objects is not None:
            env_kwargs["objects"] = cfg.objects
        factory = EnvFactory(HIER_ENV_ID, env_kwargs)
        if cfg.backend == "ray":
            from ds_robot.rollout.ray_backend import RayRolloutEngine

            self.envs = RayRolloutEngine(factory, num_workers=max(cfg.workers, 1), envs_per_worker=cfg.envs_per_worker,
                                         address=cfg.ray_address)
        elif cfg.workers:
            self.envs = RolloutEngine(factory, num_workers=cfg.workers, envs_per_worker=cfg.envs_per_worker)
        else:
            self.envs = gym.vector.SyncVectorEnv([factory] * cfg.n_envs,
                                                 autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        box = gym.spaces.Box(-1.0, 1.0, shape=(RESIDUAL_SIZE,), dtype=np.float32)
        self.planner = Planner(HIER_OBS_SIZE, len(self.options), cfg.planner_fields, cfg.planner_heads)
        self.skills = nn.ModuleList(MLPActorCritic(HIER_OBS_SIZE, box) for _ in SKILLS)
        with torch.no_grad():
            for skill in self.skills:
                skill.log_std.fill_(cfg.log_std_init)
        self.planner_opt = torch.optim.AdamW(self.planner.parameters(), lr=cfg.planner_lr,
                                             weight_decay=cfg.planner_weight_decay)
        self.skill_opts = [torch.optim.Adam(s.parameters(), lr=cfg.skill_lr, eps=1e-5) for s in self.skills]
        self.planner_scaler = DynamicLossScaler(enabled=cfg.amp)
        self.skill_scalers = [DynamicLossScaler(enabled=cfg.amp) for _ in self.skills]
        self.run = RunDir(Path(out)) if out is not None else None
        self.writer = self.run.writer() if self.run is not None else None
        self.steps = 0
        self.wall_seconds = 0.0
        self.episodes = 0
        # decisions: (features, option, return to the episode's end, reward to the next decision,
        # the next decision's features or None at the episode's end)
        self.decision_buffer: list[tuple] = []
        self._reset_envs(cfg.seed)

    def _reset_envs(self, seed: int) -> None:
        n = self.config.n_envs
        self.obs, _ = self.envs.reset(seed=seed)
        self._return = np.zeros(n)  # running episode return, per env
        # per env: [features, option, return at the decision, next decision's features, return there]
        self._open: list[list[list]] = [[] for _ in range(n)]
        self.finished_decisions: list[tuple] = []  # as decision_buffer
        self.finished_episodes: list[dict] = []

    # -- acting --------------------------------------------------------------------------------

    def _act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample options (where due) and residuals; returns actions, skill ids, log-probs, values."""
        n = len(obs)
        obs_t = torch.as_tensor(obs)
        actions = np.zeros((n, HIER_ACTION_SIZE), np.float32)
        log_probs = np.zeros(n, np.float32)
        values = np.zeros(n, np.float32)
        skills = skill_of(obs)
        with torch.no_grad():
            due = np.flatnonzero(obs[:, H["decision"]] > 0.5)
            if len(due):
                cfg = self.config
                available = self._available(obs[due])
                if self.frozen_planner is not None:  # greedy, as at run time
                    chosen = np.argmax(np.where(available, self.frozen_planner(obs[due]), -np.inf), axis=1)
                else:
                    chosen = self.planner.behaviour(obs_t[due], cfg.planner_temperature, cfg.planner_epsilon,
                                                    torch.as_tensor(available)).sample().numpy()
                actions[due, 0] = chosen
                for i, option in zip(due, chosen, strict=True):
                    if self._open[i]:  # the previous decision's next one
                        self._open[i][-1][3:] = [obs[i].copy(), self._return[i]]
                    self._open[i].append([obs[i].copy(), int(option), self._return[i], None, None])
            for k, skill in enumerate(self.skills):
                rows = np.flatnonzero(skills == k)
                if len(rows):
                    dist, value = skill.dist_and_value(obs_t[rows])
                    sample = dist.sample()
                    actions[rows, 1:] = sample.numpy()
                    log_probs[rows] = dist.log_prob(sample).sum(-1).numpy()
                    values[rows] = value.numpy()
        return actions, skills, log_probs, values

    def _values(self, obs: np.ndarray) -> np.ndarray:
        skills = skill_of(obs)
        out = np.zeros(len(obs), np.float32)
        with torch.no_grad():
            for k, skill in enumerate(self.skills):
                rows = np.flatnonzero(skills == k)
                if len(rows):
                    out[rows] = skill.dist_and_value(torch.as_tensor(obs[rows]))[1].numpy()
        return out

    def collect(self) -> dict[str, np.ndarray]:
        cfg = self.config
        t_max, n = cfg.n_steps, cfg.n_envs
        batch = {"obs": np.zeros((t_max, n, HIER_OBS_SIZE), np.float32), "actions": np.zeros((t_max, n, RESIDUAL_SIZE), np.float32),
                 "skills": np.zeros((t_max, n), np.int64), "log_probs": np.zeros((t_max, n), np.float32),
                 "values": np.zeros((t_max, n), np.float32), "rewards": np.zeros((t_max, n), np.float32),
                 "dones": np.zeros((t_max, n), np.float32)}
        for t in range(t_max):
            actions, skills, log_probs, values = self._act(self.obs)
            next_obs, reward, terminated, truncated, infos = self.envs.step(actions)
            done = terminated | truncated
            # the planner's return: the task's reward without the skills' residual regulariser, whose
            # exploration noise (~1.6 over an episode) would swamp the options' differences, and
            # without their tracking term
            self._return += (reward + RESIDUAL_WEIGHT * np.mean(actions[:, 1:].astype(np.float64) ** 2, axis=1)
                             + _info_array(infos, "tracking_cost", n))
            batch["obs"][t], batch["actions"][t], batch["skills"][t] = self.obs, actions[:, 1:], skills
            batch["log_probs"][t], batch["values"][t], batch["rewards"][t], batch["dones"][t] = (
                log_probs, values, reward, done)
            for i in np.flatnonzero(done):
                final = _final_info(infos, i)
                end = self._return[i]
                for features, option, at, following, at_next in self._open[i]:
                    self.finished_decisions.append((features, option, float(end - at),
                                                    float((end if following is None else at_next) - at), following))
                self.finished_episodes.append({"success": bool(final.get("success", False)),
                                               "energy_j": float(final.get("energy_j", math.nan)),
                                               "attempts": int(final.get("attempts", 0)),
                                               "options": [d[1] for d in self._open[i]]})
                self._open[i] = []
                self._return[i] = 0.0
            self.obs = next_obs
        self.steps += t_max * n
        batch["last_values"] = self._values(self.obs)
        return batch

    # -- learning ------------------------------------------------------------------------------

    def update_skills(self, batch: dict[str, np.ndarray]) -> dict:
        """PPO on each skill's own steps; advantages by GAE along the whole trajectory (the RL
        core's ``returns_and_advantages`` and ``clipped_surrogate``, steps through ``optimize_step``)."""
        cfg = self.config
        rollout = Rollout(obs=batch["obs"], actions=batch["actions"], log_probs=batch["log_probs"],
                          rewards=batch["rewards"], dones=batch["dones"], values=batch["values"])
        returns, adv, _ = returns_and_advantages(rollout, batch["last_values"], cfg.gamma, cfg.gae_lambda)
        flat = {k: torch.as_tensor(v.reshape(-1, *v.shape[2:])) for k, v in
                {"obs": batch["obs"], "actions": batch["actions"], "log_probs": batch["log_probs"],
                 "adv": adv, "returns": returns}.items()}
        skills = batch["skills"].reshape(-1)
        stats = {}
        for k, (skill, opt, scaler) in enumerate(zip(self.skills, self.skill_opts, self.skill_scalers, strict=True)):
            rows = np.flatnonzero(skills == k)
            if len(rows) < 2:
                continue
            params = list(skill.parameters())
            clip_fracs = []
            for _ in range(cfg.skill_epochs):
                order = self.rng.permutation(rows)
                for start in range(0, len(order), cfg.skill_minibatch):
                    idx = torch.as_tensor(order[start:start + cfg.skill_minibatch])
                    if len(idx) < 2:
                        continue
                    a = flat["adv"][idx]
                    a = (a - a.mean()) / (a.std() + 1e-8)

                    def loss_fn(skill=skill, idx=idx, a=a):
                        dist, value = skill.dist_and_value(flat["obs"][idx])
                        policy_loss, ratio, _ = clipped_surrogate(dist.log_prob(flat["actions"][idx]).sum(-1),
                                                                  flat["log_probs"][idx], a, cfg.clip_range)
                        loss = policy_loss + cfg.vf_coef * ((value - flat["returns"][idx]) ** 2).mean()
                        with torch.no_grad():
                            clip_fraction = float(((ratio - 1).abs() > cfg.clip_range).float().mean())
                        return loss, {"clip_fraction": clip_fraction}

                    clip_fracs.append(optimize_step(loss_fn, opt, params, scaler, cfg.max_grad_norm,
                                                    cfg.amp)["clip_fraction"])
            stats[f"skill_{SKILLS[k]}_clip_fraction"] = float(np.mean(clip_fracs)) if clip_fracs else 0.0
            stats[f"skill_{SKILLS[k]}_std"] = float(skill.log_std.detach().exp().mean())
        return stats

    def update_planner(self) -> dict:
        """Regress ``Q(s, o)`` on the targets of all decisions kept (``planner_buffer``, the most
        recent): ``planner_steps`` minibatch steps of ``(Q(s)[o] - y)^2`` each time
        ``planner_batch`` new decisions have finished, every step through ``optimize_step``.

        The target ``y`` (``planner_target``): ``"q"`` (default), the reward from the decision to
        the next one plus ``max_o' Q(s', o')`` there (the network as it stood at the start of this
        update, clamped to the returns seen; the reward to the episode's end after the last
        decision): Q-learning over the options, so a decision's value is what the greedy run-time planner will get after it, not
        what the exploring one got. With the Monte-Carlo return (``"mc"``, rounds 1-5), every
        decision before a probe's in-hand decision paid for that decision's exploration: 10%
        uniform choices there picked a full grip for a fragile object often enough that the
        probe looked worse than gripping a box hard at once, and the planner crushed unseen
        paper boxes (BENCHMARKS.md, issue 16 round 6).

        Why not PPO or A2C on the decisions (the first versions): an episode brings one to three
        decisions, ~1.7 a second on 2 cores, and on-policy updates use each once (A2C) or for a
        few epochs (PPO); four runs of those collapsed onto one option within minutes, the same
        for every object. Regressing option values on every decision kept, many times over, uses
        each many times.

        With ``planner_heads`` > 1 every head regresses on its own minibatches, toward the reward
        to the next decision plus its own value, there, of the option the ensemble's mean would
        choose (selection by the mean, evaluation by each head, as in double Q-learning); the
        planner's value is the heads' mean. One network's option values swing between episodes
        of the same object by more than the gap between its best two options
        (``bench.grasp.planner_value_spread``) and its training seed moved the test set by about 5
        points (rounds 6 and 7); independently
        initialised heads disagree where the decisions do not pin the values down, and their
        mean is steadier there (a deep ensemble, Lakshminarayanan et al. 2017). Measured: no
        better than one head (5 heads, seed 1: 0.925 / 0.967 on the training / test set against
        0.983 / 0.975; BENCHMARKS.md issue 16 round 8), so the default is 1.

        In the Q target, the next decision's value is clamped to the range of the returns kept:
        an option rarely tried in some state gets whatever value the network extrapolates there
        (the round-7 planner valued a gentle grip after weighing a 40 g box at -5.9, where no
        return is below about -1.5), and the max over options would carry it back."""
        cfg = self.config
        if self.frozen_planner is not None:  # planner_from: it does not learn
            self.finished_decisions = []
            return {}
        if len(self.finished_decisions) < cfg.planner_batch:
            return {}
        self.decision_buffer.extend(_decision(d) for d in self.finished_decisions)
        self.finished_decisions = []
        del self.decision_buffer[: max(0, len(self.decision_buffer) - cfg.planner_buffer)]
        buffer = self.decision_buffer
        features = torch.as_tensor(np.stack([d[0] for d in buffer]))
        options = torch.as_tensor([d[1] for d in buffer])
        returns = torch.as_tensor([d[2] for d in buffer], dtype=torch.float32)
        heads = len(self.planner.heads)
        to_next = returns if cfg.planner_target == "mc" else torch.as_tensor([d[3] for d in buffer], dtype=torch.float32)
        targets = to_next[:, None].repeat(1, heads)  # (decisions, heads)
        if cfg.planner_target == "q":
            later = [k for k, d in enumerate(buffer) if d[4] is not None]
            if later:
                with torch.no_grad():  # each head's value of the option the ensemble would choose there
                    nxt = np.stack([buffer[k][4] for k in later])
                    after = self.planner.all_heads(torch.as_tensor(nxt))
                    mean = after.mean(dim=1)
                    available = torch.as_tensor(self._available(nxt))
                    greedy = mean.masked_fill(~available, -math.inf).argmax(dim=1)
                    best = after.gather(2, greedy[:, None, None].expand(-1, heads, 1)).squeeze(2)
                    # no value beyond the returns seen: unvisited options' extrapolated values
                    # (+1.25 and -5.9 where a return lies in about [-1.5, 1]) would propagate back
                    if cfg.planner_value_clamp:
                        best = best.clamp(float(returns.min()), float(returns.max()))
                targets[torch.as_tensor(later)] += best
        params = list(self.planner.parameters())
        scaled = features * self.planner.scale
        stats: dict = {}
        for _ in range(cfg.planner_steps):
            # each head its own minibatch: the heads see the same decisions in different orders
            idx = torch.as_tensor(self.rng.integers(0, len(targets), (heads, min(cfg.planner_minibatch, len(targets)))))

            def loss_fn(idx=idx):
                loss = sum(((head(scaled[idx[k]]).gather(1, options[idx[k], None]).squeeze(1) - targets[idx[k], k]) ** 2).mean()
                           for k, head in enumerate(self.planner.heads))
                return loss, {"planner_q_error": loss.item() / heads}

            # the heads' gradients are independent: the norm bound grows as the root of their number
            stats = optimize_step(loss_fn, self.planner_opt, params, self.planner_scaler,
                                  cfg.max_grad_norm * math.sqrt(heads), cfg.amp)
        with torch.no_grad():
            recent = features[-cfg.planner_batch:]
            available = torch.as_tensor(self._available(recent.numpy()))
            entropy = self.planner.behaviour(recent, cfg.planner_temperature, cfg.planner_epsilon,
                                             available).entropy().mean()
        return {"planner_entropy": float(entropy), "planner_return": returns[-cfg.planner_batch:].mean().item(),
                "planner_q_error": stats["planner_q_error"], "planner_buffer": len(returns)}

    # -- the loop -----------------------------------------------------------------------------

    def train(self, budget_s: float | None = None, progress: bool = True) -> dict:
        cfg = self.config
        next_snapshot = (math.floor(self.wall_seconds / cfg.snapshot_every_s) + 1) * cfg.snapshot_every_s
        window: list[dict] = []
        planner_stats: dict = {}

        def iterate() -> Iteration:
            nonlocal planner_stats
            batch = self.collect()
            stats = self.update_skills(batch)
            planner_stats = self.update_planner() or planner_stats
            stats.update(planner_stats)
            return Iteration(stats)

        def after(step: Iteration) -> None:  # the loop has updated the wall time
            nonlocal window, next_snapshot
            window.extend(self.finished_episodes)
            self.episodes += len(self.finished_episodes)
            self.finished_episodes = []
            stats = step.stats
            if len(window) >= 2 * cfg.n_envs:
                stats.update(self._log_window(window))
                step.postfix = {"success": f"{stats['success_rate']:.3f}", "energy": f"{stats['energy_j']:.1f}",
                                "steps": f"{self.steps:,}"}
                window = []
            log_scalars(self.writer, stats, self.steps)
            if self.run is not None and self.wall_seconds >= next_snapshot:
                self.export().save(self.run.root / "snapshots" / f"policy_{round(self.wall_seconds):05d}s.npz")
                next_snapshot += cfg.snapshot_every_s

        result = train_loop(self, iterate, _HierCheckpoints(self, cfg.checkpoint_every_s), total_steps=cfg.total_steps,
                            desc="train grasp", progress=progress, budget_s=budget_s, after=after)
        return {"steps": self.steps, "seconds": result.seconds, "episodes": self.episodes}

    def _log_window(self, window: list[dict]) -> dict:
        success = float(np.mean([e["success"] for e in window]))
        energy = float(np.nanmean([e["energy_j"] for e in window]))
        counts = np.bincount([o for e in window for o in e["options"]], minlength=len(self.options))
        row = {"success_rate": success, "energy_j": energy,
               "attempts": float(np.mean([e["attempts"] for e in window])),
               "top_option": int(np.argmax(counts)), "top_option_share": float(counts.max() / max(counts.sum(), 1))}
        if self.run is not None:
            path = self.run.root / "progress.csv"
            new = not path.exists()
            with path.open("a") as f:
                if new:
                    f.write("steps,seconds,episodes,success_rate,energy_j,attempts,top_option,top_option_share\n")
                f.write(f"{self.steps},{self.wall_seconds:.1f},{len(window)},{success:.4f},{energy:.3f},"
                        f"{row['attempts']:.3f},{row['top_option']},{row['top_option_share']:.3f}\n")
        return row

    # -- export and checkpoints ----------------------------------------------------------------

    def _available(self, features: np.ndarray) -> np.ndarray:
        """The options each row may start (hier.features.available_options), with this run's sets."""
        cfg = self.config
        return available_options(features, self.options, cfg.probe_in_hand, cfg.escalate_after_slip, cfg.jaw_fit)

    def export(self, meta: dict | None = None) -> HierPolicy:
        # logits Q / T: the run time's argmax picks the highest-valued option
        planner = (self.frozen_planner if self.frozen_planner is not None else
                   _ensemble_numpy_mlp(self.planner.heads, self.planner.scale.numpy(), 1.0 / self.config.planner_temperature))
        return HierPolicy(planner=planner, skills=[_numpy_mlp(s.actor) for s in self.skills],
                          options=self.options, torque_features=self.config.torque_features,
                          probe_in_hand=self.config.probe_in_hand, probe_residual=self.config.probe_residual,
                          palm_clearance_m=self.config.palm_clearance_m,
                          escalate_after_slip=self.config.escalate_after_slip, jaw_fit=self.config.jaw_fit,
                          residual_scale=RESIDUAL_SCALE, gripper_scale=GRIPPER_SCALE, variant="ur5e",
                          meta={"steps": self.steps, "wall_seconds": round(self.wall_seconds, 1),
                                "episodes": self.episodes, "config": _jsonable(asdict(self.config)), **(meta or {})})

    def identity(self) -> dict:
        return {"algo": "hier_grasp", "planner_algo": "option_values", "obs_dim": HIER_OBS_SIZE, "options": [list(o) for o in self.config.options],
                "torque_features": self.config.torque_features, "world": self.world}

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, {
            **self.identity(), "config": _jsonable(asdict(self.config)), "steps": self.steps,
            "wall_seconds": self.wall_seconds, "episodes": self.episodes,
            "planner": self.planner.state_dict(), "skills": self.skills.state_dict(),
            "decisions": [(f.tolist(), o, g, r, None if nxt is None else nxt.tolist())
                          for f, o, g, r, nxt in self.decision_buffer],
            "planner_opt": self.planner_opt.state_dict(), "skill_opts": [o.state_dict() for o in self.skill_opts],
            "scalers": [s.state_dict() for s in (self.planner_scaler, *self.skill_scalers)],
            "torch_rng": torch.get_rng_state(), "numpy_rng": self.rng.bit_generator.state})

    def load(self, path: str | Path) -> None:
        payload = load_checkpoint(path, self.identity())
        self.planner.load_state_dict(payload["planner"])
        self.decision_buffer = [_decision(d) for d in payload["decisions"]]
        self.skills.load_state_dict(payload["skills"])
        self.planner_opt.load_state_dict(payload["planner_opt"])
        for opt, state in zip(self.skill_opts, payload["skill_opts"], strict=True):
            opt.load_state_dict(state)
        for scaler, state in zip((self.planner_scaler, *self.skill_scalers), payload.get("scalers", []), strict=False):
            scaler.load_state_dict(state)  # checkpoints from before loss scaling have none: keep the fresh ones
        torch.set_rng_state(payload["torch_rng"])
        self.rng.bit_generator.state = payload["numpy_rng"]
        self.steps, self.episodes = int(payload["steps"]), int(payload["episodes"])
        self.wall_seconds = float(payload["wall_seconds"])
        self._reset_envs(self.config.seed + self.steps)  # fresh episodes, not the ones the run began with

    def close(self) -> None:
        self.envs.close()
        if self.writer is not None:
            self.writer.close()


class _HierCheckpoints(TimeCheckpoints):
    """Checkpoints by wall time; at the end also the runtime policy file ``policy.npz``."""

    def finish(self) -> None:
        super().finish()
        if self.agent.run is not None:
            self.agent.export().save(self.agent.run.root / "policy.npz")


def _frozen_planner(cfg: HierTrainConfig) -> NumpyMLP:
    """The planner of the policy file ``cfg.planner_from``, which must have been trained for the
    same options, features and machine as this run (else its choices mean something else)."""
    policy = HierPolicy.load(cfg.planner_from)
    ours = {"options": options_from_list(cfg.options), "torque_features": cfg.torque_features,
            "probe_in_hand": cfg.probe_in_hand, "probe_residual": cfg.probe_residual,
            "palm_clearance_m": cfg.palm_clearance_m, "escalate_after_slip": cfg.escalate_after_slip,
            "jaw_fit": cfg.jaw_fit}
    differ = {k: (getattr(policy, k), v) for k, v in ours.items() if getattr(policy, k) != v}
    if differ:
        raise ConfigError(f"planner_from {cfg.planner_from}: its planner was trained with "
                          + ", ".join(f"{k}={a!r}" for k, (a, _) in differ.items()) + "; this run has "
                          + ", ".join(f"{k}={b!r}" for k, (_, b) in differ.items()))
    return policy.planner


def _info_array(infos: dict, key: str, n: int) -> np.ndarray:
    """A per-env float info entry of a vector step (0 where an env did not report it)."""
    values = infos.get(key)
    if values is None:
        return np.zeros(n)
    mask = infos.get(f"_{key}")
    values = np.asarray(values, dtype=np.float64)
    return np.where(mask, values, 0.0) if mask is not None else values


def _final_info(infos: dict, i: int) -> dict:
    """The info dict of env ``i``'s episode that just ended (same-step autoreset layout)."""
    final = infos.get("final_info")
    if not isinstance(final, dict):
        return {}
    mask = final.get("_success")
    if mask is not None and not mask[i]:
        return {}
    return {k: v[i] for k, v in final.items() if not k.startswith("_")}


def _jsonable(config: dict) -> dict:
    return {k: [list(o) for o in v] if k == "options" else v for k, v in config.items()}


def train_grasp(out: str | Path, resume: bool = False, budget_s: float | None = None, progress: bool = True,
                randomized_world=None, **overrides) -> tuple[HierTrainer, dict]:
    """Build (or resume) a run in ``out`` and train it; returns the trainer (closed) and a summary.
    ``randomized_world`` is used when the run's config has ``randomize_physics``."""
    run = RunDir(Path(out))
    if run.checkpoint.exists() and not resume:
        raise ConfigError(f"{run.checkpoint} already exists: pass --resume to continue that run, or choose "
                          "another --out")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resume and run.checkpoint.exists():
        saved = load_checkpoint(run.checkpoint, {"algo": "hier_grasp"})
        saved["config"].setdefault("task", "nominal")  # runs from before task presets trained the nominal task
        saved["config"].setdefault("object_variation", False)  # and before the training variation, the sets as listed
        saved["config"].setdefault("attempt_penalty", 0.0)  # and before the re-grasp cost
        saved["config"].setdefault("planner_target", "mc")  # and before the Q-learning target
        saved["config"].setdefault("planner_heads", 1)  # and before the ensemble of value heads
        saved["config"].setdefault("energy_weight", 0.02)  # and before the energy price was lowered (round 9)
        saved["config"].setdefault("probe_in_hand", True)  # and before the probes' initiation set (round 9)
        saved["config"].setdefault("probe_residual", True)  # and before the residual-free probe (round 9)
        saved["config"].setdefault("palm_clearance_m", None)  # and before the palm cleared the top (round 10)
        # and before the clamped target; runs with planner_heads (round 8) clamped before the switch existed
        saved["config"].setdefault("planner_value_clamp", "planner_heads" in saved["config"])
        config = HierTrainConfig(**{**saved["config"], "options": tuple(tuple(o) for o in saved["config"]["options"])})
        changed = {k: v for k, v in overrides.items()
                   if k not in ("workers", "backend", "ray_address") and getattr(config, k) != v}
        if changed:
            raise ConfigError(f"--resume continues {run.checkpoint} with its own settings; these differ: {changed}")
        if "workers" in overrides:  # the same envs, spread over another number of processes
            workers = overrides["workers"]
            if config.n_envs % max(workers, 1):
                raise ConfigError(f"--workers {workers}: the run's {config.n_envs} envs do not split evenly")
            config = dataclasses.replace(config, workers=workers, envs_per_worker=config.n_envs // max(workers, 1))
        # where the envs run is not part of the run: a run may resume on Ray or locally
        config = dataclasses.replace(config, **{k: overrides[k] for k in ("backend", "ray_address") if k in overrides})
    else:
        config = HierTrainConfig(**overrides)
    os.makedirs(run.root, exist_ok=True)
    trainer = HierTrainer(config, out=run.root, randomized_world=randomized_world)
    summary = train_in_run(trainer, run, resume, lambda: trainer.train(budget_s=budget_s, progress=progress))
    return trainer, summary
