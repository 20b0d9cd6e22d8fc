"""What every grasp controller is: the contract the env loop, the robot core, the online
corrector and the benchmarks rely on.

A controller sees the grasp env's observation (``ds_robot.envs.layout``) and returns the env's
action: 6 joint torques normalised by the joint torque limits and a gripper command, all in
[-1, 1]. ``reset(obs)`` starts an episode (a grasp) from its first observation.

It declares what it depends on (and what benchmarks measure) instead of being reached into:

- ``robot_model``: the :class:`RobotModel` it computes its torques with, or ``None`` for a
  model-free controller. The online corrector (``ds_robot.sim2real.correction``) writes its
  estimate into exactly this model, so only a controller that declares one can be corrected.
- ``uses_torque_features``: whether its actions depend on the measured joint torques (the
  robot core then refuses joint states without efforts).

Controllers are built in one place, ``ds_robot.deploy.controllers.build_controller``, for the
CLI, the benchmarks and the ROS node.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the contract itself loads no MuJoCo model
    from ds_robot.control.robot_model import RobotModel


class Controller(ABC):
    name: str

    @abstractmethod
    def reset(self, obs: np.ndarray) -> None:
        """Start an episode from its first observation."""

    @abstractmethod
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action (``ds_robot.envs.layout.ACTION_SIZE``, float32, in [-1, 1]) for this control step."""

    @property
    @abstractmethod
    def robot_model(self) -> RobotModel | None:
        """The model the controller's torques are computed with (None: model-free)."""

    @property
    @abstractmethod
    def uses_torque_features(self) -> bool:
        """True if the actions depend on the measured joint torques."""

    @property
    def planning_s(self) -> list[float]:
        """Wall time of each high-level decision so far (planning a grasp attempt): the planning
        latency metric. Empty for a controller that does not plan."""
        return []
