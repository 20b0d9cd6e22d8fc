"""The shipped hierarchical policy: a NumPy-only file and runtime (no torch on the robot side).

A policy file (``.npz``, written atomically) holds the planner's and the three skills' MLP
weights (tanh hidden layers, linear output: the planner's option logits, each skill's mean
residual action) and a JSON header with what the weights were trained for: the format
version, the observation layout (field names and sizes), the model variant, the options,
whether torque features were used, the residual scales and a SHA-256 of the weights. A file
whose header does not match this code (another observation layout or format) is refused
with a message that says what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.hier.env import HIER_FIELDS, HIER_OBS_SIZE, SKILLS
from ds_robot.hier.options import options_from_list, options_to_list, validate_options

POLICY_FORMAT = "ds-robot-hier-policy"
POLICY_VERSION = 1


class PolicyFileError(ConfigError):
    """A policy file that is missing, corrupt, or made for another layout or version."""


@dataclass
class NumpyMLP:
    """``y = W_n tanh(... tanh(W_1 x + b_1) ...) + b_n`` with weights stored as (in, out)."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < last:
                h = np.tanh(h)
        return h

    @property
    def in_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def out_size(self) -> int:
        return self.weights[-1].shape[1]


@dataclass
class HierPolicy:
    planner: NumpyMLP
    skills: list[NumpyMLP]
    options: tuple
    torque_features: bool
    residual_scale: float
    gripper_scale: float
    variant: str = "ur5e"
    meta: dict = field(default_factory=dict)  # how it was trained: command, steps, metrics

    def __post_init__(self):
        self.options = validate_options(self.options)
        if len(self.skills) != len(SKILLS):
            raise PolicyFileError(f"a hierarchical policy has {len(SKILLS)} skills ({', '.join(SKILLS)}), "
                                  f"got {len(self.skills)}")
        if self.planner.in_size != HIER_OBS_SIZE or self.planner.out_size != len(self.options):
            raise PolicyFileError(f"planner maps {self.planner.in_size} -> {self.planner.out_size}; this layout "
                                  f"needs {HIER_OBS_SIZE} -> {len(self.options)} options")
        for name, skill in zip(SKILLS, self.skills, strict=True):
            if skill.in_size != HIER_OBS_SIZE or skill.out_size != 7:
                raise PolicyFileError(f"skill {name} maps {skill.in_size} -> {skill.out_size}; needs "
                                      f"{HIER_OBS_SIZE} -> 7")

    # -- file io --------------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for prefix, net in (("planner", self.planner), *((f"skill_{n}", s) for n, s in zip(SKILLS, self.skills,
                                                                                          strict=True))):
            for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
                out[f"{prefix}.w{i}"] = w.astype(np.float32)
                out[f"{prefix}.b{i}"] = b.astype(np.float32)
        return out

    def header(self) -> dict:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, "obs_layout": [list(f) for f in HIER_FIELDS],
                "variant": self.variant, "options": options_to_list(self.options),
                "torque_features": self.torque_features, "residual_scale": self.residual_scale,
                "gripper_scale": self.gripper_scale, "sha256": _digest(self.arrays()), "meta": self.meta}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, header=np.array(json.dumps(self.header())), **self.arrays())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> HierPolicy:
        path = Path(path)
        if not path.is_file():
            raise PolicyFileError(f"policy file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            header = json.loads(str(arrays.pop("header")))
        except Exception as exc:  # zip, json and key errors: all mean "not a readable policy"
            raise PolicyFileError(f"{path} is not a readable ds-robot policy file (corrupt or truncated?): "
                                  f"{exc}") from exc
        if header.get("format") != POLICY_FORMAT or header.get("version") != POLICY_VERSION:
            raise PolicyFileError(f"{path}: format {header.get('format')!r} version {header.get('version')!r}; "
                                  f"this ds-robot reads {POLICY_FORMAT!r} version {POLICY_VERSION}")
        layout = [list(f) for f in HIER_FIELDS]
        if header.get("obs_layout") != layout:
            raise PolicyFileError(f"{path} was trained on observation layout {header.get('obs_layout')}; this "
                                  f"ds-robot builds {layout}: retrain the policy")
        if header.get("sha256") != _digest(arrays):
            raise PolicyFileError(f"{path}: weights do not match their recorded SHA-256 (file modified or corrupt)")

        def net(prefix: str) -> NumpyMLP:
            n = sum(1 for k in arrays if k.startswith(prefix + ".w"))
            return NumpyMLP([arrays[f"{prefix}.w{i}"].astype(np.float64) for i in range(n)],
                            [arrays[f"{prefix}.b{i}"].astype(np.float64) for i in range(n)])

        return cls(planner=net("planner"), skills=[net(f"skill_{n}") for n in SKILLS],
                   options=options_from_list(header["options"]), torque_features=bool(header["torque_features"]),
                   residual_scale=float(header["residual_scale"]), gripper_scale=float(header["gripper_scale"]),
                   variant=str(header.get("variant", "ur5e")), meta=dict(header.get("meta", {})))


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key], dtype=np.float32).tobytes())
    return h.hexdigest()
