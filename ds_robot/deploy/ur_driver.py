"""How ``grasp.launch.py`` brings up the Universal Robots ROS 2 driver (``ur_robot_driver``).

Pure Python (no ``launch`` import), so the arguments are tested here against what the driver
declares (``tests/test_ur_driver.py`` records the driver's argument names and choices, with the
branch and commit they come from).

The arm comes up with **no motion controller active**: ``ur_control.launch.py`` spawns every
motion controller in its ``controllers_inactive`` list inactive, and with
``activate_joint_controller:=false`` the initial one stays inactive too. ``forward_effort_controller``
(e-Series, direct torque) is not a valid ``initial_joint_controller`` on any branch (it is not in
the argument's ``choices``), so the initial controller named here is only the one the driver's
launch needs a valid value for. The operator switches the policy's controller on once the robot
program runs (``activation_command``); commands published before that reach no controller.
"""

from __future__ import annotations

from ds_robot.deploy.core import UR_TYPES
from ds_robot.errors import ConfigError

# in initial_joint_controller's choices on the jazzy, kilted and main branches (the test checks)
INITIAL_CONTROLLER = "joint_trajectory_controller"
MOTION_CONTROLLERS = {"effort": "forward_effort_controller", "velocity": "forward_velocity_controller"}


def motion_controller(command_interface: str) -> str:
    try:
        return MOTION_CONTROLLERS[command_interface]
    except KeyError:
        raise ConfigError(f"command_interface {command_interface!r}: choose "
                          f"{' or '.join(MOTION_CONTROLLERS)}") from None


def driver_launch_arguments(ur_type: str, robot_ip: str, tf_prefix: str = "") -> dict[str, str]:
    """The arguments ``grasp.launch.py`` passes to ``ur_robot_driver``'s ``ur_control.launch.py``."""
    if ur_type not in UR_TYPES:  # the arms ds-robot has models for (a subset of the driver's choices)
        raise ConfigError(f"ur_type {ur_type!r}: ds-robot has models for {', '.join(UR_TYPES)}")
    if not robot_ip:
        raise ConfigError("use_sim:=false needs robot_ip:=<the UR controller's address>")
    return {
        "ur_type": ur_type,
        "robot_ip": robot_ip,
        "tf_prefix": tf_prefix,
        "initial_joint_controller": INITIAL_CONTROLLER,
        "activate_joint_controller": "false",
        "launch_rviz": "false",
    }


def activation_command(command_interface: str) -> str:
    """The operator's step that hands the arm to the policy (run it with the robot program
    playing; ``ros2 control`` is part of a ROS install)."""
    return f"ros2 control switch_controllers --activate {motion_controller(command_interface)}"
