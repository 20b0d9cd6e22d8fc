"""Task presets (``--task``): which objects, what the controller perceives, how episodes start.

A preset is one YAML in ``sim/tasks/`` (``realistic.yaml``, the default of every benchmark,
of ``train grasp`` and of ``make demo``; ``nominal.yaml``, the ground-truth setting of the
first releases, kept for regression; ``occluded.yaml``, the realistic task with a camera that
cannot see what the gripper holds, round 12's experiment; ``miscalibrated.yaml``, a
centimetre-level detector bias, round 13's; ``broad.yaml``, the realistic task trained on 96
generated objects, round 14's). Format::

    name: realistic
    objects: {train: train.yaml, val: val.yaml, test: test.yaml, stress: stress.yaml}  # in sim/objects/; val, stress optional
    episode_s: 12.0                                  # default 8
    start_qpos_noise_rad: 0.12                       # each joint uniform +- around home
    joint_sensors: {q_rad: 1.0e-4, qd_rad_s: 0.01, tau_fraction_of_limit: 0.01, delay_steps: 0}
    perception: {...}                                # ds_robot.envs.perception; null = ground truth
    training_variation: {mass_scale: [lo, hi], ...}  # ds_robot.sim.objects.ObjectVariation; training only
    base: realistic                                  # optional: another preset's keys, these over them

``env_kwargs(split)`` gives the ``UR5GraspEnv`` keyword arguments of the preset for the
``train``, ``val``, ``test`` or ``stress`` object set (plain, picklable values: rollout workers build their own envs);
``env_kwargs("train", training=True)`` adds the training variation of the objects (what
``train grasp`` runs on; every benchmark and evaluation uses the sets as listed).

The ``val`` set (optional; the realistic preset has one) holds objects in neither of the
others. It is for choosing among trained policies (``ds-robot bench grasp-select``: training
seeds, feature sets), so that the test set is never used to choose what it then measures.
The ``stress`` set (optional; the realistic preset has one) is generated, not chosen
(``ds_robot.sim.stress_objects``): 48 objects drawn over what the gripper can grasp, for an
estimate of how a controller does on a further unseen set with a narrower interval than 12
hand-picked objects give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ds_robot.envs.perception import PerceptionConfig
from ds_robot.errors import ConfigError
from ds_robot.paths import sim_dir
from ds_robot.sim.objects import ObjectVariation
from ds_robot.yamlio import Fields, load_yaml

TASKS = ("realistic", "occluded", "miscalibrated", "broad", "nominal")
SPLITS = ("train", "val", "test", "stress")
OPTIONAL_SPLITS = ("val", "stress")
DEFAULT_TASK = "realistic"


@dataclass(frozen=True)
class TaskPreset:
    name: str
    source: Path
    objects: dict[str, Path]
    start_qpos_noise_rad: float
    episode_s: float
    joint_noise: dict[str, float]  # observation field -> standard deviation, in feature units
    joint_delay_steps: int
    perception: PerceptionConfig | None
    training_variation: ObjectVariation | None = None

    def object_set(self, split: str) -> Path:
        if split not in SPLITS:
            raise ConfigError(f"object split {split!r}: choose {', '.join(SPLITS)}")
        if split not in self.objects:
            raise ConfigError(f"task preset {self.name!r} ({self.source}) has no {split!r} object set")
        return self.objects[split]

    def env_kwargs(self, split: str = "train", training: bool = False) -> dict:
        kwargs = {"objects": str(self.object_set(split)), "init_qpos_noise_rad": self.start_qpos_noise_rad,
                  "episode_s": self.episode_s,
                  "sensor_noise": dict(self.joint_noise) or None, "sensor_delay_steps": self.joint_delay_steps,
                  "perception": self.perception}
        if training and self.training_variation is not None:
            kwargs["object_variation"] = self.training_variation
        return kwargs


def _preset_path(name: str | Path) -> Path:
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = sim_dir() / "tasks" / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"task preset {name!r}: no {path}; presets: {', '.join(TASKS)}")
    return path


def _preset_data(path: Path, chain: tuple[Path, ...]) -> dict:
    """The preset's YAML mapping; with ``base: NAME`` the base preset's, with this file's keys
    over it (a mapping such as ``perception`` merged key by key, anything else replaced)."""
    data = load_yaml(path, "task preset")
    if not isinstance(data, dict):
        raise ConfigError(f"task preset {path}: expected a mapping, got {type(data).__name__}")
    base = data.get("base")
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"task preset {path}: base must be a preset name, got {base!r}")
    base_path = _preset_path(base)
    if base_path.resolve() in chain + (path.resolve(),):
        raise ConfigError(f"task preset {path}: base {base!r} leads back to itself")
    merged = dict(_preset_data(base_path, chain + (path.resolve(),)))
    merged.pop("name", None)
    for key, value in data.items():
        if key == "base":
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_task(name: str | Path) -> TaskPreset:
    """A preset by name (``sim/tasks/<name>.yaml``) or from a YAML path."""
    path = _preset_path(name)
    f = Fields(_preset_data(path, ()), str(path))
    objects = f.sub("objects")
    sets = {}
    for split in SPLITS:
        if split in OPTIONAL_SPLITS and objects.raw(split, None) is None:
            continue
        file = Path(objects.string(split))
        sets[split] = file if file.is_absolute() else sim_dir() / "objects" / file
        if not sets[split].is_file():
            raise objects.fail(split, f"object set {sets[split]} does not exist")
    sensors = f.sub("joint_sensors") if f.raw("joint_sensors", None) is not None else Fields({}, f"{path}: joint_sensors")
    noise = {"q": sensors.number("q_rad", 0.0, low=0.0, high=0.1),
             "qd": sensors.number("qd_rad_s", 0.0, low=0.0, high=1.0) / math.pi,  # the qd feature is rad/s / pi
             "tau": sensors.number("tau_fraction_of_limit", 0.0, low=0.0, high=0.5)}
    delay = sensors.number("delay_steps", 0, low=0, high=10)
    if delay != int(delay):
        raise sensors.fail("delay_steps", f"expected a whole number of control steps, got {delay}")
    perception = f.raw("perception", None)
    variation = f.raw("training_variation", None)
    return TaskPreset(
        name=f.string("name", path.stem), source=path, objects=sets,
        start_qpos_noise_rad=f.number("start_qpos_noise_rad", 0.0, low=0.0, high=0.5),
        episode_s=f.number("episode_s", 8.0, low=1.0, high=120.0),
        joint_noise={k: v for k, v in noise.items() if v > 0}, joint_delay_steps=int(delay),
        perception=None if perception is None else PerceptionConfig.from_fields(f.sub("perception")),
        training_variation=None if variation is None else ObjectVariation.from_fields(f.sub("training_variation")))
