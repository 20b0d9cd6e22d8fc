"""Atari preprocessing (frame skip 4 with max-pooling, 84x84 area resize, stack of 4, no-op
starts, episodic life, FIRE reset), its determinism through the rollout engine, and the quick
Atari benchmark. Pooling, stacking and life handling are pinned on a stand-in game whose
screens are known exactly; the rest runs ale-py's Pong."""

import json
import pickle
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from ds_robot.envs.atari import (
    AreaResize,
    AtariEnvFactory,
    AtariPreprocess,
    FrameStack,
    ale_rom_name,
    atari_env_id,
    make_atari_env,
    max_pool_frames,
    preprocess_atari,
    require_ale,
)
from ds_robot.errors import ConfigError

pytest.importorskip("ale_py")


# -- a stand-in ALE game with known screens ----------------------------------------------------


class FakeALE:
    """The two ALE calls AtariPreprocess makes, with camelCase names as in ale-py."""

    def __init__(self, shape: tuple[int, int]):
        self.screen = np.zeros(shape, np.uint8)

    def getScreenDims(self):
        return self.screen.shape

    def getScreenGrayscale(self, out):
        out[...] = self.screen


def fake_screen(frame: int, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Frame t lights one pixel, at a place and with a value that only t has (flicker-like)."""
    screen = np.zeros(shape, np.uint8)
    screen[(frame // shape[1]) % shape[0], frame % shape[1]] = 50 + frame % 200
    return screen


class FakeAtariEnv(gym.Env):
    """One ALE frame per step; ``lives = lives0 - frame // life_every``; the game ends at ``end_at``."""

    observation_space = gym.spaces.Box(0, 255, (128,), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, end_at: int = 10_000, lives0: int = 0, life_every: int = 10**9):
        self.ale = FakeALE((8, 8))
        self.end_at, self.lives0, self.life_every = end_at, lives0, life_every
        self.frame, self.resets, self.actions = 0, 0, []

    def get_action_meanings(self):
        return ["NOOP", "FIRE", "UP"]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.frame, self.resets, self.actions = 0, self.resets + 1, []
        self.ale.screen = fake_screen(0)
        return np.zeros(128, np.uint8), self._info()

    def step(self, action):
        self.frame += 1
        self.actions.append(int(action))
        self.ale.screen = fake_screen(self.frame)
        return np.zeros(128, np.uint8), 1.0, self.frame >= self.end_at, False, self._info()

    def _info(self):
        return {"lives": max(0, self.lives0 - self.frame // self.life_every), "episode_frame_number": self.frame}


# -- pooling, resizing, stacking ---------------------------------------------------------------


def test_max_pooling_keeps_the_brighter_pixel_of_the_last_two_frames():
    older, newer = fake_screen(3), fake_screen(4)
    pooled = max_pool_frames(older, newer)
    assert np.array_equal(pooled, np.maximum(older, newer)) and np.count_nonzero(pooled) == 2
    assert np.array_equal(max_pool_frames(None, newer), newer)


def test_a_step_repeats_the_action_frame_skip_times_and_pools_only_its_last_two_frames():
    env = AtariPreprocess(FakeAtariEnv(), frame_skip=4, noop_max=0, screen_size=8)
    obs, info = env.reset(seed=0)
    assert info["episode_frame_number"] == 0 and np.array_equal(obs, fake_screen(0))
    obs, reward, terminated, truncated, info = env.step(2)
    assert env.unwrapped.actions == [2, 2, 2, 2] and reward == 4.0 and info["episode_frame_number"] == 4
    assert np.array_equal(obs, np.maximum(fake_screen(3), fake_screen(4)))
    obs, *_ = env.step(2)
    assert np.array_equal(obs, np.maximum(fake_screen(7), fake_screen(8)))


def test_an_episode_ending_inside_a_repeat_is_observed_on_its_last_frame():
    env = AtariPreprocess(FakeAtariEnv(end_at=6), frame_skip=4, noop_max=0, screen_size=8)
    env.reset(seed=0)
    env.step(0)
    obs, reward, terminated, _, info = env.step(0)
    assert terminated and reward == 2.0 and info["episode_frame_number"] == 6
    assert np.array_equal(obs, fake_screen(6))


def _exact_area(image: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    def weights(n_in: int, n_out: int) -> np.ndarray:
        scale = n_in / n_out
        edges = np.arange(n_out + 1) * scale
        pixels = np.arange(n_in)
        overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
        return np.clip(overlap, 0, None) / scale

    return weights(image.shape[0], out_shape[0]) @ image.astype(float) @ weights(image.shape[1], out_shape[1]).T


@pytest.mark.parametrize("out_shape", [(84, 84), (83, 83), (105, 80), (42, 50)])
def test_area_resize_averages_the_covered_area_exactly(out_shape):
    image = np.random.default_rng(0).integers(0, 256, (210, 160)).astype(np.uint8)
    resized = AreaResize((210, 160), out_shape)(image)
    assert resized.dtype == np.uint8 and resized.shape == out_shape
    # rounded half up; an exact .5 may land on either side in float32
    assert np.abs(resized - np.floor(_exact_area(image, out_shape) + 0.5)).max() <= 1


def test_area_resize_by_an_integer_factor_is_the_mean_of_each_block():
    image = np.random.default_rng(1).integers(0, 256, (210, 160)).astype(np.uint8)
    blocks = AreaResize((210, 160), (105, 80))(image)
    assert np.array_equal(blocks, np.floor(image.reshape(105, 2, 80, 2).mean((1, 3)) + 0.5).astype(np.uint8))
    assert np.array_equal(AreaResize((210, 160), (210, 160))(image), image)


def test_frames_are_stacked_oldest_first_newest_last():
    stacked = preprocess_atari(FakeAtariEnv(), frame_skip=4, noop_max=0, screen_size=8, frame_stack=4)
    single = AtariPreprocess(FakeAtariEnv(), frame_skip=4, noop_max=0, screen_size=8)
    obs, _ = stacked.reset(seed=0)
    first, _ = single.reset(seed=0)
    assert obs.shape == (4, 8, 8) and all(np.array_equal(frame, first) for frame in obs)  # padded with the reset
    history = [first]
    for _ in range(6):
        obs, *_ = stacked.step(1)
        history.append(single.step(1)[0])
        assert np.array_equal(obs, np.stack(([history[0]] * 4 + history)[-4:]))
    assert np.array_equal(obs[-1], np.maximum(fake_screen(23), fake_screen(24)))


def test_frame_stack_returns_what_gymnasiums_frame_stack_observation_returns():
    ours = FrameStack(AtariPreprocess(FakeAtariEnv(), noop_max=0, screen_size=8), 3)
    theirs = gym.wrappers.FrameStackObservation(AtariPreprocess(FakeAtariEnv(), noop_max=0, screen_size=8), 3)
    assert ours.observation_space == theirs.observation_space
    kept, _ = ours.reset(seed=0)
    assert np.array_equal(kept, theirs.reset(seed=0)[0])
    for _ in range(5):
        obs, *_ = ours.step(2)
        assert np.array_equal(obs, theirs.step(2)[0])
    assert not np.array_equal(kept, obs) and np.array_equal(kept, np.stack([fake_screen(0)] * 3))  # fresh arrays


# -- lives and FIRE ----------------------------------------------------------------------------


def test_episodic_life_ends_the_episode_on_a_lost_life_but_continues_the_game():
    env = AtariPreprocess(FakeAtariEnv(end_at=30, lives0=3, life_every=10), frame_skip=4, noop_max=0,
                          screen_size=8, episodic_life=True)
    game = env.unwrapped
    env.reset(seed=0)
    ends = []
    for _ in range(20):
        _, _, terminated, truncated, info = env.step(2)
        if terminated or truncated:
            ends.append((info["episode_frame_number"], info.get("life_lost", False)))
            resets = game.resets
            _, reset_info = env.reset()
            if info.get("life_lost"):  # same game, one NOOP step further
                assert game.resets == resets and game.actions[-4:] == [0, 0, 0, 0]
                assert reset_info["episode_frame_number"] == info["episode_frame_number"] + 4
            else:
                assert game.resets == resets + 1 and reset_info["episode_frame_number"] == 0
                break
    assert ends == [(12, True), (20, True), (30, False)]
    env.step(2)
    env.step(2)
    env.step(2)  # frame 12: a life is lost again
    env.reset(seed=1)  # a seeded reset always restarts the game
    assert game.resets == 3


def test_without_episodic_life_a_lost_life_does_not_end_the_episode():
    env = AtariPreprocess(FakeAtariEnv(lives0=3, life_every=10), frame_skip=4, noop_max=0, screen_size=8)
    env.reset(seed=0)
    assert not any(env.step(0)[2] for _ in range(10))


def test_fire_reset_presses_fire_after_each_reset_only_when_asked():
    env = AtariPreprocess(FakeAtariEnv(), frame_skip=4, noop_max=0, screen_size=8, fire_reset=True)
    _, info = env.reset(seed=0)
    assert env.unwrapped.actions == [1, 1, 1, 1] and info["episode_frame_number"] == 4
    env = AtariPreprocess(FakeAtariEnv(), frame_skip=4, noop_max=0, screen_size=8)
    env.reset(seed=0)
    assert env.unwrapped.actions == []


# -- ale-py Pong ---------------------------------------------------------------------------------


def test_pong_observations_are_four_stacked_84x84_uint8_frames():
    env = make_atari_env("Pong", seed=0)
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and obs in env.observation_space
    for _ in range(5):
        previous = obs
        obs, *_ = env.step(env.action_space.sample())
        assert obs in env.observation_space and np.array_equal(obs[:-1], previous[1:])
    env.close()


@pytest.mark.parametrize("frame_skip", [4, 2])
def test_one_step_advances_the_ale_frame_counter_by_frame_skip(frame_skip):
    env = make_atari_env("Pong", frame_skip=frame_skip, noop_max=0)
    ale = env.unwrapped.ale
    env.reset(seed=0)
    assert ale.getEpisodeFrameNumber() == 0
    for n in range(1, 6):
        _, _, _, _, info = env.step(0)
        assert ale.getEpisodeFrameNumber() == info["episode_frame_number"] == n * frame_skip
    env.close()


def test_noop_starts_play_between_one_and_noop_max_frames():
    env = make_atari_env("Pong", noop_max=5)
    starts = {env.reset(seed=seed)[1]["episode_frame_number"] for seed in range(12)}
    assert starts <= set(range(1, 6)) and len(starts) > 1
    assert make_atari_env("Pong", noop_max=0).reset(seed=0)[1]["episode_frame_number"] == 0
    env.close()


def test_identical_seeds_give_identical_observations_with_sticky_actions():
    first, second = make_atari_env("Pong"), make_atari_env("Pong")
    assert first.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    obs_a, _ = first.reset(seed=5)
    obs_b, _ = second.reset(seed=5)
    actions = np.random.default_rng(0).integers(0, 6, 60)
    for action in actions:
        assert np.array_equal(obs_a, obs_b)
        obs_a, reward_a, *_ = first.step(action)
        obs_b, reward_b, *_ = second.step(action)
        assert reward_a == reward_b
    assert np.array_equal(obs_a, obs_b)


def test_the_factory_is_picklable_and_makes_the_configured_env():
    factory = pickle.loads(pickle.dumps(AtariEnvFactory("Pong", frame_stack=2, screen_size=64)))
    env = factory()
    assert env.observation_space.shape == (2, 64, 64)
    env.close()


def test_names_of_games():
    assert atari_env_id("Pong") == "ALE/Pong-v5" and atari_env_id("ALE/Breakout-v5") == "ALE/Breakout-v5"
    assert ale_rom_name("MsPacman") == "ms_pacman" and ale_rom_name("ALE/Pong-v5") == "pong"


def test_bad_settings_and_a_missing_ale_py_fail_with_a_clear_message(monkeypatch):
    with pytest.raises(ConfigError, match="frame_skip=0"):
        make_atari_env("Pong", frame_skip=0)
    with pytest.raises(ConfigError, match="cannot make Atari environment 'ALE/NoSuchGame-v5'"):
        make_atari_env("NoSuchGame")
    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(ConfigError, match="pip install 'ale-py"):
        require_ale()


def test_the_rollout_engine_with_two_workers_matches_a_sync_vector_env_with_sticky_actions():
    from ds_robot.rollout import RolloutEngine

    factory = AtariEnvFactory("Pong")  # sticky actions 0.25: the ALE's RNG is seeded per env by reset(seed)
    sync = gym.vector.SyncVectorEnv([factory] * 4, autoreset_mode=AutoresetMode.SAME_STEP)
    with RolloutEngine(factory, num_workers=2, envs_per_worker=2, worker_timeout_s=60) as engine:
        obs_engine, _ = engine.reset(seed=11)
        obs_sync, _ = sync.reset(seed=11)
        assert np.array_equal(obs_engine, obs_sync)
        for actions in np.random.default_rng(1).integers(0, 6, (40, 4)):
            obs_engine, rewards_engine, term_engine, trunc_engine, _ = engine.step(actions)
            obs_sync, rewards_sync, term_sync, trunc_sync, _ = sync.step(actions)
            assert np.array_equal(obs_engine, obs_sync) and np.array_equal(rewards_engine, rewards_sync)
            assert np.array_equal(term_engine, term_sync) and np.array_equal(trunc_engine, trunc_sync)
    sync.close()


# -- the benchmark -------------------------------------------------------------------------------


def test_quick_atari_benchmark_writes_every_variant_and_peer(tmp_path, capsys):
    from ds_robot.bench.atari import run_atari_benchmark

    path = tmp_path / "atari.json"
    assert run_atari_benchmark(quick=True, json_path=path) == 0
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "atari" and doc["config"]["quick"]
    rows = {row["name"]: row for row in doc["results"]}
    layouts = {"ds_robot_w1_e4", "ds_robot_w2_e4"}
    best_name = doc["config"]["best_layout"]
    assert best_name in layouts
    modes = {f"{best_name}_policy", f"{best_name}_collect", f"{best_name}_collect_policy"}
    assert set(rows) == {"single", *layouts, "ale_vector", "envpool", "gym_async", *modes}
    best = rows[doc["config"]["best_layout"]]
    for name, row in rows.items():
        if row.get("missing") or row.get("failed"):
            assert name in ("ale_vector", "envpool", "gym_async") and row["num_envs"] == best["num_envs"]
            continue
        assert row["frames_per_s"] > 0 and len(row["frames_per_s_ci95"]) == 2
        assert row["num_envs"] >= 1 and row["workers"] >= 1
    assert rows["ds_robot_w2_e4"]["num_envs"] == 8 and rows["ds_robot_w2_e4"]["workers"] == 2
    for peer in ("ale_vector", "envpool", "gym_async"):
        assert rows[peer]["num_envs"] == best["num_envs"]
    out = capsys.readouterr().out
    assert "frames/s" in out and "best ds-robot" in out and "seed claim" in out
