"""The hierarchical controller's features and action composition, for training and run time.

NumPy only: ``HierGraspEnv`` (training) and ``HierarchicalController`` (run time, on the
robot) both build their features with :func:`hier_observation` and their arm command with
:func:`compose_action`, so the two cannot drift apart.

Features (``HIER_OBS_SIZE`` = 52): the grasp env's 35 torque-augmented features
(``ds_robot.envs.layout``; with ``torque_features=False`` the ``tau`` slice is zero) followed by

==========  ====  ==============================================================
skill       3     one-hot: reach (plan/approach/descend/retreat), grasp (close), lift (lift/hold)
progress    1     fraction of the current phase's motion done
tracking    6     joint target minus joint position, rad x 10
decision    1     1 when the next step plans an attempt (the planner must choose)
attempt     1     attempts made so far / max attempts
last_grip   1     the last attempt's grip force per pad / the full force (0 before a first attempt)
last_load   1     after a slip or a probe: the payload (kg) the measured torques showed over the first
                  0.2 s of the hold (the empty-hand check's mean; ~0 once the object is gone; 0
                  without torque features or after a miss)
last_end    2     one-hot: the last attempt missed (jaws shut on nothing), slipped (lifted hand empty,
                  or a probed object stayed down); both 0 after a probe that lifted its object
in_hand     1     1 at the decision after a probe: the object is between the pads (held, or slipped
                  and still there), the option chosen continues from there
==========  ====  ==============================================================

Policy files written before the ``last_*`` fields (47 features) or ``in_hand`` (51) load with zero
weights for them (``ds_robot.hier.policy``): those policies never read them.

Action: the skill machine's computed torque plus the skill policy's residual,
``tau = tau_model + residual_scale * limit * residual`` and
``g = g_model + gripper_scale * residual_g``, clipped to the env's [-1, 1].
"""

from __future__ import annotations

import math

import numpy as np

from ds_robot.control.scripted import ScriptedGraspController
from ds_robot.envs.layout import ACTION_SIZE, OBS_FIELDS, OBS_SIZE, OBS_SLICES, field_slices
from ds_robot.model.params import FULL_GRIP_N, default_description  # FULL_GRIP_N: last_grip's unit

SKILLS = ("reach", "grasp", "lift")
PHASE_SKILL = {"idle": 0, "plan": 0, "approach": 0, "descend": 0, "retreat": 0, "out_of_reach": 0, "close": 1,
               "lift": 2, "hold": 2, "decide": 2}
EXTRA_FIELDS = (("skill", 3), ("progress", 1), ("tracking", 6), ("decision", 1), ("attempt", 1),
                ("last_grip", 1), ("last_load", 1), ("last_end", 2), ("in_hand", 1))
HIER_FIELDS = OBS_FIELDS + EXTRA_FIELDS
HIER_SLICES: dict[str, slice] = field_slices(HIER_FIELDS)
HIER_OBS_SIZE = sum(size for _, size in HIER_FIELDS)
H = HIER_SLICES
RESIDUAL_SIZE = 7  # 6 joint torques / limits, gripper correction
HIER_ACTION_SIZE = 1 + RESIDUAL_SIZE  # the training env's action: option index, residual
RESIDUAL_SCALE = 0.1  # residual joint torque = RESIDUAL_SCALE * limit * action
# Gripper command correction = GRIPPER_SCALE * action. Off: the grip force is the planner's choice
# (the option), and a residual on the gripper command changes it; at 0.25 (the first policies,
# which keep it in their files) exploration noise on it crushed every fragile object that a
# gentle option would have held.
GRIPPER_SCALE = 0.0


