"""What the controller sees of the object: a camera-based detector instead of the ground truth.

A task preset (``sim/tasks/*.yaml``, section ``perception``) configures it; the grasp env
applies it between the physics state and the observation, so every controller (scripted,
hierarchical, flat) sees the same corrupted object pose. The success test, the reward and the
energy always use the truth.

Model, per episode: a position bias (``bias_position_m``, standard deviation per axis) and a
yaw bias (``bias_yaw_deg``) drawn once (calibration and detector bias: constant within an
episode, so re-observing does not average it away), and a size estimate with a relative error
per axis (``size_error_fraction``). Per frame: the camera captures at ``rate_hz`` (the first
frame at a random phase), each frame with Gaussian position and yaw noise, and a frame is lost
with ``dropout_probability``; a frame reaches the controller ``latency_s`` after its capture.
Between deliveries the last delivered detection is held (the controller sees nothing newer).
The episode starts with one detection already delivered (the scene was seen before the arm
moved).

In-hand occlusion (``occlusion_radius_m`` > 0): a camera over the table does not see an object
under the gripper. A frame captured while the TCP is within ``occlusion_radius_m`` of the
object horizontally and within ``occlusion_height_m`` of it vertically is lost (counted in
``occluded_frames``), so from the end of the descent until the hand has risen clear (or left),
the controller holds the last detection from before: whether a lifted object is still in the
hand must come from the gripper and the joint torques (``ScriptedGraspController.in_hand_vision``).

A frame is captured from the physics state at the first control step at or after its capture
time (at most one control period, 10 ms, late: the physics is not stepped for the camera).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ds_robot.errors import ConfigError
from ds_robot.yamlio import Fields


@dataclass(frozen=True)
class PerceptionConfig:
    rate_hz: float = 30.0
    latency_s: float = 0.06
    dropout_probability: float = 0.05
    bias_position_m: tuple[float, float, float] = (0.004, 0.004, 0.002)
    bias_yaw_deg: float = 2.0
    noise_position_m: float = 0.0015
    noise_yaw_deg: float = 1.0
    size_error_fraction: float = 0.03
    occlusion_radius_m: float = 0.0  # 0: the detector sees the object in the hand too
    occlusion_height_m: float = 0.0

    @property
    def occludes(self) -> bool:
        """Whether the gripper hides the object it holds (then no frame shows a lifted object)."""
        return self.occlusion_radius_m > 0 and self.occlusion_height_m > 0

    def __post_init__(self):
        bad = {k: v for k, v in (("rate_hz", self.rate_hz), ("latency_s", self.latency_s),
                                 ("bias_yaw_deg", self.bias_yaw_deg), ("noise_position_m", self.noise_position_m),
                                 ("noise_yaw_deg", self.noise_yaw_deg),
                                 ("size_error_fraction", self.size_error_fraction),
                                 ("occlusion_radius_m", self.occlusion_radius_m),
                                 ("occlusion_height_m", self.occlusion_height_m))
               if not (math.isfinite(v) and v >= 0)}
        if self.rate_hz <= 0 or not 0 <= self.dropout_probability < 1 or len(self.bias_position_m) != 3 \
                or not all(math.isfinite(b) and b >= 0 for b in self.bias_position_m) \
                or self.size_error_fraction >= 0.5:
            bad["rate_hz / dropout_probability / bias_position_m / size_error_fraction"] = (
                self.rate_hz, self.dropout_probability, self.bias_position_m, self.size_error_fraction)
        if (self.occlusion_radius_m > 0) != (self.occlusion_height_m > 0):
            bad["occlusion_radius_m / occlusion_height_m"] = (self.occlusion_radius_m, self.occlusion_height_m)
        if bad:
            raise ConfigError(f"perception: impossible values {bad} (rates > 0, standard deviations >= 0, "
                              "dropout probability in [0, 1), size error < 0.5, occlusion radius and height "
                              "both 0 or both > 0)")

    @classmethod
    def from_fields(cls, f: Fields) -> PerceptionConfig:
        return cls(rate_hz=f.number("rate_hz", low=0.1, high=1000.0),
                   latency_s=f.number("latency_s", low=0.0, high=1.0),
                   dropout_probability=f.number("dropout_probability", low=0.0, high=0.99),
                   bias_position_m=tuple(f.vector("bias_position_m", 3, low=0.0, high=0.05)),
                   bias_yaw_deg=f.number("bias_yaw_deg", low=0.0, high=30.0),
                   noise_position_m=f.number("noise_position_m", low=0.0, high=0.05),
                   noise_yaw_deg=f.number("noise_yaw_deg", low=0.0, high=30.0),
                   size_error_fraction=f.number("size_error_fraction", low=0.0, high=0.3),
                   occlusion_radius_m=f.number("occlusion_radius_m", low=0.0, high=0.5, default=0.0),
                   occlusion_height_m=f.number("occlusion_height_m", low=0.0, high=0.5, default=0.0))


def _yaw_quat(angle_rad: float) -> np.ndarray:
    return np.array([math.cos(angle_rad / 2), 0.0, 0.0, math.sin(angle_rad / 2)])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


Detection = tuple[np.ndarray, np.ndarray, np.ndarray]  # position (3,), quaternion wxyz (4,), half-extents (3,)


class Perception:
    """The detector of one env: ``reset`` at the start of an episode, then one call per control step."""

    def __init__(self, config: PerceptionConfig):
        self.config = config
        self.period_s = 1.0 / config.rate_hz
        self.delivered_frames = 0
        self.dropped_frames = 0
        self.occluded_frames = 0

    def _detect(self, pos: np.ndarray, quat: np.ndarray, rng: np.random.Generator) -> Detection:
        c = self.config
        seen_pos = pos + self.bias_pos + rng.normal(0.0, c.noise_position_m, 3)
        yaw = self.bias_yaw + rng.normal(0.0, math.radians(c.noise_yaw_deg))
        return seen_pos, _quat_mul(_yaw_quat(yaw), quat), self.half_extents

    def reset(self, time_s: float, pos: np.ndarray, quat: np.ndarray, half_extents_m: np.ndarray,
              rng: np.random.Generator) -> Detection:
        c = self.config
        self.bias_pos = rng.normal(0.0, 1.0, 3) * np.array(c.bias_position_m)
        self.bias_yaw = rng.normal(0.0, math.radians(c.bias_yaw_deg))
        self.half_extents = np.asarray(half_extents_m, float) * (1.0 + rng.normal(0.0, c.size_error_fraction, 3))
        self.half_extents = np.maximum(self.half_extents, 1e-3)
        self.next_capture_s = time_s + rng.uniform(0.0, self.period_s)
        self.in_flight: deque[tuple[float, Detection]] = deque()
        self.current = self._detect(pos, quat, rng)
        self.current_capture_s = time_s
        return self.current

    def occluded(self, pos: np.ndarray, tcp_pos: np.ndarray | None) -> bool:
        """Whether the gripper at ``tcp_pos`` hides an object at ``pos`` from the camera."""
        c = self.config
        if tcp_pos is None or not c.occludes:
            return False
        d = np.asarray(tcp_pos, float) - np.asarray(pos, float)
        return math.hypot(d[0], d[1]) <= c.occlusion_radius_m and abs(d[2]) <= c.occlusion_height_m

    def __call__(self, time_s: float, pos: np.ndarray, quat: np.ndarray, rng: np.random.Generator,
                 tcp_pos: np.ndarray | None = None) -> Detection:
        c = self.config
        hidden = None  # decided once, and only on a step where a frame is due (30 of 100 steps a second)
        while self.next_capture_s <= time_s + 1e-12:
            if hidden is None:
                hidden = self.occluded(pos, tcp_pos)
            if hidden:
                self.occluded_frames += 1
            elif rng.random() >= c.dropout_probability:
                self.in_flight.append((self.next_capture_s, self._detect(pos, quat, rng)))
            else:
                self.dropped_frames += 1
            self.next_capture_s += self.period_s
        while self.in_flight and self.in_flight[0][0] + c.latency_s <= time_s + 1e-12:
            self.current_capture_s, self.current = self.in_flight.popleft()
            self.delivered_frames += 1
        return self.current

    def age_s(self, time_s: float) -> float:
        """How old the delivered detection is (time since its capture)."""
        return time_s - self.current_capture_s
