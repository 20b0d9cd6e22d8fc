"""Gymnasium environments and the grasp observation layout.

``ds_robot/UR5Grasp-v0`` (``ds_robot.envs.grasp_env.UR5GraspEnv``) is registered when
``ds_robot`` is imported. ``ds_robot.envs.layout`` (NumPy only) is what the robot side uses.
"""
