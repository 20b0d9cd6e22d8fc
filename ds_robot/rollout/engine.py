"""Multi-process rollout: N worker processes with M environments each, fed through shared memory.

Source document (docs/architecture.md, formulas): "worker processes connected by pipes; the learner sends the policy
weights, workers roll out and send trajectories back, the learner merges them."

Layout. ``RolloutEngine(env_fn, num_workers=N, envs_per_worker=M)`` starts N processes
(start method "spawn" by default, "forkserver" on request: both are safe with torch and
MuJoCo, unlike "fork"). Worker ``w`` owns the envs with global indices ``w*M … w*M+M-1``,
created in the worker from the picklable ``env_fn`` (a Gymnasium id, an ``EnvFactory`` or a
top-level function). Each worker has one duplex pipe to the learner.

Data flow. The learner preallocates one shared-memory block for the whole batch and each
worker writes only its own slice, so observations, rewards and flags are never pickled:

* step block: ``obs`` and ``final_obs`` (E, *obs_shape), ``actions`` (E, *action_shape),
  ``rewards`` (E,) float64, ``terminated`` and ``truncated`` (E,) bool, E = N*M;
* trajectory block (allocated by the first ``collect(n_steps)``, reallocated when n_steps
  changes): ``obs``, ``final_obs`` (T, E, *obs_shape), ``actions`` (T, E, *action_shape),
  ``rewards``, ``terminated``, ``truncated`` (T, E).

Pipes carry only small control messages (see ``ds_robot.rollout.worker``): the command,
per-env ``info`` dicts, error reports, and the pickled policy parameters once per broadcast.

Two modes share the same workers and environments:

A. ``step(actions)``: the Gymnasium ``VectorEnv`` API with same-step autoreset
   (``AutoresetMode.SAME_STEP``): when an episode ends, ``obs`` already holds the next
   episode's first observation and the last one is in ``infos["final_obs"]`` (mask
   ``infos["_final_obs"]``, with ``infos["final_info"]``). ``reset(seed=s)`` seeds env j
   with ``s + j``, so env j's trajectory does not depend on how envs are spread over workers:
   the results equal ``gym.vector.SyncVectorEnv`` with the same seeds and actions.
B. ``broadcast(params, version)`` then ``collect(n_steps)``: every worker keeps the latest
   parameters and runs ``policy_fn(params, obs_batch, rng) -> actions`` on its own envs for
   n_steps, writing the trajectory into shared memory; ``collect`` returns the merged
   ``Trajectory`` (n_steps, E, …) and checks that every worker used the broadcast version.

Crashes. A worker whose env (or policy) raises replies with the traceback and exits; a
worker killed outright (SIGKILL, segfault) is seen as a closed pipe / process sentinel; one
that stays silent longer than ``worker_timeout_s`` is killed. Each case becomes a
``RolloutError`` naming the worker and its env indices (kept in ``engine.errors`` and
issued as a ``RolloutWarning``), and the worker is restarted: a new process re-creates its
envs, maps the shared memory, receives the current parameters and resets its envs with
their original seeds (``seed + j``; a restarted env therefore replays its first episode's
start, deterministically). Then:

* ``collect``: that worker's part of the batch is collected again from the fresh envs, so
  no half-written data is returned; ``Trajectory.restarted`` marks those envs (their
  episodes start afresh, so the previous batch's ``last_obs`` does not continue there).
* ``step``: the step cannot be replayed, so the worker's envs report an artificial
  truncation: ``truncated=True``, ``terminated=False``, ``reward=0``, ``final_obs`` = the
  last observation before the failed step, ``obs`` = the new reset observation, and
  ``infos["rollout_reset"]`` (mask ``infos["_rollout_reset"]``) with the error in
  ``infos["rollout_error"]``. Truncation (not termination) is the honest label: the episode
  was cut short, the state was not terminal.
* ``reset`` and ``broadcast``: simply redone by the restart.

A worker restarted more than ``max_restarts`` times makes the engine close itself and raise
the ``RolloutError``. ``close()`` (also run on garbage collection, at interpreter exit and
when Ctrl-C interrupts a call) asks workers to exit, terminates those that do not, joins
them all and unlinks the shared memory.

As with any spawn-based multiprocessing, a script that creates an engine must guard its
entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import pickle
import signal
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from ds_robot.errors import ActionError, ConfigError, DsRobotError
from ds_robot.rollout.shared import ArraySpec, SharedBlock, space_array_spec
from ds_robot.rollout.worker import worker_main

PolicyFn = Callable[[Any, np.ndarray, np.random.Generator], np.ndarray]
"""``policy_fn(params, obs_batch, rng) -> actions``: (M, *obs_shape) -> (M, *action_shape)."""

START_METHODS = ("spawn", "forkserver")
_SHUTDOWN_GRACE_S = 5.0
_T = TypeVar("_T")
_DISCRETE_SPACES = (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


def _close_on_interrupt(method: Callable[..., _T]) -> Callable[..., _T]:
    """Ctrl-C during a call leaves the pipes mid-conversation: close the engine, then re-raise."""

    @functools.wraps(method)
    def wrapper(self: RolloutEngine, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except KeyboardInterrupt:
            self.close()
            raise

    return wrapper


class RolloutError(DsRobotError):
    """A rollout worker failed (its env raised, it died, or it stopped answering).

    ``worker_index`` and ``env_indices`` say where; ``worker_traceback`` holds the worker's
    traceback when it reported one.
    """

    def __init__(self, message: str, worker_index: int | None = None, env_indices: Sequence[int] = (),
                 worker_traceback: str = ""):
        super().__init__(message)
        self.worker_index = worker_index
        self.env_indices = tuple(env_indices)
        self.worker_traceback = worker_traceback


class RolloutWarning(UserWarning):
    """A worker failed and was restarted; the data returned is still complete and valid."""


@dataclass(frozen=True)
class EnvFactory:
    """A picklable ``gym.make(env_id, **kwargs)`` followed by ``wrappers`` (top-level callables)."""

    env_id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    wrappers: tuple[Callable[[gym.Env], gym.Env], ...] = ()

    def __call__(self) -> gym.Env:
        try:
            env = gym.make(self.env_id, **self.kwargs)
        except gym.error.Error as exc:
            raise ConfigError(f"cannot make environment '{self.env_id}': {exc}") from exc
        for wrap in self.wrappers:
            env = wrap(env)
        return env


@dataclass
class Trajectory:
    """What ``collect(n_steps)`` returns; arrays are (n_steps, num_envs, …) and owned by the caller."""

    obs: np.ndarray  # (T, E, *obs_shape): the observation each action was chosen from
    actions: np.ndarray  # (T, E, *action_shape)
    rewards: np.ndarray  # (T, E) float64
    terminated: np.ndarray  # (T, E) bool
    truncated: np.ndarray  # (T, E) bool
    final_obs: np.ndarray  # (T, E, *obs_shape): last observation of the episode that ended at t, else 0
    last_obs: np.ndarray  # (E, *obs_shape): the observation after the last step (for bootstrapping)
    policy_versions: np.ndarray  # (E,) int64: the parameter version each env's actions came from
    restarted: np.ndarray  # (E,) bool: env re-created and re-collected from a fresh reset in this batch
    errors: list[RolloutError] = field(default_factory=list)

    @property
    def dones(self) -> np.ndarray:
        return self.terminated | self.truncated


@dataclass
class _WorkerHandle:
    """The learner's side of one worker: its process, its pipe and the envs it owns."""

    index: int
    first_env: int
    num_envs: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    restarts: int = 0
    reset_infos: list[dict] = field(default_factory=list)

    @property
    def envs(self) -> slice:
        return slice(self.first_env, self.first_env + self.num_envs)

    @property
    def env_indices(self) -> range:
        return range(self.first_env, self.first_env + self.num_envs)

    def describe(self) -> str:
        last = self.first_env + self.num_envs - 1
        envs = f"env {last}" if self.num_envs == 1 else f"envs {self.first_env}-{last}"
        pid = f", pid {self.process.pid}" if self.process is not None else ""
        return f"rollout worker {self.index} ({envs}{pid})"


