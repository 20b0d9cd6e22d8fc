"""Object sets: YAML files listing the objects the grasp task draws from.

Format (see ``sim/objects/default.yaml``)::

    name: default
    placement: {x_range_m: [lo, hi], y_range_m: [lo, hi], yaw_range_rad: [lo, hi]}
    objects:
      - {name: cube, shape: box, size_m: [hx, hy, hz], mass_kg: 0.1, friction: 0.8}

Sizes per shape: box ``[hx, hy, hz]``; cylinder ``[radius, half_height]`` (standing);
sphere ``[radius]``; capsule ``[radius, half_length]`` (lying, axis along its local x).
An object may override ``placement``. Every error names the file, the entry and the field.
``crush_force_n`` (optional, default unbreakable): a fragile object (an egg, a paper cup, soft
fruit) breaks when a finger pad or any other part of the robot presses on it harder than this.

Rest poses (``rests``, optional, default the shape's first): the stable faces the object may
be placed on, one drawn per episode. ``upright`` is the size as given; a box may also lie on
its x face (``side_x``: the x and z half-sizes swap) or its y face (``side_y``: y and z swap);
a cylinder may lie on its side (``lying``: its axis along the body's x); a capsule always
lies. The body frame stays gravity-aligned in every rest pose (the geom is turned inside it),
so ``half_extents_m`` is the axis-aligned box a detector reports for the resting object.

``ObjectVariation`` (a task preset's ``training_variation``): per-episode draws of an object's
mass, friction and fragility around the listed values, so that what an object looks like (its
bounding box) does not say how heavy, slippery or fragile it is. The training set is listed
once and varied for training; the benchmarks use every set as listed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.paths import sim_dir
from ds_robot.yamlio import Fields, load_yaml

SHAPE_SIZE_LENGTH = {"box": 3, "cylinder": 2, "sphere": 1, "capsule": 2}
_C = math.cos(math.pi / 4)
# Per shape: rest pose -> (geom orientation in the body frame (w, x, y, z), which size axis
# becomes body x, y, z). The first entry is the shape's default.
REST_POSES: dict[str, dict[str, tuple[tuple[float, ...], tuple[int, int, int]]]] = {
    "box": {"upright": ((1.0, 0.0, 0.0, 0.0), (0, 1, 2)),
            "side_x": ((_C, 0.0, _C, 0.0), (2, 1, 0)),
            "side_y": ((_C, _C, 0.0, 0.0), (0, 2, 1))},
    "cylinder": {"upright": ((1.0, 0.0, 0.0, 0.0), (0, 1, 2)),
                 "lying": ((_C, 0.0, _C, 0.0), (2, 1, 0))},
    "sphere": {"upright": ((1.0, 0.0, 0.0, 0.0), (0, 1, 2))},
    "capsule": {"lying": ((_C, 0.0, _C, 0.0), (0, 1, 2))},
}
MAX_HALF_EXTENT_M = 0.5
MAX_MASS_KG = 20.0
# The lightest a varied object gets: the sets' lightest objects weigh 30 g; a 7 g one (a 30 g
# paper cup x 0.25) made MuJoCo's 2 ms step unstable in a gripper's contact.
MIN_VARIED_MASS_KG = 0.025


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
    rests: tuple[str, ...] = ()  # allowed rest poses; () = the shape's default only
    crush_force_n: float = math.inf  # a pad (or the palm) pressing harder than this breaks the object
    rest: str = ""  # the rest pose of this instance; "" = the shape's default

    def __post_init__(self):
        poses = REST_POSES[self.shape]
        if not self.rests:
            object.__setattr__(self, "rests", (next(iter(poses)),))
        if not self.rest:
            object.__setattr__(self, "rest", self.rests[0])
        bad = [r for r in (*self.rests, self.rest) if r not in poses]
        if bad or self.rest not in self.rests:
            raise ConfigError(f"object {self.name!r} ({self.shape}): rest poses {list(self.rests)} / {self.rest!r}; "
                              f"a {self.shape} can rest {', '.join(poses)}")

    def geometry(self) -> ObjectSpec:
        """This object with mass, friction and fragility neutral: what a compiled physics model
        depends on beyond values a backend writes per episode (``MuJoCoBackend`` caches by it)."""
        return dataclasses.replace(self, mass_kg=1.0, friction=1.0, crush_force_n=math.inf)

    def at_rest(self, rest: str) -> ObjectSpec:
        """This object resting on another of its allowed faces."""
        return self if rest == self.rest else dataclasses.replace(self, rest=rest)

    @property
    def geom_quat_wxyz(self) -> tuple[float, ...]:
        """The shape's orientation inside the (gravity-aligned) body frame for this rest pose."""
        return REST_POSES[self.shape][self.rest][0]

    @property
    def half_extents_m(self) -> np.ndarray:
        """Half-extents of the bounding box in the object's (body) frame, in this rest pose."""
        s = self.size_m
        if self.shape == "box":
            own = np.array(s)
        elif self.shape == "cylinder":
            own = np.array([s[0], s[0], s[1]])
        elif self.shape == "sphere":
            own = np.array([s[0], s[0], s[0]])
        else:
            own = np.array([s[1] + s[0], s[0], s[0]])  # capsule lying along x
        if self.shape == "capsule":
            return own
        return own[list(REST_POSES[self.shape][self.rest][1])]

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


