"""Where the robot description and scene files live.

The package is installed in editable mode from a checkout (``pip install -e .``) and
finds ``models/`` and ``sim/`` next to itself. Set ``DS_ROBOT_ROOT`` to point it at
another checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from ds_robot.errors import ConfigError


def project_root() -> Path:
    env = os.environ.get("DS_ROBOT_ROOT")
    root = Path(env) if env else Path(__file__).resolve().parents[1]
    if not (root / "models").is_dir():
        raise ConfigError(
            f"cannot find the robot description: {root / 'models'} does not exist. "
            "Install ds-robot from a checkout (pip install -e .) or set DS_ROBOT_ROOT "
            "to the checkout's directory."
        )
    return root


def models_dir() -> Path:
    return project_root() / "models" / "ur5"


def sim_dir() -> Path:
    return project_root() / "sim"


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise a ConfigError naming ``what``."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    return path


def policies_dir() -> Path:
    """Trained policies shipped with the repository (``models/policies``)."""
    return project_root() / "models" / "policies"