@dataclass
class _Failure:
    summary: str
    traceback: str = ""


class RolloutEngine(gym.vector.VectorEnv):
    """N worker processes x M environments behind the ``VectorEnv`` API and a policy-rollout API.

    Args:
        env_fn: a Gymnasium id (made with ``env_kwargs``), an ``EnvFactory`` or any picklable
            zero-argument callable returning an env (a top-level function, not a lambda).
        num_workers: worker processes (default ``os.cpu_count()``).
        envs_per_worker: environments per worker; ``num_envs = num_workers * envs_per_worker``.
        env_kwargs: keyword arguments for ``gym.make`` when ``env_fn`` is an id.
        policy_fn: picklable ``policy_fn(params, obs_batch, rng) -> actions`` for ``collect``.
        max_restarts: how often each worker may be restarted after a crash before the engine
            gives up, closes and raises ``RolloutError``.
        start_method: "spawn" (default) or "forkserver".
        worker_timeout_s: a worker silent for longer than this during one command (start-up
            included) is treated as crashed: killed and restarted (None: wait forever).

    One thread drives an engine; it is not thread-safe. ``with RolloutEngine(...) as engine:``
    closes it on the way out.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, env_fn: str | Callable[[], gym.Env], num_workers: int | None = None,
                 envs_per_worker: int = 1, *, env_kwargs: Mapping[str, Any] | None = None,
                 policy_fn: PolicyFn | None = None, max_restarts: int = 3, start_method: str = "spawn",
                 worker_timeout_s: float | None = None):
        num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        checks = {
            "num_workers": num_workers >= 1,
            "envs_per_worker": envs_per_worker >= 1,
            "max_restarts": max_restarts >= 0,
            "start_method": start_method in START_METHODS,
            "worker_timeout_s": worker_timeout_s is None or worker_timeout_s > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {"num_workers": num_workers, "envs_per_worker": envs_per_worker, "max_restarts": max_restarts,
                      "start_method": start_method, "worker_timeout_s": worker_timeout_s}
            raise ConfigError("RolloutEngine: impossible value for " + ", ".join(f"{b}={values[b]!r}" for b in bad)
                              + f" (workers and envs per worker >= 1, max_restarts >= 0, start_method in "
                                f"{START_METHODS}, worker_timeout_s > 0 or None)")
        if isinstance(env_fn, str):
            env_fn = EnvFactory(env_fn, dict(env_kwargs or {}))
        elif env_kwargs:
            raise ConfigError("env_kwargs only applies when env_fn is a Gymnasium id; bind them in your factory")
        _require_picklable(env_fn, "env_fn")
        if policy_fn is not None:
            _require_picklable(policy_fn, "policy_fn")

        self.env_fn = env_fn
        self.policy_fn = policy_fn
        self.num_workers = num_workers
        self.envs_per_worker = envs_per_worker
        self.num_envs = num_workers * envs_per_worker
        self.max_restarts = max_restarts
        self.worker_timeout_s = worker_timeout_s
        self.errors: list[RolloutError] = []
        self._context = mp.get_context(start_method)
        self._workers = [_WorkerHandle(w, w * envs_per_worker, envs_per_worker) for w in range(num_workers)]
        self._blocks: dict[str, SharedBlock] = {}
        self._finalizer = weakref.finalize(self, _shutdown, os.getpid(), self._workers, self._blocks)
        self._seeds: list[int | None] | None = None  # None until the first reset
        self._reset_options: dict | None = None
        self._params_payload: bytes | None = None
        self._version: int | None = None
        self._last_obs: np.ndarray | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- construction -------------------------------------------------------------------------

    def _start(self) -> None:
        for worker in self._workers:
            self._launch(worker)
        hello, failures = self._gather(self._workers, "start")
        if failures:
            raise RolloutError("the rollout engine could not start: " + "; ".join(
                f"{self._workers[w].describe()} {failure.summary}" for w, failure in sorted(failures.items())),
                worker_index=min(failures), worker_traceback=failures[min(failures)].traceback)
        self.single_observation_space = hello[0]["observation_space"]
        self.single_action_space = hello[0]["action_space"]
        for w, spaces in hello.items():
            if (spaces["observation_space"], spaces["action_space"]) != (self.single_observation_space,
                                                                         self.single_action_space):
                raise RolloutError(f"{self._workers[w].describe()} made envs with spaces {spaces} unlike worker "
                                   f"0's; env_fn must make the same kind of env every time", worker_index=w)
        self._obs_spec = space_array_spec(self.single_observation_space, "observation")
        self._action_spec = space_array_spec(self.single_action_space, "action")
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        e = self.num_envs
        self._blocks["step"] = SharedBlock.create({
            "obs": self._obs_spec.batched(e),
            "final_obs": self._obs_spec.batched(e),
            "actions": self._action_spec.batched(e),
            "rewards": ArraySpec((e,), np.dtype(np.float64).str),
            "terminated": ArraySpec((e,), np.dtype(np.bool_).str),
            "truncated": ArraySpec((e,), np.dtype(np.bool_).str),
        })
        _, failures = self._round("attach", self._layouts(), self._workers)
        if failures:
            w, failure = min(failures.items())
            raise RolloutError(f"{self._workers[w].describe()} {failure.summary}", worker_index=w,
                               worker_traceback=failure.traceback)

    # -- mode A: the VectorEnv API ------------------------------------------------------------

    @_close_on_interrupt
    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env; an int ``seed`` seeds env j with ``seed + j`` (a list gives one seed per env)."""
        self._require_open()
        if options and "reset_mask" in options:
            raise ConfigError("RolloutEngine.reset does not take options['reset_mask']: with same-step autoreset "
                              "finished envs are reset inside step()")
        if isinstance(seed, int | np.integer):
            super().reset(seed=int(seed))
        self._seeds = self._expand_seeds(seed)
        self._reset_options = options
        seeds = self._seeds
        replies, failures = self._round("reset", lambda w: (seeds[w.envs], options), self._workers)
        for w, failure in failures.items():
            self._restart(self._workers[w], failure)  # the restart resets with the same seeds
            replies[w] = self._workers[w].reset_infos
        obs = self._blocks["step"]["obs"].copy()
        self._last_obs = obs.copy()
        infos: dict[str, Any] = {}
        for worker in self._workers:
            for j, info in zip(worker.env_indices, replies[worker.index], strict=True):
                infos = self._add_info(infos, info, j)
        return obs, infos

    @_close_on_interrupt
    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One step of every env (same-step autoreset); see the module docstring for crashed workers."""
        self._require_open()
        self._require_reset("step")
        block = self._blocks["step"]
        block["actions"][...] = self._check_actions(actions)
        replies, failures = self._round("step", None, self._workers)
        errors: dict[int, RolloutError] = {}
        for w, failure in failures.items():
            errors[w] = self._restart(self._workers[w], failure)
        obs = block["obs"].copy()
        rewards = block["rewards"].copy()
        terminated = block["terminated"].copy()
        truncated = block["truncated"].copy()
        infos: dict[str, Any] = {}
        for worker in self._workers:
            if worker.index in errors:
                rewards[worker.envs], terminated[worker.envs], truncated[worker.envs] = 0.0, False, True
                for j, info in zip(worker.env_indices, worker.reset_infos, strict=True):
                    infos = self._add_info(infos, {"final_obs": self._last_obs[j].copy(), "final_info": {}}, j)
                    infos = self._add_info(infos, info, j)
                    infos = self._add_info(infos, {"rollout_reset": True, "rollout_error": errors[worker.index]}, j)
                continue
            for j, (final_info, info) in zip(worker.env_indices, replies[worker.index], strict=True):
                if final_info is not None:
                    final = {"final_obs": block["final_obs"][j].copy(), "final_info": final_info}
                    infos = self._add_info(infos, final, j)
                infos = self._add_info(infos, info, j)
        self._last_obs = obs.copy()
        return obs, rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        """Stop and join every worker and unlink the shared memory (idempotent)."""
        self._finalizer()

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- mode B: policy broadcast and trajectory collection -----------------------------------

    @_close_on_interrupt
    def broadcast(self, params: Any, version: int) -> None:
        """Send policy parameters to every worker, tagged with ``version``.

        ``params`` is anything picklable that ``policy_fn`` understands; a mapping of torch
        tensors (a ``state_dict``) is sent as a mapping of numpy arrays, so workers need not
        import torch to receive it.
        """
        self._require_open()
        payload = pickle.dumps(_numpy_params(params), protocol=pickle.HIGHEST_PROTOCOL)
        self._params_payload, self._version = payload, int(version)
        _, failures = self._round("params", (self._version, payload), self._workers)
        for w, failure in failures.items():
            self._restart(self._workers[w], failure)  # the restart sends the parameters again

    @_close_on_interrupt
    def collect(self, n_steps: int) -> Trajectory:
        """Every worker rolls the broadcast policy out for ``n_steps`` from its envs' current state.

        Each worker calls ``policy_fn`` once per step on its M observations with its own
        generator, seeded at ``reset(seed=s)`` from ``(s + first env index, POLICY_STREAM)``:
        a collect is reproducible for a given layout, but sampled actions (unlike ``step``
        results) depend on how envs are spread over workers. Per-step ``info`` dicts are not
        returned; use ``step`` when you need them.
        """
        self._require_open()
        if self.policy_fn is None:
            raise ConfigError("collect() needs a policy: pass policy_fn=... to RolloutEngine")
        if self._version is None:
            raise ConfigError("collect() before broadcast(): send the policy parameters first")
        self._require_reset("collect")
        if n_steps < 1:
            raise ConfigError(f"collect(n_steps={n_steps}): n_steps must be >= 1")
        restarts_before = [worker.restarts for worker in self._workers]
        errors_before = len(self.errors)
        block = self._trajectory_block(n_steps)
        versions = np.full(self.num_envs, -1, dtype=np.int64)
        pending = list(self._workers)
        while pending:  # ends: every failure costs a restart, and restarts are bounded
            replies, failures = self._round("collect", n_steps, pending)
            for w, reply in replies.items():
                versions[self._workers[w].envs] = reply["version"]
            pending = []
            for w, failure in failures.items():
                self._restart(self._workers[w], failure)
                pending.append(self._workers[w])
        restarted = np.repeat([w.restarts != before for w, before in zip(self._workers, restarts_before, strict=True)],
                              self.envs_per_worker)
        if (versions != self._version).any():
            stale = sorted({int(v) for v in versions[versions != self._version]})
            raise RolloutError(f"collect: some envs were rolled out with policy version(s) {stale}, not the "
                               f"broadcast version {self._version}",
                               env_indices=np.flatnonzero(versions != self._version).tolist())
        dones = block["terminated"] | block["truncated"]
        final_obs = block["final_obs"].copy()
        final_obs[~dones] = 0
        last_obs = self._blocks["step"]["obs"].copy()
        self._last_obs = last_obs.copy()
        return Trajectory(obs=block["obs"].copy(), actions=block["actions"].copy(), rewards=block["rewards"].copy(),
                          terminated=block["terminated"].copy(), truncated=block["truncated"].copy(),
                          final_obs=final_obs, last_obs=last_obs, policy_versions=versions, restarted=restarted,
                          errors=self.errors[errors_before:])

    @property
    def policy_version(self) -> int | None:
        """The version of the last broadcast (None before the first)."""
        return self._version

    # -- introspection ------------------------------------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (they change when a worker is restarted)."""
        return [w.process.pid for w in self._workers if w.process is not None]

    @property
    def shared_memory_names(self) -> list[str]:
        """Names of the shared-memory blocks in use (on Linux: files in /dev/shm)."""
        return [block.name for block in self._blocks.values()]

    # -- helpers: workers ---------------------------------------------------------------------

    def _launch(self, worker: _WorkerHandle) -> None:
        learner_end, worker_end = self._context.Pipe(duplex=True)
        worker.process = self._context.Process(
            target=worker_main, name=f"ds-robot-rollout-{worker.index}", daemon=True,
            args=(worker_end, worker.index, worker.first_env, worker.num_envs, self.env_fn, self.policy_fn),
        )
        worker.process.start()
        worker_end.close()  # so the learner sees EOF when the worker dies
        worker.conn = learner_end

    def _round(self, command: str, argument: Any, workers: Sequence[_WorkerHandle]
               ) -> tuple[dict[int, Any], dict[int, _Failure]]:
        """Send ``command`` to ``workers`` and collect one reply from each.

        ``argument`` may be a function of the worker. Returns the results and the failures,
        both keyed by worker index. Anything that interrupts a round (Ctrl-C, an unpicklable
        argument) closes the engine, since the pipes are then in an unknown state.
        """
        try:
            failures: dict[int, _Failure] = {}
            sent = []
            for worker in workers:
                message = (command, argument(worker) if callable(argument) else argument)
                try:
                    worker.conn.send(message)
                except OSError:
                    failures[worker.index] = _Failure(f"could not be sent {command!r}: it {_death(worker)}")
                else:
                    sent.append(worker)
            replies, late = self._gather(sent, command)
            failures.update(late)
            return replies, failures
        except BaseException:
            self.close()
            raise

    def _gather(self, workers: Sequence[_WorkerHandle], command: str) -> tuple[dict[int, Any], dict[int, _Failure]]:
        """One reply from each worker; a closed pipe, a dead process or a timeout is a failure."""
        replies: dict[int, Any] = {}
        failures: dict[int, _Failure] = {}
        pending = {worker.conn: worker for worker in workers}
        deadline = None if self.worker_timeout_s is None else time.monotonic() + self.worker_timeout_s
        while pending:
            sentinels = {worker.process.sentinel: worker for worker in pending.values()}
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([*pending, *sentinels], timeout)
            if not ready:
                for worker in pending.values():
                    failures[worker.index] = _Failure(f"did not answer {command!r} within "
                                                      f"worker_timeout_s={self.worker_timeout_s} s")
                break
            for handle in ready:
                if handle in sentinels:
                    worker = sentinels[handle]
                    if worker.conn in pending and not worker.conn.poll():
                        del pending[worker.conn]
                        failures[worker.index] = _Failure(f"{_death(worker)} during {command!r}")
                    continue
                if handle not in pending:
                    continue
                worker = pending.pop(handle)
                try:
                    status, payload = worker.conn.recv()
                except (EOFError, OSError):
                    failures[worker.index] = _Failure(f"{_death(worker)} during {command!r}")
                    continue
                if status == "ok":
                    replies[worker.index] = payload
                else:
                    where = f"env {payload['env']} raised" if payload["env"] is not None else "raised"
                    failures[worker.index] = _Failure(f"failed during {payload['during']!r}: {where} "
                                                      f"{payload['error']}", payload["traceback"])
        return replies, failures

    def _restart(self, worker: _WorkerHandle, failure: _Failure) -> RolloutError:
        """Replace a failed worker by a fresh one in the engine's current state; returns the error."""
        while True:
            error = RolloutError(f"{worker.describe()} {failure.summary}", worker.index, worker.env_indices,
                                 failure.traceback)
            self.errors.append(error)
            if worker.restarts >= self.max_restarts:
                self.close()
                raise RolloutError(f"{error}; it was restarted {worker.restarts} time(s) already "
                                   f"(max_restarts={self.max_restarts}), so the rollout engine gave up and closed. "
                                   "Fix the environment or policy, or allow more restarts.",
                                   worker.index, worker.env_indices, failure.traceback) from None
            worker.restarts += 1
            warnings.warn(f"{error}; restarting it ({worker.restarts}/{self.max_restarts})", RolloutWarning,
                          stacklevel=3)
            _stop(worker, grace_s=1.0)
            self._launch(worker)
            failure = self._bring_up(worker)
            if failure is None:
                return error

    def _bring_up(self, worker: _WorkerHandle) -> _Failure | None:
        """Take a freshly launched worker to the engine's state: spaces, memory, parameters, seeds."""
        hello, failures = self._gather([worker], "start")
        if failures:
            return failures[worker.index]
        spaces = (hello[worker.index]["observation_space"], hello[worker.index]["action_space"])
        if spaces != (self.single_observation_space, self.single_action_space):
            return _Failure(f"came back with different spaces {spaces}")
        steps: list[tuple[str, Any]] = [("attach", self._layouts())]
        if self._params_payload is not None:
            steps.append(("params", (self._version, self._params_payload)))
        if self._seeds is not None:
            steps.append(("reset", (self._seeds[worker.envs], self._reset_options)))
        for command, argument in steps:
            replies, failures = self._round(command, argument, [worker])
            if failures:
                return _Failure(f"{failures[worker.index].summary} while being restarted",
                                failures[worker.index].traceback)
            if command == "reset":
                worker.reset_infos = replies[worker.index]
        return None

    # -- helpers: data ------------------------------------------------------------------------

    def _layouts(self) -> dict[str, Any]:
        trajectory = self._blocks.get("trajectory")
        return {"step": self._blocks["step"].layout, "trajectory": trajectory.layout if trajectory else None}

    def _trajectory_block(self, n_steps: int) -> SharedBlock:
        """The (n_steps, num_envs, …) block, reallocated (and re-attached) when n_steps changes."""
        block = self._blocks.get("trajectory")
        if block is not None and block["rewards"].shape[0] == n_steps:
            return block
        e = self.num_envs
        new = SharedBlock.create({
            "obs": self._obs_spec.batched(n_steps, e),
            "final_obs": self._obs_spec.batched(n_steps, e),
            "actions": self._action_spec.batched(n_steps, e),
            "rewards": ArraySpec((n_steps, e), np.dtype(np.float64).str),
            "terminated": ArraySpec((n_steps, e), np.dtype(np.bool_).str),
            "truncated": ArraySpec((n_steps, e), np.dtype(np.bool_).str),
        })
        self._blocks["trajectory"] = new
        if block is not None:
            block.close()
        _, failures = self._round("attach", self._layouts(), self._workers)
        for w, failure in failures.items():
            self._restart(self._workers[w], failure)  # the restart attaches the new block
        return new

    def _check_actions(self, actions: Any) -> np.ndarray:
        try:
            actions = np.asarray(actions)
        except (TypeError, ValueError) as exc:
            raise ActionError(f"actions must be a numeric array, got {type(actions).__name__}: {exc}") from exc
        expected = (self.num_envs, *self._action_spec.shape)
        if actions.shape != expected:
            raise ActionError(f"actions have shape {actions.shape}, expected {expected}: one action of shape "
                              f"{self._action_spec.shape} for each of the {self.num_envs} envs "
                              f"({self.num_workers} workers x {self.envs_per_worker})")
        if isinstance(self.single_action_space, _DISCRETE_SPACES) and actions.dtype.kind not in "biu":
            raise ActionError(f"the action space is {self.single_action_space}: actions must be integers, "
                              f"got dtype {actions.dtype}")
        return actions

    def _expand_seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, int | np.integer):
            return [int(seed) + j for j in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ConfigError(f"reset got {len(seeds)} seeds for {self.num_envs} envs: pass one int (env j gets "
                              "seed + j) or exactly one seed per env")
        return [None if s is None else int(s) for s in seeds]

    def _require_open(self) -> None:
        if self.closed or not self._finalizer.alive:
            raise RolloutError("the rollout engine is closed; create a new RolloutEngine")

    def _require_reset(self, what: str) -> None:
        if self._seeds is None:
            raise ConfigError(f"{what}() before reset(): call reset(seed=...) first")


def _require_picklable(obj: Any, name: str) -> None:
    try:
        pickle.dumps(obj)
    except Exception as exc:
        raise ConfigError(f"{name} must be picklable to reach the worker processes (a Gymnasium id, an "
                          f"EnvFactory or a top-level function; not a lambda or closure): {exc}") from exc


def _numpy_params(params: Any) -> Any:
    """A mapping of torch tensors becomes a dict of numpy arrays; anything else is sent as it is."""
    if isinstance(params, Mapping):
        return {key: value.detach().cpu().numpy() if hasattr(value, "detach") else value
                for key, value in params.items()}
    return params


def _death(worker: _WorkerHandle) -> str:
    """How a worker's process ended, in words."""
    worker.process.join(timeout=1.0)
    code = worker.process.exitcode
    if code is None:
        return "closed its pipe but is still running"
    if code < 0:
        return f"died from signal {signal.Signals(-code).name} (exit code {code})"
    return f"exited with code {code}"


def _stop(worker: _WorkerHandle, grace_s: float) -> None:
    """Join a worker's process (terminating, then killing it if it lingers) and close its pipe."""
    if worker.process is not None:
        worker.process.join(timeout=grace_s)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(timeout=1.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.process.close()
    if worker.conn is not None:
        worker.conn.close()


def _shutdown(owner_pid: int, workers: list[_WorkerHandle], blocks: dict[str, SharedBlock]) -> None:
    """Ask every worker to exit, join them all, unlink the shared memory (the engine's finalizer).

    Only the process that created the engine does this: a forked copy of the learner must
    not stop the learner's workers when it exits.
    """
    if os.getpid() != owner_pid:
        return
    for worker in workers:
        if worker.conn is not None and not worker.conn.closed:
            with contextlib.suppress(OSError):  # already gone: nothing to ask
                worker.conn.send(("close", None))
    deadline = time.monotonic() + _SHUTDOWN_GRACE_S
    for worker in workers:
        _stop(worker, grace_s=max(0.0, deadline - time.monotonic()))
        worker.process, worker.conn = None, None
    for block in blocks.values():
        block.close()
    blocks.clear()