@dataclass(frozen=True)
class ObjectVariation:
    """Per-episode object variation for training (``apply``): mass x a log-uniform draw from
    ``mass_scale`` (kept within ``MIN_VARIED_MASS_KG``-``MAX_MASS_KG``), or with ``heavy_probability``
    from its upper part, 1 to the upper bound (the object at least as heavy as listed, so that the
    heavy end is not a rare tail of a log-uniform draw), friction x a uniform draw from
    ``friction_scale``; then, with ``fragile_probability``, an object that a gentle grip could
    still hold (varied mass at most ``fragile_max_mass_kg``) is made fragile, its crush force
    uniform in ``crush_force_n``. An object listed as fragile stays fragile at its listed limit."""

    mass_scale: tuple[float, float] = (1.0, 1.0)
    friction_scale: tuple[float, float] = (1.0, 1.0)
    fragile_probability: float = 0.0
    crush_force_n: tuple[float, float] = (6.0, 9.0)
    fragile_max_mass_kg: float = 0.4
    heavy_probability: float = 0.0

    def apply(self, obj: ObjectSpec, rng: np.random.Generator) -> ObjectSpec:
        # every draw is made every episode, in the same order (the heavy one last): the stream
        # stays aligned whatever the probabilities
        u_mass = rng.uniform()
        friction = obj.friction * float(rng.uniform(*self.friction_scale))
        fragile = rng.uniform() < self.fragile_probability
        crush_draw = float(rng.uniform(*self.crush_force_n))
        heavy = rng.uniform() < self.heavy_probability
        lo, hi = np.log(self.mass_scale)
        if heavy:
            lo = max(lo, min(0.0, hi))
        mass = min(max(obj.mass_kg * float(np.exp(lo + (hi - lo) * u_mass)), MIN_VARIED_MASS_KG), MAX_MASS_KG)
        crush = obj.crush_force_n
        if math.isinf(crush) and fragile and mass <= self.fragile_max_mass_kg:
            crush = crush_draw
        return dataclasses.replace(obj, mass_kg=mass, friction=friction, crush_force_n=crush)

    @classmethod
    def from_fields(cls, f: Fields) -> ObjectVariation:
        return cls(mass_scale=_range(f, "mass_scale", 0.05, 20.0, (1.0, 1.0)),
                   friction_scale=_range(f, "friction_scale", 0.1, 5.0, (1.0, 1.0)),
                   fragile_probability=f.number("fragile_probability", 0.0, low=0.0, high=1.0),
                   crush_force_n=_range(f, "crush_force_n", 0.5, 1e4, (6.0, 9.0)),
                   fragile_max_mass_kg=f.number("fragile_max_mass_kg", 0.4, low=0.0, high=MAX_MASS_KG),
                   heavy_probability=f.number("heavy_probability", 0.0, low=0.0, high=1.0))


def _range(f: Fields, key: str, low: float, high: float, default=...) -> tuple[float, float]:
    lo, hi = f.vector(key, 2, default=default, low=low, high=high)
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
    rests = f.raw("rests") if "rests" in f.data else []
    if not isinstance(rests, list) or not all(isinstance(r, str) for r in rests) or len(set(rests)) != len(rests):
        raise f.fail("rests", f"expected a list of distinct rest poses, got {rests!r}")
    unknown = [r for r in rests if r not in REST_POSES[shape]]
    if unknown:
        raise f.fail("rests", f"{unknown}: a {shape} can rest {', '.join(REST_POSES[shape])}")
    return ObjectSpec(
        name=f.string("name"),
        shape=shape,
        size_m=size,
        mass_kg=f.number("mass_kg", low=1e-3, high=MAX_MASS_KG),
        friction=f.number("friction", low=0.01, high=5.0),
        placement=placement,
        rgba=rgba,
        rests=tuple(rests),
        crush_force_n=f.number("crush_force_n", low=0.5, high=1e4) if "crush_force_n" in f.data else math.inf,
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