# What the planner decides from: the perceived object's size (its bounding box, which also says
# which face it rests on: the object frame stays gravity-aligned) and how many attempts were made.
# The object's orientation in the TCP frame is its yaw, uniform over the circle and irrelevant to
# the choice (the wrist turns to it): in the inputs, it alone moved one object's learned values
# by up to 15 (success is +1). At a re-plan it also sees how the last attempt ended: its grip,
# whether it missed or slipped and, from the joint torques, what the slipping grip carried. The arm's joint state, torques and the skill progress at a decision are the
# start pose or the retreat pose, and the object's position and the goal are given in the TCP
# frame, so they move with the start pose (+-0.12 rad per joint): with them in, the learned
# option values for one object swung by ~5x the gap between options from episode to episode
# (BENCHMARKS.md, issue 16) and the choice with them. Whether the torques (here: last_load)
# earn their place is the hier_no_torque ablation: over rounds 9 and 10, 3 training seeds each,
# they showed no benefit on the unseen objects, and in round 10 the planners without them did
# better (0.992 vs 0.931). Why is open: zeroing the payload read after a slip (the friction the
# pads carried, not the weight) did not close the gap in a 2-seed check (BENCHMARKS.md, issue
# 16 round 10).
PLANNER_FIELDS = ("object_size", "attempt", "last_grip", "last_load", "last_end", "in_hand")
# last_load: kg x 5, so that the weighed difference between a 40 g paper box and a 0.4 kg mug
# (0.36 kg) reads 1.8, as far apart as a 9 cm size difference does; at x1 it read 0.36 against
# the sizes' x20. The round-7 planner, after weighing an unseen 40 g paper box, valued the 5 N
# grip at -5.9 (no return is below about -1.5) and crushed the box with the full grip; round 8
# changed this scale and clamped the value target together (hier.train), and which of the two
# fixed it is not separated (BENCHMARKS.md, issue 16 round 8)
PLANNER_GAINS = {"object_pos": 5.0, "object_size": 20.0, "goal": 5.0, "last_load": 5.0}  # the rest: 1


def feature_scale(fields=PLANNER_FIELDS) -> np.ndarray:
    """Per-feature input scales for the planner (folded into its first layer when exported, so
    the policy file and the run time are unchanged): 0 outside ``PLANNER_FIELDS``; the object's
    position, size and goal offset are metres (0.01-0.5) and are scaled up, so the planner sees
    a 1 cm size difference as 0.2, not 0.01; the rest is about unit range already. ``fields``:
    another selection (``HierTrainConfig.planner_fields``)."""
    scale = np.zeros(HIER_OBS_SIZE, dtype=np.float32)
    for name in fields:
        scale[HIER_SLICES[name]] = PLANNER_GAINS.get(name, 1.0)
    return scale


def hier_observation(obs: np.ndarray, machine: ScriptedGraspController, torque_features: bool) -> np.ndarray:
    """The 52-D features of the grasp env's observation ``obs`` and the machine's state."""
    out = np.zeros(HIER_OBS_SIZE, dtype=np.float32)
    out[:OBS_SIZE] = obs
    if not torque_features:
        out[OBS_SLICES["tau"]] = 0.0
    out[H["skill"].start + PHASE_SKILL[machine.phase]] = 1.0
    out[H["progress"]] = machine.phase_progress() if machine.phase != "plan" else 0.0
    out[H["tracking"]] = (machine.q_des - obs[OBS_SLICES["q"]]) * 10.0
    out[H["decision"]] = 1.0 if machine.decision_due(obs) else 0.0
    out[H["attempt"]] = machine.attempt / machine.config.max_attempts
    last = machine.last_option
    if last is not None:
        out[H["last_grip"]] = (last.grip_force_n or FULL_GRIP_N) / FULL_GRIP_N
        load = machine.last_payload_kg
        out[H["last_load"]] = min(max(load, -0.5), 3.0) if torque_features and math.isfinite(load) else 0.0
        if machine.last_outcome in ("missed", "slipped"):
            out[H["last_end"].start + (0 if machine.last_outcome == "missed" else 1)] = 1.0
    out[H["in_hand"]] = 1.0 if machine.phase == "decide" else 0.0
    return out


FIT_MARGIN_M = 0.01  # room left in the open jaws for the perceived size's error (3%) and the pose error


