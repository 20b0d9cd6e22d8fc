"""``ds_robot/UR5Grasp-v0``: grasp and lift an object with a torque-controlled UR5 in MuJoCo.

Action (7,): six joint torques normalised by the torque limits (``tau = a * limit``) and a
gripper command (-1 open ... +1 closed, force-limited). Finite values outside [-1, 1] are
clipped (documented clamping); NaN/Inf or a wrong shape raise ``ActionError``.

Timing: physics ``physics_dt_s`` (default 2 ms), control ``control_dt_s`` (default 10 ms,
100 Hz; torques are held between control steps), episode ``episode_s`` (default 8 s).
``terminated``: success (lifted and held), object dropped off the table, or a fragile object
crushed; ``truncated``:
the episode's time limit.

``info``: ``success``, ``time_to_lift_s`` (inf until success), ``energy_j`` (episode so far),
``object`` (its name), ``lifted``, ``crushed``.

The world is a :class:`~ds_robot.physics.PhysicsBackend`: MuJoCo by default, a ready
``backend``, or one built by ``backend_factory(robot, physics_dt_s)`` (a picklable callable,
so rollout workers can build their own: domain randomisation passes
``ds_robot.sim2real.worlds.ShiftedMuJoCoBackend`` here; the env does not know what it gets).

``torque_features=False`` zeroes the measured-torque slice of the observation (the ablation
without torque features; ``ds_robot/UR5GraspNoTorque-v0``).

``perception`` (a ``PerceptionConfig``; None = ground truth): the object pose and size in the
observation come from a simulated detector (bias, noise, frame rate, latency, dropouts:
``ds_robot.envs.perception``). An object with several ``rests`` lies on one of them, drawn per
episode. Task presets (``ds_robot.envs.presets``, ``--task``) bundle these settings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from ds_robot.envs.grasp_task import GraspTask, GraspTaskConfig
from ds_robot.envs.layout import ACTION_SIZE, OBS_SIZE, OBS_SLICES
from ds_robot.envs.observation import ObservationPipeline
from ds_robot.envs.perception import Perception, PerceptionConfig
from ds_robot.errors import ActionError, ConfigError
from ds_robot.model.params import default_description
from ds_robot.physics.backend import EpisodeSetup, PhysicsBackend, RobotState
from ds_robot.physics.mujoco_backend import MuJoCoBackend
from ds_robot.sim.objects import ObjectSet, ObjectVariation, default_object_set_path, load_object_set


class UR5GraspEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        objects: str | Path | ObjectSet | None = None,
        robot: str = "ur5e",
        control_dt_s: float = 0.01,
        physics_dt_s: float = 0.002,
        episode_s: float = 8.0,
        init_qpos_noise_rad: float = 0.0,
        task: GraspTaskConfig | None = None,
        backend: PhysicsBackend | None = None,
        sensor_noise: dict[str, float] | None = None,
        sensor_delay_steps: int = 0,
        render_mode: str | None = None,
        render_size: tuple[int, int] = (480, 640),
        camera: str = "front",
        torque_features: bool = True,
        backend_factory: Callable[[str, float], PhysicsBackend] | None = None,
        perception: PerceptionConfig | None = None,
        object_variation: ObjectVariation | None = None,
    ):
        if isinstance(objects, ObjectSet):
            self.object_set = objects
        else:
            self.object_set = load_object_set(objects if objects is not None else default_object_set_path())
        ratio = control_dt_s / physics_dt_s
        if control_dt_s <= 0 or physics_dt_s <= 0 or abs(ratio - round(ratio)) > 1e-6:
            raise ConfigError(
                f"control_dt_s={control_dt_s} must be a positive whole multiple of physics_dt_s={physics_dt_s}"
            )
        if episode_s < control_dt_s:
            raise ConfigError(f"episode_s={episode_s} is shorter than one control step ({control_dt_s} s)")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode={render_mode!r}: only 'rgb_array' is supported")
        if backend_factory is not None:
            if backend is not None:
                raise ConfigError("pass either backend or backend_factory, not both")
            backend = backend_factory(robot, physics_dt_s)
        self.backend = backend if backend is not None else MuJoCoBackend(robot, physics_dt_s)
        self.control_dt_s = control_dt_s
        self.episode_s = episode_s
        self.max_steps = int(round(episode_s / control_dt_s))
        self.init_qpos_noise_rad = init_qpos_noise_rad
        self.home_qpos_rad = np.array(default_description().home_qpos_rad)
        self.task = GraspTask(task or GraspTaskConfig(), self.backend.joint_torque_limit_nm,
                              self.backend.max_gripper_opening_m)
        self.sensors = ObservationPipeline(OBS_SLICES, sensor_noise, sensor_delay_steps)
        self.perception = Perception(perception) if perception is not None else None
        self.object_variation = object_variation  # training: each episode's object varied around the listed one
        self.obs_slices = dict(OBS_SLICES)
        self.torque_features = torque_features  # False: the tau slice reads 0 (the "no torque" ablation)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_SIZE,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(OBS_SIZE,), dtype=np.float32)
        self.render_mode = render_mode
        self.render_size = render_size
        self.camera = camera
        self._renderer = None
        self.state: RobotState | None = None
        self.setup: EpisodeSetup | None = None
        self._steps = 0

    # -- Gymnasium API ---------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        if "object" in options:
            names = self.object_set.names()
            if options["object"] not in names:
                raise ConfigError(f"reset option object={options['object']!r} is not in the set: {names}")
            obj = self.object_set.objects[names.index(options["object"])]
        else:
            obj = self.object_set.objects[int(rng.integers(len(self.object_set.objects)))]
        if len(obj.rests) > 1:
            obj = obj.at_rest(options.get("rest") or obj.rests[int(rng.integers(len(obj.rests)))])
        x, y, yaw = obj.placement.sample(rng)
        qpos = self.home_qpos_rad + rng.uniform(-1.0, 1.0, 6) * self.init_qpos_noise_rad
        if self.object_variation is not None:
            obj = self.object_variation.apply(obj, rng)
        self.setup = EpisodeSetup(obj, x, y, yaw, qpos, self.backend.max_gripper_opening_m)
        self.state = self.backend.reset(self.setup)
        self.task.reset(self.setup, self.state)
        self._steps = 0
        obs = self.sensors.reset(self.task.observation(self.state, self._seen(reset=True)), rng)
        if not self.torque_features:
            obs[OBS_SLICES["tau"]] = 0.0
        return obs, self._info(lifted=False)

    def step(self, action):
        action = self._check_action(action)
        if self.setup is None:
            raise RuntimeError("call reset() before step()")
        torque = action[:6] * self.backend.joint_torque_limit_nm
        self.state = self.backend.step(torque, float(action[6]), self.control_dt_s)
        self._steps += 1
        outcome = self.task.update(self.state)
        terminated = outcome.success or outcome.dropped or outcome.crushed
        truncated = not terminated and self._steps >= self.max_steps
        obs = self.task.observation(self.state, self._seen(reset=False))
        if self.sensors.active:
            obs = self.sensors(obs, self.np_random)
        if not self.torque_features:
            obs[OBS_SLICES["tau"]] = 0.0
        return obs, outcome.reward, terminated, truncated, self._info(outcome.lifted)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if not isinstance(self.backend, MuJoCoBackend):
            raise ConfigError("rendering needs the MuJoCo backend")
        import mujoco

        model = self.backend.model
        if self._renderer is None or self._renderer.model is not model:
            if self._renderer is not None:
                self._renderer.close()
            height, width = self.render_size
            self._renderer = mujoco.Renderer(model, height, width)
        self._renderer.update_scene(self.backend.data, camera=self.camera)
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.backend.close()

    # -- helpers ---------------------------------------------------------------------------

    def _seen(self, reset: bool):
        """What the detector reports of the object now (None: the task uses the truth)."""
        if self.perception is None:
            return None
        s, rng = self.state, self.np_random
        if reset:
            return self.perception.reset(s.time_s, s.object_pos_m, s.object_quat, self.setup.obj.half_extents_m, rng)
        return self.perception(s.time_s, s.object_pos_m, s.object_quat, rng, tcp_pos=s.tcp_pos_m)

    @property
    def in_hand_vision(self) -> bool:
        """Whether the observed object pose follows an object in the hand (False: the detector's
        view of it is occluded by the gripper, ``PerceptionConfig.occludes``)."""
        return self.perception is None or not self.perception.config.occludes

    def _check_action(self, action) -> np.ndarray:
        action = checked_action(action, ACTION_SIZE, "6 normalised joint torques and a gripper command")
        return np.minimum(np.maximum(action, -1.0, out=action), 1.0, out=action)

    def _info(self, lifted: bool) -> dict:
        return {
            "success": self.task.success,
            "time_to_lift_s": self.task.time_to_lift_s,
            "energy_j": self.task.energy_j,
            "object": self.setup.obj.name,
            "lifted": lifted,
            "crushed": self.task.crushed,
        }


def checked_action(action, size: int, layout: str) -> np.ndarray:
    """``action`` as a new float64 array of shape ``(size,)``, or an ``ActionError`` that says
    what is wrong (not numeric, another shape: ``layout`` says what is expected, NaN/Inf)."""
    try:
        action = np.array(action, dtype=np.float64)  # a copy: the caller's array is never modified
    except (TypeError, ValueError) as exc:
        raise ActionError(f"action must be numeric, got {type(action).__name__}") from exc
    if action.shape != (size,):
        raise ActionError(f"action has shape {action.shape}, expected ({size},): {layout}")
    finite = np.isfinite(action)
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        raise ActionError(f"action contains NaN/Inf at index {bad}; refusing to send it to the arm")
    return action
