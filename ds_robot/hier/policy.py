"""The shipped hierarchical policy: a NumPy-only file and runtime (no torch on the robot side).

A policy file (``.npz``, written atomically) holds the planner's and the three skills' MLP
weights (tanh hidden layers, linear output: the planner's option logits, each skill's mean
residual action) and a JSON header with what the weights were trained for: the format
version, the observation layout (field names and sizes), the model variant, the options,
whether torque features were used, the residual scales, how the weights are stored (float32,
or int8 per tensor / per output channel: ``ds_robot.hier.quantize``) and a SHA-256 of the
stored arrays. A file whose header does not match this code (another observation layout or
format) is refused with a message that says what differs; one whose layout is this layout
without the fields appended since loads with zero input weights for them. int8 files are dequantized once at
load; the runtime is the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ds_robot.control.scripted import valid_palm_clearance
from ds_robot.errors import ConfigError
from ds_robot.hier.features import HIER_FIELDS, HIER_OBS_SIZE, SKILLS, available_options, best_available
from ds_robot.hier.options import options_from_list, options_to_list, validate_options
from ds_robot.hier.quantize import dequantize, quantize

POLICY_FORMAT = "ds-robot-hier-policy"
POLICY_VERSION = 1
QUANTIZATIONS = ("fp32", "int8_tensor", "int8_channel")


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


def mean_mlp(parts: list[NumpyMLP]) -> NumpyMLP:
    """The mean of same-shaped MLPs' outputs as one wider MLP, exactly: the first layers side by
    side, the hidden ones block-diagonal, the last ones stacked and averaged. The planner heads of
    one run (``HierTrainConfig.planner_heads``) and the planners of several training seeds
    (``ds-robot ensemble``) are exported this way, so the run time, int8 and the ROS node need
    nothing new."""
    if not parts:
        raise PolicyFileError("an ensemble needs at least one network")
    shapes = [[w.shape for w in p.weights] for p in parts]
    if any(s != shapes[0] for s in shapes):
        raise PolicyFileError(f"ensemble members differ in shape: {shapes}")
    k, n = len(parts), len(parts[0].weights)
    weights, biases = [], []
    for i in range(n):
        ws, bs = [p.weights[i] for p in parts], [p.biases[i] for p in parts]
        if i == n - 1:
            weights.append(np.vstack(ws) / k)
            biases.append(np.mean(bs, axis=0))
        elif i == 0:
            weights.append(np.hstack(ws))
            biases.append(np.concatenate(bs))
        else:
            block = np.zeros((sum(w.shape[0] for w in ws), sum(w.shape[1] for w in ws)))
            r = c = 0
            for w in ws:
                block[r:r + w.shape[0], c:c + w.shape[1]] = w
                r, c = r + w.shape[0], c + w.shape[1]
            weights.append(block)
            biases.append(np.concatenate(bs))
    return NumpyMLP(weights, biases)


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
    quantization: str = "fp32"  # how the file it came from stored the weights
    # False: a probe starts only with an empty hand (hier.features.available_options); True: any
    # option at any decision, as the policies trained before round 9 (files without the key)
    probe_in_hand: bool = True
    # False: the skills' residual is off during a probe (hier.features.residual_acts); True: on,
    # as the policies trained before round 9 (files without the key)
    probe_residual: bool = True
    # The machine's palm clearance over the object's top (ScriptedConfig.palm_clearance_m); None:
    # the grasp at the object's centre, as the policies trained before round 10 (files without the key)
    palm_clearance_m: float | None = None
    # True: after a slip only a stronger grip may follow (hier.features.available_options); False:
    # any option, as the policies before round 14 (files without the key)
    escalate_after_slip: bool = False
    # True: no option whose jaws close across a side of the perceived object wider than the open
    # jaws (hier.features.available_options); False: any, as the policies before round 14
    jaw_fit: bool = False

    def __post_init__(self):
        self.options = validate_options(self.options)
        if not valid_palm_clearance(self.palm_clearance_m):
            raise PolicyFileError(f"palm_clearance_m must be null or a distance of 0-0.1 m, got {self.palm_clearance_m!r}")
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

    def choose(self, features: np.ndarray) -> np.ndarray:
        """The planner's option for each row of ``features`` (or one row): the highest logit
        among the options available there."""
        return best_available(self.planner(features), available_options(features, self.options, self.probe_in_hand,
                                                                        self.escalate_after_slip, self.jaw_fit))

    # -- file io --------------------------------------------------------------------------------

    def _nets(self):
        return (("planner", self.planner), *((f"skill_{n}", s) for n, s in zip(SKILLS, self.skills, strict=True)))

    def arrays(self, quantization: str = "fp32") -> tuple[dict[str, np.ndarray], list]:
        """The stored arrays and, for int8, the table that unpacks them.

        float32: one array per weight and bias. int8: every weight and bias quantized and packed
        into one int8 array ``q``, their ``Delta`` and ``w_min`` into one float32 array ``scales``
        (fewer zip entries: at this size each entry's ~250 bytes of headers would be 10% of the
        file). ``int8_tensor``: one grid per tensor. ``int8_channel``: each first-layer weight per
        input row (its rows carry the input scales folded in by the trainer), every other weight
        per output channel, biases per tensor. Each table row is
        ``[name, shape, q_offset, scale_offset, n_scales, channel_axis]`` (files written before
        per-row grids have no ``channel_axis``: per output channel).
        """
        if quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
        tensors = {}
        for prefix, net in self._nets():
            for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
                tensors[f"{prefix}.w{i}"] = w
                tensors[f"{prefix}.b{i}"] = b
        if quantization == "fp32":
            return {k: v.astype(np.float32) for k, v in tensors.items()}, []
        qs, scales, table, q_at, s_at = [], [], [], 0, 0
        for name, t in tensors.items():
            per_channel = quantization == "int8_channel" and t.ndim == 2
            axis = 0 if name.endswith(".w0") else 1
            q, delta, w_min = quantize(t, per_channel=per_channel, channel_axis=axis)
            n = delta.size
            table.append([name, list(t.shape), q_at, s_at, n, axis])
            qs.append(q.ravel())
            scales += [delta.ravel(), w_min.ravel()]
            q_at += q.size
            s_at += 2 * n
        return {"q": np.concatenate(qs), "scales": np.concatenate(scales).astype(np.float32)}, table

    def header(self, arrays: dict[str, np.ndarray], quantization: str = "fp32", table: list | None = None) -> dict:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, "obs_layout": [list(f) for f in HIER_FIELDS],
                "variant": self.variant, "options": options_to_list(self.options),
                "torque_features": self.torque_features, "probe_in_hand": self.probe_in_hand,
                "probe_residual": self.probe_residual, "palm_clearance_m": self.palm_clearance_m,
                "escalate_after_slip": self.escalate_after_slip, "jaw_fit": self.jaw_fit,
                "residual_scale": self.residual_scale,
                "gripper_scale": self.gripper_scale, "weights": quantization, "tensors": table or [],
                "obs_normalization": "none: hier_observation scales every feature to about unit range",
                "sha256": _digest(arrays), "meta": self.meta}

    def save(self, path: str | Path, quantization: str = "fp32") -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays, table = self.arrays(quantization)
        tmp = path.with_name(path.name + ".tmp.npz")
        header = json.dumps(self.header(arrays, quantization, table), separators=(",", ":"))
        np.savez_compressed(tmp, header=np.array(header), **arrays)
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
        saved = header.get("obs_layout")
        # a file from before fields were appended to the layout reads the same: zero weights for them
        older = isinstance(saved, list) and 0 < len(saved) < len(layout) and saved == layout[: len(saved)]
        if saved != layout and not older:
            raise PolicyFileError(f"{path} was trained on observation layout {saved}; this "
                                  f"ds-robot builds {layout}: retrain the policy")
        missing = sum(size for _, size in layout[len(saved):]) if older else 0
        if header.get("sha256") != _digest(arrays):
            raise PolicyFileError(f"{path}: weights do not match their recorded SHA-256 (file modified or corrupt)")

        quantization = header.get("weights", "fp32")
        if quantization not in QUANTIZATIONS:
            raise PolicyFileError(f"{path}: weights stored as {quantization!r}; this ds-robot reads "
                                  f"{', '.join(QUANTIZATIONS)}")

        if quantization != "fp32":
            try:
                arrays = _unpack(arrays, header["tensors"])
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise PolicyFileError(f"{path}: the int8 tensor table does not match the stored arrays: "
                                      f"{exc!r}") from exc

        def net(prefix: str) -> NumpyMLP:
            n = sum(1 for k in arrays if k.startswith(prefix + ".b"))
            try:
                weights = [arrays[f"{prefix}.w{i}"].astype(np.float64) for i in range(n)]
                biases = [arrays[f"{prefix}.b{i}"].astype(np.float64) for i in range(n)]
            except KeyError as exc:
                raise PolicyFileError(f"{path}: array {exc} is missing") from exc
            if missing and weights:
                weights[0] = np.vstack([weights[0], np.zeros((missing, weights[0].shape[1]))])
            return NumpyMLP(weights, biases)

        return cls(planner=net("planner"), skills=[net(f"skill_{n}") for n in SKILLS],
                   options=options_from_list(header["options"]), torque_features=bool(header["torque_features"]),
                   residual_scale=float(header["residual_scale"]), gripper_scale=float(header["gripper_scale"]),
                   variant=str(header.get("variant", "ur5e")), meta=dict(header.get("meta", {})),
                   quantization=quantization, probe_in_hand=bool(header.get("probe_in_hand", True)),
                   probe_residual=bool(header.get("probe_residual", True)),
                   palm_clearance_m=header.get("palm_clearance_m"),
                   escalate_after_slip=bool(header.get("escalate_after_slip", False)),
                   jaw_fit=bool(header.get("jaw_fit", False)))


# what every member of an ensemble must share: the planner's choices mean the same thing only
# over the same options, features and machine
ENSEMBLE_SHARED = ("options", "torque_features", "residual_scale", "gripper_scale", "variant", "probe_in_hand",
                   "probe_residual", "palm_clearance_m", "escalate_after_slip", "jaw_fit", "quantization")


def ensemble(paths) -> HierPolicy:
    """The policies in ``paths`` (e.g. the training seeds of one recipe) as one: the planner
    chooses by the mean of the members' option values (``mean_mlp``, one wider MLP), the skills
    are the first member's. A trained planner's mistakes on objects it has not seen differ from
    seed to seed (BENCHMARKS.md, issue 16 round 11); the mean keeps what they agree on. Members
    must share options, features and machine settings (``ENSEMBLE_SHARED``) and be fp32 (an int8
    ensemble is made by quantizing the result)."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise PolicyFileError(f"an ensemble needs at least 2 policy files, got {len(paths)}")
    if len(set(map(str, paths))) != len(paths):
        raise PolicyFileError("an ensemble member is listed twice: " + ", ".join(map(str, paths)))
    members = [HierPolicy.load(p) for p in paths]
    first = members[0]
    if first.quantization != "fp32":
        raise PolicyFileError(f"{paths[0]} is {first.quantization}: ensemble members must be fp32 files "
                              "(quantize the ensemble afterwards)")
    for path, m in zip(paths[1:], members[1:], strict=True):
        for key in ENSEMBLE_SHARED:
            if getattr(m, key) != getattr(first, key):
                raise PolicyFileError(f"{path}: {key} is {getattr(m, key)!r}, {paths[0]} has {getattr(first, key)!r}; "
                                      "ensemble members must share it")
    meta = dict(first.meta)
    meta["ensemble"] = {"rule": "planner: mean of the members' option values; skills: the first member's",
                        "members": [{"file": str(p), "seed": m.meta.get("config", {}).get("seed"),
                                     "steps": m.meta.get("steps")} for p, m in zip(paths, members, strict=True)]}
    return dataclasses.replace(first, planner=mean_mlp([m.planner for m in members]), meta=meta)


def _unpack(arrays: dict[str, np.ndarray], table: list) -> dict[str, np.ndarray]:
    q, scales, out = arrays["q"], arrays["scales"], {}
    for row in table:
        name, shape, q_at, s_at, n = row[:5]
        axis = row[5] if len(row) > 5 else 1
        size = int(np.prod(shape))
        if q_at + size > q.size or s_at + 2 * n > scales.size:
            raise ValueError(f"{name} runs past the end of the packed arrays")
        if axis not in (0, 1) or (n != 1 and (len(shape) != 2 or n != shape[axis])):
            raise ValueError(f"{name}: {n} scales for shape {shape} along axis {axis}")
        delta, w_min = scales[s_at : s_at + n], scales[s_at + n : s_at + 2 * n]
        if n == 1:
            delta, w_min = delta[0], w_min[0]
        out[name] = dequantize(q[q_at : q_at + size].reshape(shape), np.asarray(delta), np.asarray(w_min), axis)
    return out


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key], dtype=np.float32).tobytes())
    return h.hexdigest()
