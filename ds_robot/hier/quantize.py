"""int8 weight quantization of the hierarchical policy (docs/architecture.md, formulas).

The seed's rule is ``Q(w) = round(w / Delta) * Delta`` with ``Delta = (w_max - w_min) / 255``:
256 levels spanning the tensor's range. Taken literally, ``round(w / Delta)`` only fits in an
int8 when the range is symmetric around zero; for a tensor whose range is, say, [0.1, 0.9] it
would need values up to 229. So the levels are counted from ``w_min``:

    q = round((w - w_min) / Delta) - 128            (int8, -128 .. 127)
    w_hat = (q + 128) * Delta + w_min

which is the same 256-level grid over [w_min, w_max] and the same worst-case error, Delta / 2.
``per_channel`` computes ``w_min`` and ``Delta`` per output channel (per column of a weight
stored as (in, out)) instead of per tensor. The policy file quantizes biases too (per tensor).

A constant tensor (Delta = 0) gets Delta = 1 and q = -128, so it dequantizes exactly.

The runtime dequantizes once at load time and then runs the same float NumPy MLP as an fp32
file: the file is ~4x smaller, the arithmetic is float. On a CPU without int8 GEMM in NumPy,
int8 arithmetic would be slower, not faster, at these sizes; the latency gain of the robot-side
path comes from running NumPy instead of torch (``ds-robot bench node`` measures both).
"""

from __future__ import annotations

import numpy as np

LEVELS = 255


def quantize(w: np.ndarray, per_channel: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(q int8, delta float32, w_min float32)``; ``delta``/``w_min`` are scalars
    (shape ``()``) per tensor or shape ``(out,)`` per output channel of a 2-D ``(in, out)`` weight."""
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("cannot quantize a tensor with NaN or Inf entries")
    if per_channel:
        if w.ndim != 2:
            raise ValueError(f"per-channel quantization needs a 2-D (in, out) weight, got shape {w.shape}")
        w_min, w_max = w.min(axis=0), w.max(axis=0)
    else:
        w_min, w_max = np.asarray(w.min()), np.asarray(w.max())
    delta = (w_max - w_min) / LEVELS
    delta = np.where(delta > 0, delta, 1.0)
    q = np.clip(np.rint((w - w_min) / delta) - 128, -128, 127).astype(np.int8)
    return q, delta.astype(np.float32), w_min.astype(np.float32)


def dequantize(q: np.ndarray, delta: np.ndarray, w_min: np.ndarray) -> np.ndarray:
    return (q.astype(np.float64) + 128.0) * delta.astype(np.float64) + w_min.astype(np.float64)
