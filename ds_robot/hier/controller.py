"""The hierarchical grasp controller at run time (NumPy only, no torch).

Each control step: the 52-D features of the observation (``ds_robot.hier.features``); if the skill
machine is about to plan an attempt, the planner picks the option with the highest logit
(one high-level decision, timed); the active skill's policy gives a residual on the
machine's computed-torque command. ``residual_share`` is the running ratio
``sum |residual torque| / sum |applied torque|`` over the episode, the part of the torque
the learned skills contribute.
"""

from __future__ import annotations

import time

import numpy as np

from ds_robot.control.contract import Controller
from ds_robot.control.robot_model import RobotModel
from ds_robot.control.scripted import ScriptedConfig, ScriptedGraspController
from ds_robot.hier.features import RESIDUAL_SIZE, compose_action, hier_observation, residual_acts, skill_of
from ds_robot.hier.policy import HierPolicy


class HierarchicalController(Controller):
    name = "hier"

    def __init__(self, policy: HierPolicy, control_dt_s: float = 0.01, variant: str = "ur5e",
                 residual: bool = True, replan: bool = True):
        self.policy = policy
        self.residual = residual  # False: the planner's options on the bare model-based skills (an ablation)
        # replan False: an empty hand after the lift no longer starts a new decision (an ablation)
        self.machine = ScriptedGraspController(control_dt_s, variant,
                                               ScriptedConfig(replan_on_empty=replan,
                                                              palm_clearance_m=policy.palm_clearance_m))
        self.machine.torque_available = policy.torque_features
        self.machine.option_chooser = self._choose
        self.limit = self.machine.torque_limit_nm
        self.planning_latency_s: list[float] = []
        self.chosen: list[int] = []
        self.features: np.ndarray | None = None  # the 52-D features of the last act()

    @property
    def robot_model(self) -> RobotModel:
        return self.machine.robot_model

    @property
    def uses_torque_features(self) -> bool:
        return self.policy.torque_features

    @property
    def planning_s(self) -> list[float]:
        return self.machine.planning_s

    def _choose(self, obs: np.ndarray, attempt: int):
        start = time.perf_counter()
        index = int(self.policy.choose(self.features))
        self.planning_latency_s.append(time.perf_counter() - start)
        self.chosen.append(index)
        return self.policy.options[index]

    def reset(self, obs: np.ndarray) -> None:
        self.machine.reset(obs)
        self._residual_abs = 0.0
        self._torque_abs = 0.0

    def act(self, obs: np.ndarray) -> np.ndarray:
        features = hier_observation(obs, self.machine, self.policy.torque_features)
        self.features = features
        torque, gripper = self.machine.command(obs)  # plans through _choose when an attempt starts
        p = self.policy
        if self.residual and residual_acts(self.machine, p.probe_residual):
            residual = np.clip(p.skills[int(skill_of(features))](features), -1.0, 1.0)
        else:
            residual = np.zeros(RESIDUAL_SIZE)
        action = compose_action(torque, gripper, residual, self.limit, p.residual_scale, p.gripper_scale)
        self._residual_abs += float(np.abs(p.residual_scale * residual[:6] * self.limit).sum())
        self._torque_abs += float(np.abs(action[:6] * self.limit).sum())
        return action.astype(np.float32)

    @property
    def residual_share(self) -> float:
        return self._residual_abs / self._torque_abs if self._torque_abs > 0 else 0.0
