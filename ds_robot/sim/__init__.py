"""Scenes (arena + arm + gripper + object) and object sets."""
