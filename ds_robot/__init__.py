"""ds-robot: a robotics control stack for learning and running UR5 grasping."""

import importlib.util

__version__ = "0.1.0"


def _register_envs() -> None:
    from gymnasium.envs.registration import register, registry

    if "ds_robot/UR5Grasp-v0" not in registry:
        register(id="ds_robot/UR5Grasp-v0", entry_point="ds_robot.envs.grasp_env:UR5GraspEnv")
        register(id="ds_robot/UR5GraspNoTorque-v0", entry_point="ds_robot.envs.grasp_env:UR5GraspEnv",
                 kwargs={"torque_features": False})
        register(id="ds_robot/UR5GraspHier-v0", entry_point="ds_robot.hier.env:HierGraspEnv")
        register(id="ds_robot/UR5GraspCartesian-v0", entry_point="ds_robot.control.cartesian:CartesianGraspEnv",
                 kwargs={"task": "realistic"})


# The env ids need gymnasium (the ``sim`` extra). The robot-side install has none: the policy
# node and the NumPy policy runtime work without it.
if importlib.util.find_spec("gymnasium") is not None:
    _register_envs()
