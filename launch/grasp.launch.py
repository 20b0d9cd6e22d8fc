"""ros2 launch ds_robot grasp.launch.py [use_sim:=true|false] [ur_type:=ur5e|ur5] [robot_ip:=...]
[tf_prefix:=...] [command_interface:=effort|velocity] [policy:=FILE] [config:=FILE]
[correction:=true|false] [world:=nominal|shifted|unmodelled]

use_sim:=true (default): the MuJoCo sim node plays the arm, gripper and object.
use_sim:=false: includes ur_robot_driver's ur_control.launch.py for the arm at robot_ip with
every motion controller inactive (``ds_robot.deploy.ur_driver``: the arguments, tested against
the driver's own declarations). Once the External Control program runs on the pendant, the
operator hands the arm to the policy with
``ros2 control switch_controllers --activate forward_effort_controller`` (e-Series) or
``forward_velocity_controller`` (CB3); until then the node's commands reach no controller.
The object pose must come from your perception on /object_pose.
correction:=true: online sim-to-real physics correction in the policy node (effort only).
world:=shifted|unmodelled (sim only): the sim node runs physics-shifted MuJoCo, or MuJoCo with physics outside the estimator's model, instead of the nominal model.

This file is the one source: ros2_ws/src/ds_robot/launch links here and the package installs it.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ds_robot.deploy.supervisor import SUPERVISOR_ENV
from ds_robot.deploy.ur_driver import driver_launch_arguments, motion_controller


def _nodes(context):
    share = get_package_share_directory("ds_robot")
    ur_type = LaunchConfiguration("ur_type").perform(context)
    interface = LaunchConfiguration("command_interface").perform(context)
    if not interface:
        interface = "effort" if ur_type.endswith("e") else "velocity"
    if interface == "effort" and not ur_type.endswith("e"):
        raise RuntimeError(f"command_interface:=effort on {ur_type} (CB3): CB3 controllers cannot take joint "
                           "torques; use command_interface:=velocity")
    config = LaunchConfiguration("config").perform(context) or os.path.join(share, "config", f"{ur_type}.yaml")
    correction = LaunchConfiguration("correction").perform(context).lower() in ("true", "1")
    if correction and interface != "effort":
        raise RuntimeError("correction:=true needs command_interface:=effort (it identifies the arm from its torques)")
    overrides = {"ur_type": ur_type, "command_interface": interface,
                 "tf_prefix": LaunchConfiguration("tf_prefix").perform(context),
                 "policy": LaunchConfiguration("policy").perform(context), "correction": correction}
    sim = LaunchConfiguration("use_sim").perform(context).lower() in ("true", "1")
    if sim:
        overrides["require_enable"] = False  # the operator gate is for the real arm
        overrides["switch_controller_on_enable"] = False  # no controller_manager beside the sim node
    use_sim = LaunchConfiguration("use_sim")
    actions = [
        Node(package="ds_robot", executable="sim_node", name="ds_robot_sim", output="screen",
             parameters=[config, {"ur_type": ur_type, "command_interface": interface, "tf_prefix": overrides["tf_prefix"],
                                  "world": LaunchConfiguration("world").perform(context)}],
             condition=IfCondition(use_sim)),
        Node(package="ds_robot", executable="policy_node", name="ds_robot_policy", output="screen",
             parameters=[config, overrides]),
        # its own process: brakes the arm when the policy node's commands stop (SIGKILL, a hang)
        Node(package="ds_robot", executable="supervisor", name="ds_robot_supervisor", output="screen",
             parameters=[config, {"ur_type": ur_type, "command_interface": interface,
                                  "tf_prefix": overrides["tf_prefix"]}],
             additional_env=SUPERVISOR_ENV),
    ]
    if not sim:
        motion_controller(interface)  # refuses an interface the driver has no controller for
        driver_launch = os.path.join(get_package_share_directory("ur_robot_driver"), "launch", "ur_control.launch.py")
        arguments = driver_launch_arguments(ur_type, LaunchConfiguration("robot_ip").perform(context),
                                            LaunchConfiguration("tf_prefix").perform(context))
        actions.append(IncludeLaunchDescription(PythonLaunchDescriptionSource(driver_launch),
                                                launch_arguments=arguments.items()))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("use_sim", default_value="true", description="MuJoCo sim node instead of the arm"),
        DeclareLaunchArgument("robot_ip", default_value="192.168.56.101", description="the UR controller's address"),
        DeclareLaunchArgument("ur_type", default_value="ur5e", description="ur5e (e-Series) or ur5 (CB3)"),
        DeclareLaunchArgument("tf_prefix", default_value="", description="the driver's joint name prefix"),
        DeclareLaunchArgument("command_interface", default_value="",
                              description="effort (e-Series direct torque) or velocity (CB3); empty: by ur_type"),
        DeclareLaunchArgument("policy", default_value="", description="policy file; empty: the shipped int8 policy"),
        DeclareLaunchArgument("config", default_value="", description="parameter YAML; empty: config/<ur_type>.yaml"),
        DeclareLaunchArgument("correction", default_value="false",
                              description="online sim-to-real physics correction (effort interface only)"),
        DeclareLaunchArgument("world", default_value="nominal",
                              description="sim only: nominal, shifted (hidden physics changes, world_seed) or unmodelled (physics outside the estimator's model)"),
        OpaqueFunction(function=_nodes),
    ])
