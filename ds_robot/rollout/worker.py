"""The worker process of the rollout engine: owns a few environments, answers the learner.

Protocol (one pipe per worker; every message is a small ``(command, argument)`` tuple and
every command gets exactly one reply, ``("ok", result)`` or ``("error", details)``):

============  ====================================  =========================================
command       argument                              what the worker does / replies
============  ====================================  =========================================
(start)       none, sent by the worker unasked      creates its envs; replies with the spaces
``attach``    ``{"step": layout, "trajectory": …}``  maps the learner's shared-memory blocks
``reset``     ``(seeds, options)``                  resets its envs; writes ``obs``; infos
``step``      none (actions are in shared memory)   steps with same-step autoreset; infos
``params``    ``(version, pickled params)``         stores the policy parameters
``collect``   ``n_steps``                           rolls the policy out; replies the version
``close``     none                                  closes its envs and exits (no reply)
============  ====================================  =========================================

After an ``error`` reply the worker exits: the learner restarts it. The worker ignores
SIGINT (Ctrl-C reaches the whole process group; the learner decides how to shut down) and
exits by itself when the learner's end of the pipe closes, so it never outlives the learner.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np

import ds_robot  # noqa: F401  (registers ds_robot/UR5Grasp-v0 in this process)
from ds_robot.errors import ActionError
from ds_robot.rollout.shared import BlockLayout, SharedBlock

POLICY_STREAM = 0x706F6C
"""Mixed into the policy generator's seed so it never replays an env's own random stream."""


def worker_main(conn: Connection, worker_index: int, first_env: int, num_envs: int,
                env_fn: Callable[[], gym.Env], policy_fn: Callable[..., Any] | None) -> None:
    """Entry point of a worker process (top level, so the spawn start method can import it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _Worker(conn, worker_index, first_env, num_envs, env_fn, policy_fn).serve()


class _Worker:
    def __init__(self, conn: Connection, worker_index: int, first_env: int, num_envs: int,
                 env_fn: Callable[[], gym.Env], policy_fn: Callable[..., Any] | None):
        self.conn = conn
        self.worker_index = worker_index
        self.first_env = first_env
        self.num_envs = num_envs
        self.slice = slice(first_env, first_env + num_envs)
        self.env_fn = env_fn
        self.policy_fn = policy_fn
        self.envs: list[gym.Env] = []
        self.blocks: dict[str, SharedBlock] = {}
        self.params: Any = None
        self.version: int | None = None
        self.rng = np.random.default_rng()
        self.current_env: int | None = None  # global index of the env being worked on, for error reports
        self.handlers: dict[str, Callable[[Any], Any]] = {
            "attach": self.attach, "reset": self.reset, "step": self.step,
            "params": self.set_params, "collect": self.collect,
        }

    # -- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        try:
            if not self.run("start", self.start, None):
                return
            while True:
                try:
                    command, argument = self.conn.recv()
                except (EOFError, OSError):  # the learner is gone
                    return
                if command == "close" or not self.run(command, self.handlers[command], argument):
                    return
        finally:
            self.release()

    def run(self, command: str, handler: Callable[[Any], Any], argument: Any) -> bool:
        """Run one command and reply; False when the worker must stop."""
        self.current_env = None
        try:
            reply = ("ok", handler(argument))
        except Exception as exc:
            reply = ("error", {"during": command, "env": self.current_env,
                               "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        try:
            self.conn.send(reply)
        except OSError:
            return False
        return reply[0] == "ok"

    def release(self) -> None:
        for env in self.envs:
            with contextlib.suppress(Exception):  # best effort on the way out; the process ends anyway
                env.close()
        for block in self.blocks.values():
            block.close()
        self.blocks = {}
        self.conn.close()

    # -- commands -----------------------------------------------------------------------------

    def start(self, _: None) -> dict[str, Any]:
        for k in range(self.num_envs):
            self.current_env = self.first_env + k
            self.envs.append(self.env_fn())
        first = self.envs[0]
        return {"observation_space": first.observation_space, "action_space": first.action_space}

    def attach(self, layouts: dict[str, BlockLayout | None]) -> None:
        for role, layout in layouts.items():
            old = self.blocks.get(role)
            if old is not None and (layout is None or old.name != layout.name):
                old.close()
                del self.blocks[role]
            if layout is not None and role not in self.blocks:
                self.blocks[role] = SharedBlock.attach(layout)

    def reset(self, argument: tuple[list[int | None], dict | None]) -> list[dict]:
        seeds, options = argument
        obs = self.blocks["step"]["obs"]
        infos = []
        for k, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            self.current_env = self.first_env + k
            obs[self.current_env], info = env.reset(seed=seed, options=options)
            infos.append(info)
        self.rng = np.random.default_rng(None if seeds[0] is None else [seeds[0], POLICY_STREAM])
        return infos

    def step(self, _: None) -> list[tuple[dict | None, dict]]:
        """Step every env with its action from shared memory; reply ``(final_info or None, info)`` per env."""
        block = self.blocks["step"]
        obs, actions, final_obs = block["obs"], block["actions"], block["final_obs"]
        infos = []
        for k, env in enumerate(self.envs):
            j = self.current_env = self.first_env + k
            observation, reward, terminated, truncated, info = env.step(_action(actions[j]))
            block["rewards"][j], block["terminated"][j], block["truncated"][j] = reward, terminated, truncated
            final_info = None
            if terminated or truncated:  # same-step autoreset
                final_obs[j], final_info = observation, info
                observation, info = env.reset()
            obs[j] = observation
            infos.append((final_info, info))
        return infos

    def set_params(self, argument: tuple[int, bytes]) -> None:
        version, payload = argument
        self.params, self.version = pickle.loads(payload), version

    def collect(self, n_steps: int) -> dict[str, int | None]:
        """Roll the policy out for ``n_steps`` from the envs' current observations."""
        if self.policy_fn is None or self.version is None:
            raise RuntimeError("collect needs a policy_fn and broadcast parameters")
        traj, obs = self.blocks["trajectory"], self.blocks["step"]["obs"]
        action_shape = traj["actions"].shape[2:]
        for t in range(n_steps):
            self.current_env = None
            local_obs = np.array(obs[self.slice])
            actions = np.asarray(self.policy_fn(self.params, local_obs, self.rng))
            if actions.shape != (self.num_envs, *action_shape):
                raise ActionError(f"policy_fn returned actions of shape {actions.shape} for {self.num_envs} "
                                  f"observations; expected {(self.num_envs, *action_shape)}")
            traj["obs"][t, self.slice] = local_obs
            traj["actions"][t, self.slice] = actions
            for k, env in enumerate(self.envs):
                j = self.current_env = self.first_env + k
                observation, reward, terminated, truncated, _ = env.step(_action(traj["actions"][t, j]))
                traj["rewards"][t, j], traj["terminated"][t, j], traj["truncated"][t, j] = reward, terminated, truncated
                if terminated or truncated:
                    traj["final_obs"][t, j] = observation
                    observation, _ = env.reset()
                obs[j] = observation
        return {"version": self.version}


def _action(action: np.ndarray) -> Any:
    """A private copy of one env's action (a scalar stays a numpy scalar, as in SyncVectorEnv)."""
    return action.copy() if action.ndim else action[()]

