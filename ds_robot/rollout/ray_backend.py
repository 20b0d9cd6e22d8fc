"""Ray backend: the rollout workers as Ray actors.

For users who outgrow one machine. ``RayRolloutEngine`` has the same two modes as the local
``RolloutEngine`` — the Gymnasium ``VectorEnv`` API (``reset``/``step`` with same-step
autoreset) and ``broadcast(params, version)`` + ``collect(n_steps)`` — but each worker is a
Ray actor owning M environments, and data travels through Ray's object store instead of
shared memory, so the actors may live on other machines. Env j is seeded with ``seed + j``
as in the local engine, so both give identical ``step`` trajectories.

``collect_into_replay`` has every env actor roll the broadcast policy out and push its
transitions straight into a replay actor (anything with a Ray ``add`` method, e.g.
``ds_robot.rl.replay_actor.make_replay_actor``) — Ape-X-style collection where the learner
only samples and updates priorities.

Connection: ``address=None`` starts (or reuses) a local Ray instance; ``"auto"`` or
``"HOST:PORT"`` joins an existing cluster. Ray is optional (``pip install ds-robot[dist]``).

Failures: an actor that dies (``ray.kill``, a crashed node, an exception in its env) raises
``RayActorError``/``RayTaskError`` here; the engine records a ``RolloutError`` naming the worker
and envs, starts a fresh actor, resets its envs with their original seeds and, in ``step``,
reports them as truncated with ``infos["rollout_reset"]`` — the same contract as the local
engine; ``collect`` re-collects that worker's part. ``max_restarts`` bounds it per worker.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from ds_robot.errors import ActionError, ConfigError
from ds_robot.rollout.engine import EnvFactory, PolicyFn, RolloutError, RolloutWarning, Trajectory
from ds_robot.rollout.worker import POLICY_STREAM


def ray_module():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the Ray backend needs Ray: pip install 'ds-robot[dist]' (or pip install ray)") from exc
    return ray


def ensure_ray(address: str | None = None) -> bool:
    """Connect to Ray (a local instance when ``address`` is None); True if this call started it."""
    ray = ray_module()
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


class EnvActor:
    """M environments in one Ray actor (wrapped with ``ray.remote`` at run time)."""

    def __init__(self, env_fn: Callable[[], gym.Env], num_envs: int, policy_fn: PolicyFn | None):
        self.envs = gym.vector.SyncVectorEnv([env_fn] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.policy_fn = policy_fn
        self.params: Any = None
        self.version: int | None = None
        self.rng = np.random.default_rng()
        self.obs: np.ndarray | None = None

    def reset(self, seeds: list[int | None]) -> np.ndarray:
        self.obs, _ = self.envs.reset(seed=seeds)
        self.rng = np.random.default_rng([seeds[0] if seeds[0] is not None else 0, POLICY_STREAM])
        return self.obs

    def step(self, actions: np.ndarray) -> tuple:
        obs, rewards, terminated, truncated, info = self.envs.step(actions)
        final = np.zeros_like(obs)
        mask = np.asarray(info.get("_final_obs", np.zeros(len(obs), bool)))
        for i in np.flatnonzero(mask):
            final[i] = info["final_obs"][i]
        self.obs = obs
        return obs, rewards, terminated, truncated, final, mask

    def set_params(self, params: Any, version: int) -> int:
        self.params, self.version = params, version
        return os.getpid()

    def collect(self, n_steps: int) -> dict:
        out: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "terminated", "truncated", "final_obs")}
        for _ in range(n_steps):
            actions = np.asarray(self.policy_fn(self.params, self.obs, self.rng))
            out["obs"].append(self.obs)
            out["actions"].append(actions)
            obs, rewards, terminated, truncated, final, _ = self.step(actions)
            for key, value in (("rewards", rewards), ("terminated", terminated), ("truncated", truncated),
                               ("final_obs", final)):
                out[key].append(value)
        arrays = {k: np.stack(v) for k, v in out.items()}
        return {**arrays, "last_obs": self.obs, "version": self.version}

    def collect_into(self, replay, n_steps: int) -> int:
        """Roll out and push (s, a, r, s', terminated) into a replay actor; returns the count."""
        ray = ray_module()
        batch = self.collect(n_steps)
        next_obs = np.concatenate([batch["obs"][1:], batch["last_obs"][None]], axis=0)
        done = batch["terminated"] | batch["truncated"]
        next_obs[done] = batch["final_obs"][done]
        flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
        ray.get(replay.add.remote(flat(batch["obs"]), flat(batch["actions"]), flat(batch["rewards"]),
                                  flat(next_obs), flat(batch["terminated"]).astype(np.float32)))
        return int(batch["rewards"].size)

    def pid(self) -> int:
        return os.getpid()


class RayRolloutEngine(gym.vector.VectorEnv):
    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, env_fn: str | Callable[[], gym.Env], num_workers: int = 2, envs_per_worker: int = 1, *,
                 policy_fn: PolicyFn | None = None, address: str | None = None, max_restarts: int = 3):
        if num_workers < 1 or envs_per_worker < 1:
            raise ConfigError(f"need at least one worker and one env per worker, got {num_workers}, {envs_per_worker}")
        self.env_fn = EnvFactory(env_fn) if isinstance(env_fn, str) else env_fn
        probe = self.env_fn()
        self.single_observation_space, self.single_action_space = probe.observation_space, probe.action_space
        probe.close()
        self.num_workers, self.envs_per_worker = num_workers, envs_per_worker
        self.num_envs = num_workers * envs_per_worker
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.policy_fn, self.max_restarts = policy_fn, max_restarts
        self._started_ray = ensure_ray(address)
        self._actor_cls = ray_module().remote(EnvActor)
        self._actors = [self._new_actor() for _ in range(num_workers)]
        self.restarts = [0] * num_workers
        self.errors: list[RolloutError] = []
        self._seeds: list[int | None] | None = None
        self._last_obs: np.ndarray | None = None
        self._params_ref: Any = None
        self._version: int | None = None
        self._closed = False

    # -- helpers ----------------------------------------------------------------------------------

    def _new_actor(self):
        return self._actor_cls.remote(self.env_fn, self.envs_per_worker, self.policy_fn)

    def _slice(self, w: int) -> slice:
        return slice(w * self.envs_per_worker, (w + 1) * self.envs_per_worker)

    def _call(self, method: str, args_per_worker: Sequence[tuple]) -> tuple[list[Any], list[int]]:
        """Call ``method`` on every actor; returns results and the indices of actors that failed."""
        ray = ray_module()
        futures = [getattr(actor, method).remote(*args) for actor, args in zip(self._actors, args_per_worker,
                                                                                 strict=True)]
        results, failed = [], []
        for w, future in enumerate(futures):
            try:
                results.append(ray.get(future))
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                results.append(None)
                failed.append(w)
                self._record(w, method, exc)
        return results, failed

    def _record(self, w: int, method: str, exc: Exception) -> None:
        envs = list(range(self._slice(w).start, self._slice(w).stop))
        error = RolloutError(f"ray rollout worker {w} (envs {envs[0]}-{envs[-1]}) failed during '{method}': "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                             worker_index=w, env_indices=envs)
        self.errors.append(error)
        warnings.warn(str(error), RolloutWarning, stacklevel=4)

    def _restart(self, w: int) -> np.ndarray:
        """A fresh actor for worker w, its envs reset with their original seeds and params restored."""
        ray = ray_module()
        self.restarts[w] += 1
        if self.restarts[w] > self.max_restarts:
            error = self.errors[-1]
            self.close()
            raise RolloutError(f"{error} — restarted {self.max_restarts} times already; giving up",
                               worker_index=w, env_indices=error.env_indices)
        with_suppressed_kill(ray, self._actors[w])
        self._actors[w] = self._new_actor()
        if self._params_ref is not None:
            ray.get(self._actors[w].set_params.remote(self._params_ref, self._version))
        return ray.get(self._actors[w].reset.remote(self._worker_seeds(w)))

    def _worker_seeds(self, w: int) -> list[int | None]:
        seeds = self._seeds or [None] * self.num_envs
        return seeds[self._slice(w)]

    def _require_open(self) -> None:
        if self._closed:
            raise ConfigError("this RayRolloutEngine is closed")

    # -- VectorEnv API ------------------------------------------------------------------------------

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        self._require_open()
        if seed is None or isinstance(seed, (int, np.integer)):
            self._seeds = [None if seed is None else int(seed) + j for j in range(self.num_envs)]
        else:
            self._seeds = list(seed)
        results, failed = self._call("reset", [(self._worker_seeds(w),) for w in range(self.num_workers)])
        for w in failed:
            results[w] = self._restart(w)
        self._last_obs = np.concatenate(results)
        return self._last_obs.copy(), {}

    def step(self, actions: Any):
        self._require_open()
        actions = np.asarray(actions)
        # Box actions: the shape (the env clips or refuses the values, as with the local engine);
        # other spaces: membership
        if isinstance(self.single_action_space, gym.spaces.Box):
            valid = actions.shape == (self.num_envs, *self.single_action_space.shape)
        else:
            valid = actions.shape[:1] == (self.num_envs,) and self.action_space.contains(
                actions.astype(self.action_space.dtype))
        if not valid:
            raise ActionError(f"actions must be a batch of {self.num_envs} actions from {self.single_action_space}, "
                              f"got shape {actions.shape}")
        results, failed = self._call("step", [(actions[self._slice(w)],) for w in range(self.num_workers)])
        infos: dict[str, Any] = {}
        for w in failed:
            reset_obs = self._restart(w)
            m = self.envs_per_worker
            before = self._last_obs[self._slice(w)]  # the episode ends where the actor last reported
            results[w] = (reset_obs, np.zeros(m), np.zeros(m, bool), np.ones(m, bool), before, np.ones(m, bool))
            mask = infos.setdefault("_rollout_reset", np.zeros(self.num_envs, bool))
            mask[self._slice(w)] = True
            infos["rollout_reset"] = mask
            infos["rollout_error"] = self.errors[-1]
        obs, rewards, terminated, truncated, final, final_mask = (np.concatenate(parts) for parts in zip(*results,
                                                                                                       strict=True))
        if final_mask.any():
            infos["final_obs"], infos["_final_obs"] = final, final_mask
        self._last_obs = obs
        return obs.copy(), rewards, terminated, truncated, infos

    # -- policy broadcast -------------------------------------------------------------------------

    def broadcast(self, params: Any, version: int) -> None:
        self._require_open()
        self._params_ref, self._version = ray_module().put(params), int(version)
        _, failed = self._call("set_params", [(self._params_ref, self._version)] * self.num_workers)
        for w in failed:
            self._restart(w)

    def collect(self, n_steps: int) -> Trajectory:
        self._require_open()
        if self.policy_fn is None or self._version is None:
            raise ConfigError("collect() needs policy_fn=... and a broadcast() of the parameters first")
        if self._seeds is None:
            raise ConfigError("call reset() before collect()")
        errors_before = len(self.errors)
        results, failed = self._call("collect", [(n_steps,)] * self.num_workers)
        restarted = np.zeros(self.num_envs, bool)
        for w in failed:
            self._restart(w)
            results[w] = ray_module().get(self._actors[w].collect.remote(n_steps))
            restarted[self._slice(w)] = True
        versions = np.repeat([r["version"] for r in results], self.envs_per_worker)
        if (versions != self._version).any():
            raise RolloutError(f"collect: a worker used policy version {sorted(set(versions.tolist()))}, "
                               f"not the broadcast version {self._version}")
        cat = lambda key: np.concatenate([r[key] for r in results], axis=1)  # noqa: E731
        return Trajectory(obs=cat("obs"), actions=cat("actions"), rewards=cat("rewards"),
                          terminated=cat("terminated"), truncated=cat("truncated"), final_obs=cat("final_obs"),
                          last_obs=np.concatenate([r["last_obs"] for r in results]), policy_versions=versions,
                          restarted=restarted, errors=self.errors[errors_before:])

    def collect_into_replay(self, replay, n_steps: int) -> int:
        """Ape-X-style: every actor rolls out and pushes its transitions into ``replay``."""
        self._require_open()
        results, failed = self._call("collect_into", [(replay, n_steps)] * self.num_workers)
        for w in failed:
            self._restart(w)
            results[w] = ray_module().get(self._actors[w].collect_into.remote(replay, n_steps))
        return int(sum(results))

    @property
    def worker_pids(self) -> list[int]:
        return ray_module().get([actor.pid.remote() for actor in self._actors])

    def close_extras(self, **kwargs: Any) -> None:
        if self._closed:
            return
        self._closed = True
        ray = ray_module()
        for actor in self._actors:
            with_suppressed_kill(ray, actor)
        if self._started_ray:
            ray.shutdown()


def with_suppressed_kill(ray, actor) -> None:
    """Kill an actor that may already be dead."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - a dead or unknown actor is what we wanted
        return
