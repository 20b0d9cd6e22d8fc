"""Checkpoints: atomic writes, and a clear refusal of missing, corrupt or mismatched files."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ds_robot.rl.amp import TrainingError

CHECKPOINT_FORMAT_VERSION = 1
# Names a network had in checkpoints written before it was renamed: read as the new name.
RENAMED_POLICIES = {"seed": "a2c_paper"}


def save_checkpoint(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": CHECKPOINT_FORMAT_VERSION, **payload}, tmp)
    os.replace(tmp, path)  # a run killed mid-write leaves the previous checkpoint intact


def load_checkpoint(path: str | Path, expect: dict | None = None) -> dict:
    """Load and validate; ``expect`` maps keys (algo, env_id, obs_shape, ...) to required values."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise TrainingError(f"{path} is not a readable ds-robot checkpoint (corrupt or truncated?): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise TrainingError(f"{path}: not a ds-robot checkpoint of format {CHECKPOINT_FORMAT_VERSION}")
    for holder in (payload, payload.get("config")):
        if isinstance(holder, dict) and holder.get("policy") in RENAMED_POLICIES:
            holder["policy"] = RENAMED_POLICIES[holder["policy"]]
    for key, value in (expect or {}).items():
        if payload.get(key) != value:
            raise TrainingError(
                f"{path}: checkpoint {key} is {payload.get(key)!r}, this run needs {value!r}; "
                "use a matching checkpoint or a new --out directory"
            )
    return payload
