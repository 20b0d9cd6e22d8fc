"""The high-level planner's options: grasp candidates, at most ``MAX_OPTIONS``.

The default set (10) crosses the choices the scripted controller makes once and for all:
how hard the pads press (the full force, about 24 N per pad; 12 N; a gentle 5 N), which side the
jaws close across (narrow / wide) and how high the object is lifted (6.5 cm / 12 cm; success
needs 5 cm held for 1 s), plus two probes (narrow / wide) that weigh the object with a 4 N grip
and a 2 cm lift and let the planner choose the grip with the object in the hand. Option 0
(narrow, 12 cm, 12 cm, full force) is exactly the scripted baseline. On the realistic task they
are different strategies: the full grip breaks fragile objects, a gentle one lets heavy or
slippery ones slip, a wide grasp can slip or not fit, a probe costs a second but tells the
weight. The probes replaced two low-approach options (4 cm pre-grasp), which reached 0.23 and
0.09 alone (BENCHMARKS.md, issue 16). ``LEGACY_OPTIONS`` are the 8 full-force options of the
policies trained before grip forces existed (their files list them).
"""

from __future__ import annotations

import itertools

from ds_robot.control.scripted import GraspOption
from ds_robot.errors import ConfigError

MAX_OPTIONS = 10
PROBE_GRIP_N = 4.0  # the probes' grip per pad: under the 6-9 N at which the task's fragile objects break

LEGACY_OPTIONS: tuple[GraspOption, ...] = tuple(
    GraspOption(axis, pregrasp, lift)
    for axis, pregrasp, lift in itertools.product(("narrow", "wide"), (0.04, 0.12), (0.065, 0.12))
)
DEFAULT_OPTIONS: tuple[GraspOption, ...] = (
    *(GraspOption("narrow", 0.12, 0.12, grip) for grip in (0.0, 12.0, 5.0)),
    *(GraspOption("wide", 0.12, 0.12, grip) for grip in (0.0, 12.0, 5.0)),
    *(GraspOption(axis, 0.12, 0.12, PROBE_GRIP_N, probe=True) for axis in ("narrow", "wide")),
    *(GraspOption("narrow", 0.12, 0.065, grip) for grip in (0.0, 5.0)),
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
    """Rows ``[axis, pregrasp m, lift m]``, with the grip force (N per pad) as a fourth entry
    when it is not the full force (so files written before grip forces existed read the same),
    and ``"probe"`` as a fifth for a probe option."""
    return [[o.axis, o.pregrasp_height_m, o.lift_height_m] + ([o.grip_force_n] if o.grip_force_n else [])
            + (["probe"] if o.probe else []) for o in options]


def options_from_list(rows) -> tuple[GraspOption, ...]:
    try:
        return validate_options(_option_from_row(r) for r in rows)
    except (TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"malformed option list {rows!r}: {exc}") from exc


def _option_from_row(row) -> GraspOption:
    row = list(row)
    probe = len(row) == 5 and row[4] == "probe"
    if not (3 <= len(row) <= 4 or probe):
        raise ValueError(f"option {row!r}: expected [axis, pregrasp m, lift m], [axis, pregrasp m, lift m, grip N] "
                         "or [axis, pregrasp m, lift m, grip N, 'probe']")
    return GraspOption(str(row[0]), *(float(v) for v in row[1:4]), probe=probe)
