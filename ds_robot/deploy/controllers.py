"""The one place controllers are built: the CLI, the benchmarks and the ROS node all call
:func:`build_controller` (or :func:`controller_for_env`).

Kinds: ``scripted`` (the model-based baseline), ``fixed`` (the same machine with one planner
option, ``option=K`` indexing ``ds_robot.hier.options.DEFAULT_OPTIONS``, for every attempt), ``hier`` (the hierarchical policy, NumPy
runtime; ``runtime="torch"`` runs the same weights in torch eager for comparison; ``residual=
False`` keeps the planner and drops the residual skills, ``replan=False`` switches off the
re-plan of an empty lifted hand: ablations) and ``flat`` (one PPO
policy; needs torch). ``correction=True`` wraps the controller in the online sim-to-real
correction, which needs a model-based controller (scripted or hier).

Imports are inside the branches so the robot path (scripted / hier, NumPy) never loads torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ds_robot.control.contract import Controller
from ds_robot.errors import ConfigError
from ds_robot.model.params import default_description
from ds_robot.paths import policies_dir

CONTROLLERS = ("scripted", "fixed", "hier", "flat")
SHIPPED_POLICIES = {"hier": "grasp_hier.npz", "flat": "grasp_flat.pt"}
RUNTIMES = ("numpy", "torch")


def shipped_policy(kind: str) -> Path:
    """The policy shipped in ``models/policies`` for controller ``kind``."""
    return policies_dir() / SHIPPED_POLICIES[kind]


def build_controller(kind: str, *, variant: str = "ur5e", control_dt_s: float = 0.01, policy=None,
                     residual: bool = True, replan: bool = True, option: int | None = None,
                     runtime: str = "numpy", correction: bool = False,
                     max_torque_fraction: float = 1.0, **correction_options) -> Controller:
    """A controller of ``kind`` for arm ``variant`` at ``control_dt_s``.

    ``policy``: hier: a policy file or a loaded ``HierPolicy``; flat: a checkpoint; None: the
    shipped one. ``max_torque_fraction``: what the command is clipped to downstream (a node's
    safety limit), so the corrector learns from the torque that reaches the motors.
    ``correction_options`` go to :class:`~ds_robot.sim2real.correction.CorrectedController`.
    """
    if kind not in CONTROLLERS:
        raise ConfigError(f"unknown controller {kind!r}: choose one of {', '.join(CONTROLLERS)}")
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r}: choose {' or '.join(RUNTIMES)}")
    if kind != "hier" and (runtime != "numpy" or not residual or not replan):
        raise ConfigError("runtime, residual and replan apply to the hier controller only")
    if (kind == "fixed") != (option is not None):
        raise ConfigError("option K applies to (and is needed by) the fixed controller only")
    if correction_options and not correction:
        raise ConfigError(f"{sorted(correction_options)} apply with correction only")
    if kind == "scripted":
        if policy is not None:
            raise ConfigError("a policy applies to the hier and flat controllers, not scripted")
        from ds_robot.control.scripted import ScriptedGraspController

        controller: Controller = ScriptedGraspController(control_dt_s, variant)
    elif kind == "fixed":
        from ds_robot.control.scripted import ScriptedConfig, ScriptedGraspController
        from ds_robot.hier.options import DEFAULT_OPTIONS

        if policy is not None:
            raise ConfigError("a policy applies to the hier and flat controllers, not fixed")
        if not (isinstance(option, int) and 0 <= option < len(DEFAULT_OPTIONS)):
            raise ConfigError(f"option {option!r}: choose 0-{len(DEFAULT_OPTIONS) - 1} ("
                              + ", ".join(f"{i}: {o.describe()}" for i, o in enumerate(DEFAULT_OPTIONS)) + ")")
        controller = ScriptedGraspController(control_dt_s, variant, ScriptedConfig(option=DEFAULT_OPTIONS[option]))
        controller.name = f"fixed_{option}"
    elif kind == "hier":
        from ds_robot.hier.controller import HierarchicalController
        from ds_robot.hier.policy import HierPolicy

        loaded = policy if isinstance(policy, HierPolicy) else HierPolicy.load(policy or shipped_policy(kind))
        if runtime == "torch":
            from ds_robot.deploy.torch_runtime import torch_policy

            loaded = torch_policy(loaded)
        controller = HierarchicalController(loaded, control_dt_s, variant, residual=residual, replan=replan)
    else:
        from ds_robot.control.learned import FlatPolicyController

        controller = FlatPolicyController(policy or shipped_policy(kind), variant, control_dt_s)
    if not correction:
        return controller
    from ds_robot.sim2real.correction import CorrectedController

    limit = np.asarray(default_description().variant(variant).joint_torque_limit_nm, dtype=float)
    return CorrectedController(controller, variant, control_dt_s, limit, command_limit_nm=limit * max_torque_fraction,
                               **correction_options)


def controller_for_env(kind: str, env, **options) -> Controller:
    """:func:`build_controller` for the arm variant and control period of ``env``."""
    env = env.unwrapped
    controller = build_controller(kind, variant=env.backend.variant, control_dt_s=env.control_dt_s, **options)
    machine = skill_machine(controller)
    if machine is not None:  # the env's detector may not see the object in the hand
        machine.in_hand_vision = getattr(env, "in_hand_vision", True)
    return controller


def skill_machine(controller):
    """The ``ScriptedGraspController`` that runs ``controller``'s phases (itself, the hierarchical
    controller's skill machine, or the one inside a correction wrapper); None for a flat policy."""
    from ds_robot.control.scripted import ScriptedGraspController

    for _ in range(4):
        if isinstance(controller, ScriptedGraspController):
            return controller
        inner = getattr(controller, "machine", None) or getattr(controller, "inner", None)
        if inner is None:
            return None
        controller = inner
    return None
