"""int8 weight quantization of the hierarchical policy (docs/architecture.md, formulas).

The seed's rule is ``Q(w) = round(w / Delta) * Delta`` with ``Delta = (w_max - w_min) / 255``:
256 levels spanning the tensor's range. Taken literally, ``round(w / Delta)`` only fits in an
int8 when the range is symmetric around zero; for a tensor whose range is, say, [0.1, 0.9] it
would need values up to 229. So the levels are counted from ``w_min``:

    q = round((w - w_min) / Delta) - 128            (int8, -128 .. 127)
    w_hat = (q + 128) * Delta + w_min

which is the same 256-level grid over [w_min, w_max] and the same worst-case error, Delta / 2.
``per_channel`` computes ``w_min`` and ``Delta`` per channel instead of per tensor: per output
channel (per column of a weight stored as (in, out)), or per input row (``channel_axis=0``),
which is what a first layer needs when its rows carry very different input scales (the
planner's object-size rows are scaled x20, its orientation rows x1: one grid over the
whole layer is too coarse for the small rows). The policy file quantizes biases too (per tensor).

A constant tensor (Delta = 0) gets Delta = 1 and q = -128, so it dequantizes exactly.

The runtime dequantizes once at load time and then runs the same float NumPy MLP as an fp32
file: the file is ~4x smaller, the arithmetic is float. On a CPU without int8 GEMM in NumPy,
int8 arithmetic would be slower, not faster, at these sizes; the latency gain of the robot-side
path comes from running NumPy instead of torch (``ds-robot bench node`` measures both).
"""

from __future__ import annotations

import numpy as np

LEVELS = 255


def quantize(w: np.ndarray, per_channel: bool = False, channel_axis: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(q int8, delta float32, w_min float32)``; ``delta``/``w_min`` are scalars
    (shape ``()``) per tensor, or shape ``(w.shape[channel_axis],)`` per channel of a 2-D
    ``(in, out)`` weight: ``channel_axis=1`` per output channel (column), ``0`` per input row."""
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("cannot quantize a tensor with NaN or Inf entries")
    if per_channel:
        if w.ndim != 2 or channel_axis not in (0, 1):
            raise ValueError(f"per-channel quantization needs a 2-D (in, out) weight and channel axis 0 or 1, "
                             f"got shape {w.shape}, axis {channel_axis}")
        w_min, w_max = w.min(axis=1 - channel_axis), w.max(axis=1 - channel_axis)
    else:
        w_min, w_max = np.asarray(w.min()), np.asarray(w.max())
    delta = (w_max - w_min) / LEVELS
    delta = np.where(delta > 0, delta, 1.0)
    b_delta, b_min = _broadcast(delta, w_min, channel_axis)
    q = np.clip(np.rint((w - b_min) / b_delta) - 128, -128, 127).astype(np.int8)
    return q, delta.astype(np.float32), w_min.astype(np.float32)


def dequantize(q: np.ndarray, delta: np.ndarray, w_min: np.ndarray, channel_axis: int = 1) -> np.ndarray:
    delta, w_min = _broadcast(np.asarray(delta, np.float64), np.asarray(w_min, np.float64), channel_axis)
    return (q.astype(np.float64) + 128.0) * delta + w_min


def _broadcast(delta: np.ndarray, w_min: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row scales as a column (``(in, 1)``) so they broadcast over a weight's rows."""
    if channel_axis == 0 and delta.ndim == 1:
        return delta[:, None], w_min[:, None]
    return delta, w_min