def available_options(hier_obs: np.ndarray, options, probe_in_hand: bool = False,
                      escalate: bool = False, jaw_fit: bool = False) -> np.ndarray:
    """Which of ``options`` may start where ``hier_obs`` (one row or a batch) was taken: each
    option's initiation set (the options framework, Sutton, Precup & Singh 1999), ``(..., k)``
    booleans. A probe starts only with an empty hand (every option anywhere with
    ``probe_in_hand``, the policies before round 9). In the hand (the decision after a probe)
    it would continue as its own 4 N grip, the grip that just weighed the object: after a slip
    that slips again and wastes the attempt; held, the 5 N gentle options lift as gently. The
    round-8 planner valued that choice at 1.05 after a slipped probe of a 1.7 kg box (no return
    is above about 0.9: an extrapolated value for a rarely tried option) and took it.

    ``escalate`` (``HierPolicy.escalate_after_slip``): after a slip, only a stronger grip may
    follow. Friction grows with the pads' normal force, so a grip no stronger than one that just
    slipped off the object slips again (a full grip that slipped may be tried again: the pose
    may have been the cause); a probe weighs with 4 N, the weakest grip, so none follows a slip.
    On the stress set the shipped planner, after a slipped probe of a 0.94 kg capsule (friction
    0.36), chose 5 N, slipped, probed again and chose 5 N again, in every episode (BENCHMARKS.md,
    issue 16 round 14).

    ``jaw_fit`` (``HierPolicy.jaw_fit``): an option whose jaws close across a side of the
    perceived object wider than the open jaws (the gripper's ``max_opening_m``) less
    ``FIT_MARGIN_M`` is unavailable (if no option fits, none is masked for it).

    The trainer applies the same sets (``HierTrainConfig``: in exploration and in the value
    target's max) as the run time (``HierPolicy.choose``). On the stress set the shipped planner opened its attempts on a
    3 x 13.6 cm box with a probe across the 13.6 cm side, which 10 cm jaws cannot close on."""
    hier_obs = np.asarray(hier_obs)
    in_hand = hier_obs[..., H["in_hand"]] > 0.5  # (..., 1)
    probe = np.array([bool(getattr(o, "probe", False)) and not probe_in_hand for o in options])
    available = ~(in_hand & probe)
    if escalate:
        slipped = hier_obs[..., H["last_end"].start + 1 : H["last_end"].start + 2] > 0.5  # (..., 1)
        last = hier_obs[..., H["last_grip"]] * FULL_GRIP_N  # (..., 1), N per pad
        grip = np.array([o.grip_force_n or FULL_GRIP_N for o in options])
        weaker = (grip <= last + 1e-3) & (grip < FULL_GRIP_N)
        available &= ~(slipped & weaker)
    if jaw_fit:
        max_opening_m = default_description().gripper.max_opening_m
        half = hier_obs[..., H["object_size"]]
        sides = {"narrow": 2.0 * half[..., :2].min(axis=-1), "wide": 2.0 * half[..., :2].max(axis=-1)}
        across = np.stack([sides[o.axis] for o in options], axis=-1)  # (..., k)
        fits = across <= max_opening_m - FIT_MARGIN_M
        fits |= ~fits.any(axis=-1, keepdims=True)
        available &= fits
    return available


def residual_acts(machine: ScriptedGraspController, probe_residual: bool) -> bool:
    """Whether the skills' residual torque acts this step. Not during a probe (unless
    ``probe_residual``, the policies before round 9): the probe is a measurement, a 2 cm lift at
    4 N whose outcome (held or slipped, the weighed payload) the next decision reads. With the
    residual on, the round-9 energy-only planner's probes of an unseen 40 g paper box and an egg
    read "slipped", the planner chose 12 N for a heavy object and crushed them; the same
    episodes with the residual off during the probe read "probed" and succeeded (BENCHMARKS.md,
    issue 16 round 9)."""
    if machine.phase == "out_of_reach":  # holding still until the object is seen in reach: nothing to correct
        return False
    return probe_residual or not machine.probing


def best_available(values: np.ndarray, available: np.ndarray) -> np.ndarray:
    """The argmax of ``values`` (``(..., k)``) over the available options only."""
    return np.argmax(np.where(available, values, -np.inf), axis=-1)


def skill_of(hier_obs: np.ndarray) -> np.ndarray:
    """The active skill index of each row (or of one observation)."""
    return np.argmax(hier_obs[..., H["skill"]], axis=-1)


def compose_action(model_torque_nm: np.ndarray, model_gripper: float, residual: np.ndarray,
                   torque_limit_nm: np.ndarray, residual_scale: float, gripper_scale: float) -> np.ndarray:
    """The env action (7, float64, in [-1, 1]) from the machine's command and a residual in [-1, 1]."""
    action = np.empty(ACTION_SIZE)
    action[:6] = model_torque_nm / torque_limit_nm + residual_scale * residual[:6]
    action[6] = model_gripper + gripper_scale * residual[6]
    return np.clip(action, -1.0, 1.0, out=action)
