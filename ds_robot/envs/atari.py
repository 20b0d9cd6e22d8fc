"""Standard Atari preprocessing for ale-py environments, as Gymnasium wrappers.

The pipeline is the one of Mnih et al. (2015) and Machado et al. (2018), in the form the
OpenAI baselines, envpool and ale-py's own ``AtariVectorEnv`` implement it:

1. ``gym.make("ALE/<Game>-v5", frameskip=1, obs_type="ram")``: the ALE steps one frame per
   call; the wrapper reads the grayscale screen (210x160, the ALE's own NTSC luminance) from
   the ALE for the frames it pools, so the env's own observation is the cheapest one, RAM.
   v5's **sticky actions are kept**: ``repeat_action_probability=0.25`` (each ALE frame
   repeats the previous action with probability 0.25; Machado et al.'s recommendation and
   the v5 default). They are drawn by the ALE's RNG, which ``reset(seed=s)`` seeds, so an
   env reset with the same seed replays the same frames. Pass 0 to turn them off.
2. ``AtariPreprocess``: one agent step = ``frame_skip`` (4) ALE frames with the same action,
   rewards summed; the observation is the pixel-wise max over the last two of those frames
   (Atari sprites flicker between frames), resized to ``screen_size`` x ``screen_size``
   (84x84) by exact area averaging (what OpenCV's ``INTER_AREA``, used by envpool and
   ale-py's vector env, computes when shrinking; done in numpy, so no OpenCV is needed);
   after every real reset, a uniformly drawn 1..``noop_max`` (30) NOOP frames, drawn from the
   env's seeded ``np_random``; optionally (``episodic_life``) a lost life ends the episode
   for the learner (``terminated=True``) while the game goes on, and the following
   ``reset()`` continues the same game with one NOOP step instead of restarting it (a
   ``reset`` with a seed or options always restarts); optionally (``fire_reset``) a FIRE step
   after each reset, for games that wait for FIRE to start (Breakout); games without FIRE
   ignore it.
3. ``FrameStack``: the last ``frame_stack`` (4) observations, oldest first and **newest
   last**, uint8 (4, 84, 84); after a reset the stack is filled with the reset observation
   (what ``gymnasium.wrappers.FrameStackObservation`` returns, at a fraction of its cost).

Gymnasium's own ``AtariPreprocessing`` wrapper implements step 2 too but needs OpenCV
(not a dependency here), and its ``terminal_on_life_loss`` restarts the whole game after a
lost life; ``AtariPreprocess`` keeps the baselines/envpool semantics instead, so that the
three implementations benchmarked in ``ds_robot.bench.atari`` do the same work.

``make_atari_env`` builds the whole chain; ``AtariEnvFactory`` is its picklable, frozen
form for ``RolloutEngine`` and ``gymnasium.vector.AsyncVectorEnv``. ale-py is imported (and
its environments registered) only when an Atari env is made, with a clear error if it is
not installed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from ds_robot.errors import ConfigError

DEFAULT_MAX_EPISODE_FRAMES = 108_000
"""ALE frames before an episode is truncated: v5's default (30 min of play at 60 Hz)."""


def require_ale() -> Any:
    """Import ale-py and register its ``ALE/…`` environments with Gymnasium; returns the module."""
    try:
        import ale_py
    except ImportError as exc:
        raise ConfigError("Atari environments need ale-py (with its bundled ROMs): pip install 'ale-py>=0.9' "
                          f"({exc})") from exc
    gym.register_envs(ale_py)
    return ale_py


def atari_env_id(game_or_id: str) -> str:
    """``"Pong"`` -> ``"ALE/Pong-v5"``; a full Gymnasium id (``"ALE/Pong-v5"``) is kept as given."""
    if "/" in game_or_id or re.search(r"-v\d+$", game_or_id):
        return game_or_id
    return f"ALE/{game_or_id}-v5"


def ale_rom_name(game: str) -> str:
    """The ALE's snake_case ROM name of a Gymnasium game name: ``"MsPacman"`` -> ``"ms_pacman"``."""
    game = atari_env_id(game).split("/")[-1]
    game = re.sub(r"(NoFrameskip)?-v\d+$", "", game)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


