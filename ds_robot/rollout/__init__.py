"""Multi-process rollout: worker processes step environments and roll policies out, the
learner reads the results from shared memory. See ``ds_robot.rollout.engine`` for the design."""

from ds_robot.rollout.engine import (
    EnvFactory,
    PolicyFn,
    RolloutEngine,
    RolloutError,
    RolloutWarning,
    Trajectory,
)
from ds_robot.rollout.shared import NAME_PREFIX

__all__ = ["NAME_PREFIX", "EnvFactory", "PolicyFn", "RolloutEngine", "RolloutError", "RolloutWarning", "Trajectory"]
