"""Gymnasium environments. ``ds_robot/UR5Grasp-v0`` is registered when ``ds_robot`` is imported."""

from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.envs.grasp_task import OBS_SLICES, GraspTask, GraspTaskConfig

__all__ = ["OBS_SLICES", "GraspTask", "GraspTaskConfig", "UR5GraspEnv"]
