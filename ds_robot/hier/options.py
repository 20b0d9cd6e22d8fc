"""The high-level planner's options: grasp candidates, at most ``MAX_OPTIONS``.

The default set crosses the three choices the scripted controller makes once and for all:
which side the jaws close across (narrow / wide), the pre-grasp height the approach ends at
(4 cm / 12 cm above the grasp pose) and how high the object is lifted (6.5 cm / 12 cm; success
needs 5 cm held for 1 s). Option 3 (narrow, 12 cm, 12 cm) is exactly the scripted baseline.
They trade success (a low approach can brush the object, a wide grasp can slip or not fit)
against energy and time, which is what the planner learns from.
"""

from __future__ import annotations

import itertools

from ds_robot.control.scripted import GraspOption
from ds_robot.errors import ConfigError

MAX_OPTIONS = 10

DEFAULT_OPTIONS: tuple[GraspOption, ...] = tuple(
    GraspOption(axis, pregrasp, lift)
    for axis, pregrasp, lift in itertools.product(("narrow", "wide"), (0.04, 0.12), (0.065, 0.12))
)


def validate_options(options) -> tuple[GraspOption, ...]:
    """A tuple of 2..``MAX_OPTIONS`` distinct ``GraspOption``s, or a ``ConfigError`` saying why not."""
    options = tuple(options)
    if not 2 <= len(options) <= MAX_OPTIONS:
        raise ConfigError(f"the planner needs 2 to {MAX_OPTIONS} options, got {len(options)}")
    for option in options:
        if not isinstance(option, GraspOption):
            raise ConfigError(f"planner options must be GraspOption, got {type(option).__name__}")
    if len(set(options)) != len(options):
        raise ConfigError("planner options must be distinct: " + ", ".join(o.describe() for o in options))
    return options


def options_to_list(options) -> list[list]:
    return [[o.axis, o.pregrasp_height_m, o.lift_height_m] for o in options]


def options_from_list(rows) -> tuple[GraspOption, ...]:
    try:
        return validate_options(GraspOption(str(a), float(p), float(h)) for a, p, h in rows)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"malformed option list {rows!r}: {exc}") from exc