# -- resampling and pooling -----------------------------------------------------------------


def _area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (each (taps, n_out)) of exact area resampling along one axis.

    Output pixel i covers the source interval [i*n_in/n_out, (i+1)*n_in/n_out); each source
    pixel contributes the length of its overlap, divided by the interval's length. Computed
    with fractions so that boundaries that fall on pixel edges do so exactly.
    """
    scale = Fraction(n_in, n_out)
    taps = int(np.ceil(float(scale))) + 1
    index = np.zeros((taps, n_out), dtype=np.intp)
    weight = np.zeros((taps, n_out), dtype=np.float32)
    for i in range(n_out):
        start, stop = i * scale, (i + 1) * scale
        first = int(start)  # floor: start >= 0
        last = -(-stop.numerator // stop.denominator)  # ceil
        for t, j in enumerate(range(first, last)):
            index[t, i] = j
            weight[t, i] = float((min(stop, j + 1) - max(start, j)) / scale)
    used = int((weight > 0).any(axis=1).sum())
    return index[:used], weight[:used]


class _AxisArea:
    """Area resampling along one axis of a float32 image.

    When ``n_in / n_out`` reduces to p/q with a short p (210/84 = 5/2, 160/84 = 40/21), the
    axis is g = n_in/p blocks of p inputs -> q outputs with the same (q, p) weights in every
    block, a matrix product: for rows a stack of tiny (q, p) x (p, W) products, for columns
    one (H*g, p) x (p, q) product, cut into pieces of at most ``MAX_GEMM_MACS``
    multiply-adds, under OpenBLAS's threading threshold (65536 x 4), so that no BLAS thread
    is ever woken in a rollout worker (BLAS threads spinning on a 2-core machine next to the
    other workers cost far more than they save). Otherwise each output is a weighted sum of
    a few gathered inputs (taps).
    """

    MAX_BLOCK = 64
    MAX_GEMM_MACS = 65536 * 4

    def __init__(self, n_in: int, n_out: int):
        self.n_out = n_out
        common = math.gcd(n_in, n_out)
        self.blocks, block_in, block_out = common, n_in // common, n_out // common
        self.index, self.weight = _area_taps(n_in, n_out)
        self.block_weight: np.ndarray | None = None
        self.block_weight_t: np.ndarray | None = None
        if block_in <= self.MAX_BLOCK:
            block_weight = np.zeros((block_out, block_in), dtype=np.float32)
            for index, weight in zip(self.index[:, :block_out], self.weight[:, :block_out], strict=True):
                np.add.at(block_weight, (np.arange(block_out), index), weight)
            self.block_weight = block_weight
            self.block_weight_t = np.ascontiguousarray(block_weight.T)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """Resample axis 0 of (n_in, W) -> (n_out, W)."""
        if self.block_weight is not None:
            blocks = image.reshape(self.blocks, self.block_weight.shape[1], image.shape[1])
            return np.matmul(self.block_weight, blocks).reshape(self.n_out, image.shape[1])
        out = image[self.index[0]] * self.weight[0][:, None]
        for index, weight in zip(self.index[1:], self.weight[1:], strict=True):
            out += image[index] * weight[:, None]
        return out

    def columns(self, image: np.ndarray) -> np.ndarray:
        """Resample axis 1 of (H, n_in) -> (H, n_out)."""
        if self.block_weight_t is not None:
            block_in, block_out = self.block_weight_t.shape
            blocks = image.reshape(image.shape[0] * self.blocks, block_in)
            out = np.empty((blocks.shape[0], block_out), dtype=np.float32)
            step = max(1, self.MAX_GEMM_MACS // (block_in * block_out))
            for start in range(0, blocks.shape[0], step):
                np.matmul(blocks[start:start + step], self.block_weight_t, out=out[start:start + step])
            return out.reshape(image.shape[0], self.n_out)
        out = image[:, self.index[0]] * self.weight[0]
        for index, weight in zip(self.index[1:], self.weight[1:], strict=True):
            out += image[:, index] * weight
        return out


class AreaResize:
    """Resize 2-D uint8 images of ``in_shape`` to ``out_shape`` (rows, columns) by area averaging.

    Separable, rows first, in float32, rounded half up; equal shapes return a copy. Exact area
    weights, as OpenCV's ``INTER_AREA`` uses when shrinking, to within one grey level.
    """

    def __init__(self, in_shape: tuple[int, int], out_shape: tuple[int, int]):
        if min(*in_shape, *out_shape) < 1:
            raise ConfigError(f"AreaResize: impossible shapes {in_shape} -> {out_shape} (all sizes >= 1)")
        self.in_shape = (int(in_shape[0]), int(in_shape[1]))
        self.out_shape = (int(out_shape[0]), int(out_shape[1]))
        self._rows = _AxisArea(self.in_shape[0], self.out_shape[0])
        self._columns = _AxisArea(self.in_shape[1], self.out_shape[1])

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape != self.in_shape:
            raise ValueError(f"AreaResize expected an image of shape {self.in_shape}, got {image.shape}")
        if self.in_shape == self.out_shape:
            return np.array(image, dtype=np.uint8)
        out = self._columns.columns(self._rows.rows(image.astype(np.float32)))
        out += 0.5
        return out.astype(np.uint8)


def max_pool_frames(previous: np.ndarray | None, latest: np.ndarray) -> np.ndarray:
    """Pixel-wise max of the last two frames (``latest`` alone when there was only one)."""
    return np.array(latest) if previous is None else np.maximum(previous, latest)


# -- the wrapper ----------------------------------------------------------------------------


class AtariPreprocess(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Frame skip with max-pooling, area resize, no-op starts, optional episodic life and FIRE reset.

    Wraps an ale-py env that steps one ALE frame per call (``frameskip=1``). The inner env's
    own observation is not used: the grayscale screen is read from ``env.unwrapped.ale`` for
    the two frames that are pooled, and only for them (the ALE's grayscale conversion costs
    about a fifth of an emulated frame, so converting all four would cost ~6% of the step);
    ``make_atari_env`` therefore makes the inner env with ``obs_type="ram"``, the cheapest.
    Observations are uint8 (``screen_size``, ``screen_size``). ``info`` is the last ALE
    frame's (``lives``, ``episode_frame_number``, ``frame_number``); with ``episodic_life``,
    ``info["life_lost"]`` marks a termination that was a lost life, not the end of the game.
    An episode that ends inside a repeat is observed on its last frame alone.
    """

    def __init__(self, env: gym.Env, *, frame_skip: int = 4, noop_max: int = 30, screen_size: int = 84,
                 episodic_life: bool = False, fire_reset: bool = False):
        gym.utils.RecordConstructorArgs.__init__(self, frame_skip=frame_skip, noop_max=noop_max, screen_size=screen_size,
                                                 episodic_life=episodic_life, fire_reset=fire_reset)
        gym.Wrapper.__init__(self, env)
        bad = [f"{name}={value!r}" for name, value, ok in (
            ("frame_skip", frame_skip, frame_skip >= 1), ("noop_max", noop_max, noop_max >= 0),
            ("screen_size", screen_size, screen_size >= 1)) if not ok]
        if bad:
            raise ConfigError("AtariPreprocess: impossible " + ", ".join(bad) +
                              " (frame_skip >= 1, noop_max >= 0, screen_size >= 1)")
        ale = getattr(env.unwrapped, "ale", None)
        meanings = getattr(env.unwrapped, "get_action_meanings", None)
        if ale is None or meanings is None:
            raise ConfigError(f"AtariPreprocess needs an ale-py env (with .ale and get_action_meanings()), got "
                              f"{env.unwrapped!r}; make it with gym.make('ALE/<Game>-v5', frameskip=1)")
        meanings = list(meanings())
        if "NOOP" not in meanings:
            raise ConfigError(f"AtariPreprocess: the game's action set {meanings} has no NOOP for no-op starts")
        self.frame_skip = frame_skip
        self.noop_max = noop_max
        self.screen_size = screen_size
        self.episodic_life = episodic_life
        self.noop_action = meanings.index("NOOP")
        # Baselines' FireResetEnv condition: FIRE is action 1 of a set of at least 3.
        self.fire_action = 1 if fire_reset and len(meanings) >= 3 and meanings[1] == "FIRE" else None
        self._ale = ale
        screen_shape = tuple(int(n) for n in ale.getScreenDims())
        self._resize = AreaResize(screen_shape, (screen_size, screen_size))
        self._frames = np.zeros((2, *screen_shape), dtype=np.uint8)  # the (up to) two screens of a repeat
        self._lives = 0
        self._game_over = True
        self.observation_space = gym.spaces.Box(0, 255, (screen_size, screen_size), np.uint8)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if self.episodic_life and not self._game_over and seed is None and options is None:
            obs, _, terminated, truncated, info = self._repeat(self.noop_action, self.frame_skip)
            if not (terminated or truncated):  # a life was lost, the game goes on
                return self._after_reset(obs, info)
        _, info = self.env.reset(seed=seed, options=options)
        obs, info = self._noop_start(info)
        return self._after_reset(obs, info)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._repeat(action, self.frame_skip)
        self._game_over = terminated or truncated
        lives = info.get("lives", 0)
        if self.episodic_life and not self._game_over and 0 < lives < self._lives:
            terminated = True
            info = {**info, "life_lost": True}
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def _noop_start(self, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """1..noop_max NOOP frames after a reset (none when noop_max is 0), pooled like a step."""
        noops = int(self.np_random.integers(1, self.noop_max + 1)) if self.noop_max > 0 else 0
        if noops > 0:
            obs, _, terminated, truncated, noop_info = self._repeat(self.noop_action, noops)
            if not (terminated or truncated):
                return obs, noop_info
            _, info = self.env.reset()  # the game ended during the no-ops (not in practice): start again
        self._ale.getScreenGrayscale(self._frames[0])
        return self._resize(self._frames[0]), info

    def _after_reset(self, obs: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        if self.fire_action is not None:
            fired, _, terminated, truncated, fire_info = self._repeat(self.fire_action, self.frame_skip)
            if not (terminated or truncated):
                obs, info = fired, fire_info
        self._game_over = False
        self._lives = info.get("lives", 0)
        return obs, info

    def _repeat(self, action: Any, frames: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """``frames`` (>= 1) ALE frames of ``action``; the observation pools the screens of the last two."""
        reward = 0.0
        terminated = truncated = False
        info: dict[str, Any] = {}
        grabbed = 0
        for n in range(frames):
            _, frame_reward, terminated, truncated, info = self.env.step(action)
            reward += float(frame_reward)
            ended = terminated or truncated
            if ended or n >= frames - 2:
                self._ale.getScreenGrayscale(self._frames[grabbed % 2])
                grabbed += 1
            if ended:
                break
        latest = (grabbed - 1) % 2
        previous = self._frames[1 - latest] if grabbed > 1 else None
        return self._resize(max_pool_frames(previous, self._frames[latest])), reward, terminated, truncated, info


class FrameStack(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The last ``stack_size`` observations of a ``Box`` env, oldest first and newest last.

    After a reset the stack holds the reset observation ``stack_size`` times. The result is
    that of ``gymnasium.wrappers.FrameStackObservation(env, stack_size, padding_type="reset")``
    (the tests pin it); this one shifts one preallocated array in place instead of keeping a
    deque that it stacks and deep-copies on every step, which costs ~4% of an Atari step.
    Each returned observation is a fresh array the caller may keep.
    """

    def __init__(self, env: gym.Env, stack_size: int):
        gym.utils.RecordConstructorArgs.__init__(self, stack_size=stack_size)
        gym.Wrapper.__init__(self, env)
        space = env.observation_space
        if stack_size < 1:
            raise ConfigError(f"frame_stack={stack_size!r} is impossible (>= 1)")
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(f"FrameStack needs a Box observation space, the env has {space}")
        self.stack_size = stack_size
        self.observation_space = gym.spaces.Box(np.repeat(space.low[None], stack_size, axis=0),
                                                np.repeat(space.high[None], stack_size, axis=0), dtype=space.dtype)
        self._stack = np.zeros((stack_size, *space.shape), dtype=space.dtype)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._stack[:] = obs
        return self._stack.copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = obs
        return self._stack.copy(), reward, terminated, truncated, info


# -- building the chain ---------------------------------------------------------------------


def preprocess_atari(env: gym.Env, *, frame_skip: int = 4, noop_max: int = 30, screen_size: int = 84,
                     frame_stack: int = 4, episodic_life: bool = False, fire_reset: bool = False) -> gym.Env:
    """``FrameStack(AtariPreprocess(env, …), frame_stack)``: observations uint8 (frame_stack, size, size)."""
    env = AtariPreprocess(env, frame_skip=frame_skip, noop_max=noop_max, screen_size=screen_size,
                          episodic_life=episodic_life, fire_reset=fire_reset)
    return FrameStack(env, frame_stack)


def make_atari_env(env_id: str, *, frame_skip: int = 4, noop_max: int = 30, episodic_life: bool = False,
                   frame_stack: int = 4, screen_size: int = 84, seed: int | None = None,
                   repeat_action_probability: float = 0.25, fire_reset: bool = False,
                   max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES) -> gym.Env:
    """An ale-py game with the standard preprocessing (module docstring); observations uint8 (4, 84, 84).

    Args:
        env_id: a game (``"Pong"``, made as ``"ALE/Pong-v5"``) or a Gymnasium ALE id.
        frame_skip: ALE frames per agent step (rewards summed, last two frames max-pooled).
        noop_max: at most this many NOOP frames after each reset (uniform in 1..noop_max; 0: none).
        episodic_life: a lost life terminates the episode for the learner; the game goes on.
        frame_stack: observations stacked, newest last.
        screen_size: side of the square grayscale observation, pixels.
        seed: if given, the env is reset once with it and its action space seeded, so that
            later resets without a seed are reproducible too.
        repeat_action_probability: sticky actions per ALE frame (v5 default 0.25; 0 turns them off).
        fire_reset: press FIRE after each reset in games whose action 1 is FIRE.
        max_episode_frames: ALE frames after which an episode is truncated.
    """
    ale_py = require_ale()
    full_id = atari_env_id(env_id)
    if not 0.0 <= repeat_action_probability <= 1.0:
        raise ConfigError(f"repeat_action_probability={repeat_action_probability!r} must be in [0, 1]")
    try:
        env = gym.make(full_id, frameskip=1, obs_type="ram",
                       repeat_action_probability=repeat_action_probability,
                       max_num_frames_per_episode=max_episode_frames)
    except gym.error.Error as exc:
        raise ConfigError(f"cannot make Atari environment '{full_id}': {exc} (games are named like 'Pong', "
                          "'Breakout', 'MsPacman')") from exc
    if not isinstance(env.unwrapped, ale_py.AtariEnv):
        env.close()
        raise ConfigError(f"'{full_id}' is not an ale-py Atari environment")
    env = preprocess_atari(env, frame_skip=frame_skip, noop_max=noop_max, screen_size=screen_size,
                           frame_stack=frame_stack, episodic_life=episodic_life, fire_reset=fire_reset)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


@dataclass(frozen=True)
class AtariEnvFactory:
    """Picklable ``make_atari_env(env_id, …)`` for ``RolloutEngine`` and ``AsyncVectorEnv``."""

    env_id: str = "Pong"
    frame_skip: int = 4
    noop_max: int = 30
    episodic_life: bool = False
    frame_stack: int = 4
    screen_size: int = 84
    seed: int | None = None
    repeat_action_probability: float = 0.25
    fire_reset: bool = False
    max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES

    def __call__(self) -> gym.Env:
        return make_atari_env(self.env_id, frame_skip=self.frame_skip, noop_max=self.noop_max,
                              episodic_life=self.episodic_life, frame_stack=self.frame_stack,
                              screen_size=self.screen_size, seed=self.seed,
                              repeat_action_probability=self.repeat_action_probability,
                              fire_reset=self.fire_reset, max_episode_frames=self.max_episode_frames)
