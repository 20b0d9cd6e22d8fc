"""Physics backends: the one small interface between the grasp task and whatever engine runs it."""

from ds_robot.physics.backend import EpisodeSetup, PhysicsBackend, RobotState

__all__ = ["EpisodeSetup", "PhysicsBackend", "RobotState"]
