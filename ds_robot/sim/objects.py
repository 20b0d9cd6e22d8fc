"""Object sets: YAML files listing the objects the grasp task draws from.

Format (see ``sim/objects/default.yaml``)::

    name: default
    placement: {x_range_m: [lo, hi], y_range_m: [lo, hi], yaw_range_rad: [lo, hi]}
    objects:
      - {name: cube, shape: box, size_m: [hx, hy, hz], mass_kg: 0.1, friction: 0.8}

Sizes per shape: box ``[hx, hy, hz]``; cylinder ``[radius, half_height]`` (standing);
sphere ``[radius]``; capsule ``[radius, half_length]`` (lying, axis along its local x).
An object may override ``placement``. Every error names the file, the entry and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.paths import sim_dir
from ds_robot.yamlio import Fields, load_yaml

SHAPE_SIZE_LENGTH = {"box": 3, "cylinder": 2, "sphere": 1, "capsule": 2}
MAX_HALF_EXTENT_M = 0.5
MAX_MASS_KG = 20.0


@dataclass(frozen=True)
class Placement:
    x_range_m: tuple[float, float]
    y_range_m: tuple[float, float]
    yaw_range_rad: tuple[float, float]

    def sample(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """(x, y, yaw) drawn uniformly from the region."""
        return (
            float(rng.uniform(*self.x_range_m)),
            float(rng.uniform(*self.y_range_m)),
            float(rng.uniform(*self.yaw_range_rad)),
        )


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    shape: str
    size_m: tuple[float, ...]
    mass_kg: float
    friction: float
    placement: Placement
    rgba: tuple[float, ...] = (0.15, 0.45, 0.85, 1.0)

    @property
    def half_extents_m(self) -> np.ndarray:
        """Half-extents of the bounding box in the object's frame."""
        s = self.size_m
        if self.shape == "box":
            return np.array(s)
        if self.shape == "cylinder":
            return np.array([s[0], s[0], s[1]])
        if self.shape == "sphere":
            return np.array([s[0], s[0], s[0]])
        return np.array([s[1] + s[0], s[0], s[0]])  # capsule lying along x

    @property
    def resting_height_m(self) -> float:
        """Height of the object's centre above the table when it rests in its placed pose."""
        return float(self.half_extents_m[2])


@dataclass(frozen=True)
class ObjectSet:
    name: str
    source: Path
    objects: tuple[ObjectSpec, ...]

    def names(self) -> list[str]:
        return [o.name for o in self.objects]


def _range(f: Fields, key: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = f.vector(key, 2, low=low, high=high)
    if lo > hi:
        raise f.fail(key, f"lower bound {lo} is above upper bound {hi}")
    return lo, hi


def _placement(f: Fields) -> Placement:
    return Placement(
        x_range_m=_range(f, "x_range_m", -1.0, 1.0),
        y_range_m=_range(f, "y_range_m", -1.0, 1.0),
        yaw_range_rad=_range(f, "yaw_range_rad", -2 * np.pi, 2 * np.pi),
    )


def _object(f: Fields, default_placement: Placement | None) -> ObjectSpec:
    shape = f.string("shape", choices=tuple(SHAPE_SIZE_LENGTH))
    size = f.vector("size_m", SHAPE_SIZE_LENGTH[shape], low=1e-3, high=MAX_HALF_EXTENT_M)
    if "placement" in f.data:
        placement = _placement(f.sub("placement"))
    elif default_placement is not None:
        placement = default_placement
    else:
        raise f.fail("placement", "missing (and the set gives no default placement)")
    rgba = f.vector("rgba", 4, default=ObjectSpec.rgba, low=0.0, high=1.0)
    return ObjectSpec(
        name=f.string("name"),
        shape=shape,
        size_m=size,
        mass_kg=f.number("mass_kg", low=1e-3, high=MAX_MASS_KG),
        friction=f.number("friction", low=0.01, high=5.0),
        placement=placement,
        rgba=rgba,
    )


def load_object_set(path: str | Path) -> ObjectSet:
    path = Path(path)
    root = Fields(load_yaml(path, "object set"), str(path))
    default_placement = _placement(root.sub("placement")) if "placement" in root.data else None
    entries = root.raw("objects")
    if not isinstance(entries, list) or not entries:
        raise root.fail("objects", "expected a non-empty list of objects")
    objects = []
    for index, entry in enumerate(entries):
        label = entry.get("name", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        objects.append(_object(Fields(entry, f"{path}: objects[{index}] ({label})"), default_placement))
    names = [o.name for o in objects]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: objects: duplicate names {', '.join(duplicates)}")
    return ObjectSet(name=root.string("name", path.stem), source=path, objects=tuple(objects))


def default_object_set_path() -> Path:
    return sim_dir() / "objects" / "default.yaml"
