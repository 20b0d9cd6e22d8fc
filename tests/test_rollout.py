"""Multi-process rollout engine: same results as SyncVectorEnv whatever the worker layout,
same-step autoreset, policy broadcast, crash and SIGKILL recovery, clean shutdown, bad input."""

import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import ds_robot  # noqa: F401  (registers ds_robot/UR5Grasp-v0)
from ds_robot.errors import ActionError, ConfigError
from ds_robot.rollout import EnvFactory, RolloutEngine, RolloutError, RolloutWarning

REPO = Path(__file__).resolve().parents[1]


# -- a test env that raises on a chosen step ------------------------------------------------


class CrashingEnv(gym.Env):
    """Observation ``[t, seed]``; the env reset with ``crash_seed`` fails on step ``crash_at``:
    it raises (``fault="raise"``) or hangs for a minute (``fault="hang"``).

    With ``trigger`` (a file path) it fails only while that file exists, and deletes it: one
    failure, after which the restarted worker runs normally. Without it, it fails every time.
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, crash_at: int, crash_seed: int, trigger: str | None = None, fault: str = "raise"):
        self.crash_at, self.crash_seed, self.trigger, self.fault = crash_at, crash_seed, trigger, fault
        self.t, self.seed = 0, -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        if seed is not None:
            self.seed = seed
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        if self.t == self.crash_at and self.seed == self.crash_seed:
            if self.trigger is None:
                self._fail()
            if os.path.exists(self.trigger):
                os.unlink(self.trigger)
                self._fail()
        return self._obs(), 1.0, self.t >= 50, False, {}

    def _fail(self):
        if self.fault == "hang":
            time.sleep(60)
        raise RuntimeError(f"boom at step {self.t}")

    def _obs(self):
        return np.array([self.t, self.seed], np.float32)


if "CrashingEnv-v0" not in gym.registry:
    gym.register(id="CrashingEnv-v0", entry_point=CrashingEnv)
CRASHING_ENV_ID = f"{__name__}:CrashingEnv-v0"  # "module:id": the worker imports this module, which registers it


def constant_policy(params, obs, rng):
    """Every env gets ``params["action"]``; the parameters must arrive as numpy arrays."""
    if not isinstance(params["action"], np.ndarray):
        raise TypeError(f"parameters arrived as {type(params['action']).__name__}, not numpy")
    return np.broadcast_to(params["action"], (len(obs), *params["action"].shape)).copy()


def wrong_shape_policy(params, obs, rng):
    return np.zeros(len(obs) + 1, dtype=np.int64)


# -- helpers --------------------------------------------------------------------------------


def sync_reference(env_id: str, num_envs: int, seed: int) -> tuple[gym.vector.SyncVectorEnv, np.ndarray]:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id)] * num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs, _ = envs.reset(seed=seed)
    return envs, obs


def random_actions(space: gym.Space, num_envs: int, steps: int, seed: int) -> list[np.ndarray]:
    batch = gym.vector.utils.batch_space(space, num_envs)
    batch.seed(seed)
    return [batch.sample() for _ in range(steps)]


def assert_same_step(ours, reference) -> None:
    obs, rewards, terminated, truncated, infos = ours
    ref_obs, ref_rewards, ref_terminated, ref_truncated, ref_infos = reference
    np.testing.assert_array_equal(obs, ref_obs)
    np.testing.assert_array_equal(rewards, ref_rewards)
    np.testing.assert_array_equal(terminated, ref_terminated)
    np.testing.assert_array_equal(truncated, ref_truncated)
    assert infos.keys() == ref_infos.keys()
    if "final_obs" in ref_infos:
        np.testing.assert_array_equal(infos["_final_obs"], ref_infos["_final_obs"])
        for j in np.flatnonzero(ref_infos["_final_obs"]):
            np.testing.assert_array_equal(infos["final_obs"][j], ref_infos["final_obs"][j])


def process_gone(pid: int, wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def assert_released(pids: list[int], shm_names: list[str]) -> None:
    assert pids and shm_names
    assert all(process_gone(pid) for pid in pids), "a rollout worker outlived the engine"
    assert not {p.pid for p in multiprocessing.active_children()} & set(pids)
    assert not [name for name in shm_names if Path("/dev/shm", name).exists()], "shared memory was not unlinked"


# -- mode A: the VectorEnv API --------------------------------------------------------------


@pytest.mark.parametrize("env_id, steps", [("CartPole-v1", 150), ("Pendulum-v1", 205)])
@pytest.mark.parametrize("num_workers, envs_per_worker", [(1, 4), (2, 2), (4, 1)])
def test_step_equals_sync_vector_env_for_every_worker_layout(env_id, steps, num_workers, envs_per_worker):
    engine = RolloutEngine(env_id, num_workers, envs_per_worker)
    try:
        reference, ref_obs = sync_reference(env_id, 4, seed=11)
        obs, _ = engine.reset(seed=11)
        np.testing.assert_array_equal(obs, ref_obs)
        assert engine.num_envs == 4 and engine.single_action_space == reference.single_action_space
        episode_ends = 0
        for actions in random_actions(engine.single_action_space, 4, steps, seed=3):
            ours, expected = engine.step(actions), reference.step(actions)
            assert_same_step(ours, expected)
            episode_ends += int((expected[2] | expected[3]).sum())
        assert episode_ends >= 4  # the comparison covered autoresets (CartPole falls, Pendulum hits 200 steps)
    finally:
        engine.close()


def test_same_step_autoreset_reports_the_final_observation():
    engine = RolloutEngine("CartPole-v1", 2, 1)
    try:
        previous, _ = engine.reset(seed=0)
        for _ in range(40):  # always pushing right: the pole falls within a few dozen steps
            obs, rewards, terminated, truncated, infos = engine.step(np.ones(2, dtype=np.int64))
            if terminated.any():
                break
            previous = obs
        assert terminated.any() and not truncated.any()
        for j in range(2):
            assert infos["_final_obs"][j] == terminated[j]
            if terminated[j]:
                final = infos["final_obs"][j]
                assert abs(final[2]) > 0.2095 or abs(final[0]) > 2.4  # the fall that ended the episode
                assert abs(final[2] - previous[j][2]) < 0.1  # continues the episode
                assert np.all(np.abs(obs[j]) <= 0.05)  # obs is already the next episode's first
    finally:
        engine.close()


def test_ur5_grasp_env_steps_through_two_workers():
    engine = RolloutEngine("ds_robot/UR5Grasp-v0", 2, 1)
    try:
        reference, ref_obs = sync_reference("ds_robot/UR5Grasp-v0", 2, seed=5)
        obs, _ = engine.reset(seed=5)
        np.testing.assert_array_equal(obs, ref_obs)
        assert engine.single_observation_space.shape == (35,)
        rng = np.random.default_rng(0)
        for _ in range(20):
            actions = rng.uniform(-0.3, 0.3, (2, 7)).astype(np.float32)
            ours, expected = engine.step(actions), reference.step(actions)
            assert_same_step(ours, expected)
            for key in ("energy_j", "success", "lifted", "object"):
                np.testing.assert_array_equal(ours[4][key], expected[4][key])
    finally:
        engine.close()


def test_wrong_actions_raise_a_clear_error_and_leave_the_engine_usable():
    engine = RolloutEngine("CartPole-v1", 1, 2)
    try:
        with pytest.raises(ConfigError, match="before reset"):
            engine.step(np.zeros(2, dtype=np.int64))
        engine.reset(seed=0)
        with pytest.raises(ActionError, match=r"shape \(3,\), expected \(2,\)"):
            engine.step(np.zeros(3, dtype=np.int64))
        with pytest.raises(ActionError, match=r"shape \(2, 1\)"):
            engine.step(np.zeros((2, 1), dtype=np.int64))
        with pytest.raises(ActionError, match="integers"):
            engine.step(np.array([0.5, 1.0]))
        assert engine.step(np.array([0, 1]))[0].shape == (2, 4)
    finally:
        engine.close()


def test_bad_factories_fail_at_construction_without_leftovers():
    with pytest.raises(ConfigError, match="picklable"):
        RolloutEngine(lambda: gym.make("CartPole-v1"), 1)
    with pytest.raises(RolloutError, match=r"could not start.*NoSuchEnv"):
        RolloutEngine("NoSuchEnv-v0", 1)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("ds-robot-rollout")]


# -- mode B: policy broadcast ---------------------------------------------------------------


def test_broadcast_reaches_every_worker_and_collect_merges_their_trajectories():
    import torch  # here, not at the top: workers import this module for its policies, and torch is slow to load

    engine = RolloutEngine("CartPole-v1", 2, 2, policy_fn=constant_policy)
    try:
        with pytest.raises(ConfigError, match="before broadcast"):
            engine.collect(4)
        engine.reset(seed=7)
        reference, _ = sync_reference("CartPole-v1", 4, seed=7)
        for version, action in [(1, 1), (2, 0), (3, 1)]:
            engine.broadcast({"action": torch.tensor(action)}, version)  # a state_dict arrives as numpy
            trajectory = engine.collect(30)
            assert trajectory.obs.shape == (30, 4, 4) and trajectory.actions.shape == (30, 4)
            np.testing.assert_array_equal(trajectory.policy_versions, version)
            assert (trajectory.actions == action).all() and not trajectory.restarted.any()
            for t in range(30):  # the merged batch is exactly what one SyncVectorEnv gives
                obs_before = reference.step(np.full(4, action))
                np.testing.assert_array_equal(trajectory.rewards[t], obs_before[1])
                np.testing.assert_array_equal(trajectory.terminated[t], obs_before[2])
                np.testing.assert_array_equal(trajectory.truncated[t], obs_before[3])
                for j in np.flatnonzero(trajectory.dones[t]):
                    np.testing.assert_array_equal(trajectory.final_obs[t, j], obs_before[4]["final_obs"][j])
                if t + 1 < 30:
                    np.testing.assert_array_equal(trajectory.obs[t + 1], obs_before[0])
            np.testing.assert_array_equal(trajectory.last_obs, obs_before[0])
            assert trajectory.dones.any() and engine.policy_version == version
    finally:
        engine.close()


# -- crashes --------------------------------------------------------------------------------


def test_env_exception_in_step_is_reported_and_the_worker_restarted(tmp_path):
    trigger = tmp_path / "crash-once"
    trigger.touch()
    factory = EnvFactory(CRASHING_ENV_ID, {"crash_at": 3, "crash_seed": 2, "trigger": str(trigger)})
    engine = RolloutEngine(factory, 2, 2)
    try:
        engine.reset(seed=0)
        old_pid = engine.worker_pids[1]
        engine.step(np.zeros(4, dtype=np.int64))
        engine.step(np.zeros(4, dtype=np.int64))
        with pytest.warns(RolloutWarning, match="restarting"):
            obs, rewards, terminated, truncated, infos = engine.step(np.zeros(4, dtype=np.int64))
        error = infos["rollout_error"][2]
        assert isinstance(error, RolloutError) and error.worker_index == 1 and error.env_indices == (2, 3)
        assert "worker 1 (envs 2-3" in str(error) and "env 2 raised RuntimeError: boom at step 3" in str(error)
        assert "boom" in error.worker_traceback and engine.errors == [error]
        np.testing.assert_array_equal(infos["rollout_reset"], [False, False, True, True])
        np.testing.assert_array_equal(infos["_rollout_reset"], [False, False, True, True])
        # envs 0-1 stepped normally; envs 2-3 were re-created, reset with their seeds, reported truncated
        np.testing.assert_array_equal(obs, [[3, 0], [3, 1], [0, 2], [0, 3]])
        np.testing.assert_array_equal(truncated, [False, False, True, True])
        assert not terminated.any() and rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
        np.testing.assert_array_equal(infos["_final_obs"], [False, False, True, True])
        np.testing.assert_array_equal(infos["final_obs"][2], [2, 2])  # the last observation before the crash
        assert engine.worker_pids[1] != old_pid and process_gone(old_pid)
        obs, *_ = engine.step(np.zeros(4, dtype=np.int64))
        np.testing.assert_array_equal(obs[:, 0], [4, 4, 1, 1])
    finally:
        engine.close()


def test_crash_during_collect_is_recollected_so_no_corrupted_data_is_returned(tmp_path):
    trigger = tmp_path / "crash-once"
    factory = EnvFactory(CRASHING_ENV_ID, {"crash_at": 6, "crash_seed": 2, "trigger": str(trigger)})
    engine = RolloutEngine(factory, 2, 2, policy_fn=constant_policy)
    try:
        engine.reset(seed=0)
        engine.broadcast({"action": np.array(1)}, version=4)
        engine.collect(4)  # no trigger yet: every env reaches t = 4
        trigger.touch()
        with pytest.warns(RolloutWarning):
            trajectory = engine.collect(4)  # env 2 crashes going from t = 5 to 6
        np.testing.assert_array_equal(trajectory.restarted, [False, False, True, True])
        np.testing.assert_array_equal(trajectory.policy_versions, 4)
        assert "env 2 raised RuntimeError: boom at step 6" in str(trajectory.errors[0])
        np.testing.assert_array_equal(trajectory.obs[:, :, 0].T, [[4, 5, 6, 7], [4, 5, 6, 7],
                                                                    [0, 1, 2, 3], [0, 1, 2, 3]])
        np.testing.assert_array_equal(trajectory.last_obs[:, 0], [8, 8, 4, 4])
        assert not trajectory.dones.any()
    finally:
        engine.close()


def test_a_worker_that_keeps_crashing_exhausts_max_restarts():
    factory = EnvFactory(CRASHING_ENV_ID, {"crash_at": 2, "crash_seed": 1})
    engine = RolloutEngine(factory, 2, 1, policy_fn=constant_policy, max_restarts=1)
    pids, names = engine.worker_pids, engine.shared_memory_names
    engine.reset(seed=0)
    engine.broadcast({"action": np.array(0)}, 1)
    with pytest.warns(RolloutWarning), pytest.raises(RolloutError, match=r"worker 1 \(env 1.*max_restarts=1"):
        engine.collect(5)
    assert len(engine.errors) == 2 and engine.closed
    assert_released(pids, names)
    with pytest.raises(RolloutError, match="closed"):
        engine.reset(seed=0)


def test_a_policy_returning_the_wrong_shape_is_reported():
    engine = RolloutEngine("CartPole-v1", 1, 2, policy_fn=wrong_shape_policy, max_restarts=0)
    engine.reset(seed=0)
    engine.broadcast({}, 1)
    with pytest.raises(RolloutError, match=r"policy_fn returned actions of shape \(3,\) for 2 observations"):
        engine.collect(2)


def test_a_silent_worker_is_timed_out_and_replaced(tmp_path):
    trigger = tmp_path / "hang-once"
    trigger.touch()
    factory = EnvFactory(CRASHING_ENV_ID, {"crash_at": 1, "crash_seed": 1, "trigger": str(trigger), "fault": "hang"})
    with RolloutEngine(factory, 2, 1, worker_timeout_s=3.0) as engine:
        engine.reset(seed=0)
        hung = engine.worker_pids[1]
        with pytest.warns(RolloutWarning, match=r"worker 1 .*did not answer 'step' within worker_timeout_s=3.0 s"):
            obs, _, _, truncated, infos = engine.step(np.zeros(2, dtype=np.int64))
        np.testing.assert_array_equal(infos["_rollout_reset"], [False, True])
        np.testing.assert_array_equal(obs, [[1, 0], [0, 1]])
        assert truncated.tolist() == [False, True] and process_gone(hung)
    assert engine.closed


def test_a_sigkilled_worker_is_detected_and_replaced():
    engine = RolloutEngine("CartPole-v1", 2, 1, policy_fn=constant_policy)
    try:
        engine.reset(seed=0)
        engine.broadcast({"action": np.array(1)}, 9)
        victim = engine.worker_pids[1]
        os.kill(victim, signal.SIGKILL)
        with pytest.warns(RolloutWarning, match="SIGKILL"):
            _, rewards, _, truncated, infos = engine.step(np.zeros(2, dtype=np.int64))
        np.testing.assert_array_equal(infos["_rollout_reset"], [False, True])
        assert "worker 1" in str(infos["rollout_error"][1]) and truncated[1] and rewards[1] == 0.0
        assert process_gone(victim) and victim not in engine.worker_pids

        victim = engine.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        with pytest.warns(RolloutWarning, match="SIGKILL"):
            trajectory = engine.collect(8)  # the replacement got the broadcast parameters too
        np.testing.assert_array_equal(trajectory.restarted, [True, False])
        np.testing.assert_array_equal(trajectory.policy_versions, 9)
        assert (trajectory.actions == 1).all() and len(engine.errors) == 2
    finally:
        engine.close()


# -- shutdown -------------------------------------------------------------------------------


def test_close_joins_every_worker_and_unlinks_shared_memory():
    engine = RolloutEngine("Pendulum-v1", 2, 1, policy_fn=constant_policy)
    engine.reset(seed=0)
    engine.broadcast({"action": np.array([0.5], np.float32)}, 1)
    assert engine.collect(3).actions.shape == (3, 2, 1)
    pids, names = engine.worker_pids, engine.shared_memory_names
    assert len(names) == 2 and all(Path("/dev/shm", name).exists() for name in names)
    engine.close()
    engine.close()  # idempotent
    assert_released(pids, names)
    with pytest.raises(RolloutError, match="closed"):
        engine.step(np.zeros((2, 1), np.float32))


def test_garbage_collection_releases_workers_and_memory():
    engine = RolloutEngine("CartPole-v1", 2, 1)
    pids, names = engine.worker_pids, engine.shared_memory_names
    del engine
    gc.collect()
    assert_released(pids, names)


SCRIPT = textwrap.dedent("""
    import json, signal, sys
    # Ctrl-C must reach this process whatever the test runner's process left behind (an ignored
    # or blocked SIGINT is inherited across exec): the test is about the engine, not the runner.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import numpy as np
    from ds_robot.rollout import RolloutEngine

    if __name__ == "__main__":
        engine = RolloutEngine("CartPole-v1", 2, 1)
        engine.reset(seed=0)
        print(json.dumps({"pids": engine.worker_pids, "shm": engine.shared_memory_names}), flush=True)
        if sys.argv[1] == "interrupt":
            while True:
                engine.step(np.zeros(2, dtype=np.int64))
""")


@pytest.mark.parametrize("ending", ["exit", "interrupt"])
def test_interpreter_exit_and_ctrl_c_release_workers_and_memory(tmp_path, ending):
    script = tmp_path / "run_engine.py"
    script.write_text(SCRIPT)
    child = subprocess.Popen([sys.executable, str(script), ending], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        started = json.loads(child.stdout.readline())
        if ending == "interrupt":
            time.sleep(0.3)
            os.killpg(child.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, workers included
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert ("KeyboardInterrupt" in stderr) == (ending == "interrupt"), stderr
    assert "leaked" not in stderr  # the resource tracker had nothing to clean up
    assert_released(started["pids"], started["shm"])
