"""The launch file's driver bring-up against what Universal_Robots_ROS2_Driver really declares.

``ros2 launch`` and the driver are not installable here, so the driver's declarations are
recorded as data below, read from ``ur_robot_driver/launch/ur_control.launch.py`` (every
``DeclareLaunchArgument``: its name and ``choices``; the ``controllers_inactive`` list the
spawner starts inactive) and ``ur_robot_driver/config/ur_controllers.yaml`` at the branch
heads named with their commits. Re-record them when a branch moves."""

import ast
from pathlib import Path

import pytest

from ds_robot.deploy.ur_driver import (
    INITIAL_CONTROLLER,
    MOTION_CONTROLLERS,
    UR_TYPES,
    activation_command,
    driver_launch_arguments,
)
from ds_robot.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "grasp.launch.py"

# identical on the three branches
ARGUMENTS = ["activate_joint_controller", "controller_spawner_timeout", "controllers_file", "description_launchfile",
             "headless_mode", "initial_joint_controller", "launch_dashboard_client", "launch_rviz",
             "mock_sensor_commands", "reverse_ip", "reverse_port", "robot_ip", "rviz_config_file", "safety_k_position",
             "safety_limits", "safety_pos_margin", "script_command_port", "script_sender_port", "tf_prefix",
             "tool_baud_rate", "tool_device_name", "tool_parity", "tool_rx_idle_chars", "tool_stop_bits",
             "tool_tcp_port", "tool_tx_idle_chars", "tool_voltage", "trajectory_port", "ur_type", "use_mock_hardware",
             "use_tool_communication"]
UR_TYPE_CHOICES = ["ur3", "ur5", "ur10", "ur3e", "ur5e", "ur7e", "ur10e", "ur12e", "ur16e", "ur8long", "ur15", "ur18",
                   "ur20", "ur30"]
BOOLEAN = ["true", "false"]  # activate_joint_controller, launch_rviz: compared with == "true"
DRIVER = {
    "jazzy": {
        "commit": "a16a26876b35688e1f5c75f0de63f0c0c70e78f9",
        "arguments": ARGUMENTS,
        "choices": {"ur_type": UR_TYPE_CHOICES,
                    "initial_joint_controller": ["scaled_joint_trajectory_controller", "joint_trajectory_controller",
                                                 "forward_velocity_controller", "forward_position_controller",
                                                 "freedrive_mode_controller", "passthrough_trajectory_controller"],
                    "activate_joint_controller": BOOLEAN, "launch_rviz": BOOLEAN},
        "inactive": ["scaled_joint_trajectory_controller", "joint_trajectory_controller", "forward_velocity_controller",
                     "forward_position_controller", "forward_effort_controller", "force_mode_controller",
                     "passthrough_trajectory_controller", "freedrive_mode_controller", "tool_contact_controller"],
    },
    "kilted": {
        "commit": "3252ef569617cb68424d3bfe3c2795bf6e731cc0",
        "arguments": ARGUMENTS,
        "choices": {"ur_type": UR_TYPE_CHOICES,
                    "initial_joint_controller": ["scaled_joint_trajectory_controller", "joint_trajectory_controller",
                                                 "forward_velocity_controller", "forward_position_controller",
                                                 "freedrive_mode_controller", "passthrough_trajectory_controller",
                                                 "motion_primitive_forward_controller"],
                    "activate_joint_controller": BOOLEAN, "launch_rviz": BOOLEAN},
        "inactive": ["scaled_joint_trajectory_controller", "joint_trajectory_controller", "forward_velocity_controller",
                     "forward_position_controller", "forward_effort_controller", "force_mode_controller",
                     "passthrough_trajectory_controller", "freedrive_mode_controller", "tool_contact_controller",
                     "motion_primitive_forward_controller"],
    },
    "main": {
        "commit": "696e1a7b7f46edd7092c9a9237f33b526a981cf1",
        "arguments": ARGUMENTS,
        "choices": {"ur_type": UR_TYPE_CHOICES,
                    "initial_joint_controller": ["joint_trajectory_controller", "forward_velocity_controller",
                                                 "forward_position_controller", "freedrive_mode_controller",
                                                 "passthrough_trajectory_controller",
                                                 "motion_primitive_forward_controller"],
                    "activate_joint_controller": BOOLEAN, "launch_rviz": BOOLEAN},
        "inactive": ["joint_trajectory_controller", "forward_velocity_controller", "forward_position_controller",
                     "forward_effort_controller", "force_mode_controller", "passthrough_trajectory_controller",
                     "freedrive_mode_controller", "tool_contact_controller", "motion_primitive_forward_controller"],
    },
}
# ur_controllers.yaml on all three: forward_effort_controller / forward_velocity_controller are
# forward_command_controller/ForwardCommandController-style group controllers on the six
# $(var tf_prefix)<joint> joints with interface_name effort / velocity, commands on ~/commands
CONTROLLER_INTERFACE = {"forward_effort_controller": "effort", "forward_velocity_controller": "velocity"}


@pytest.mark.parametrize("branch", sorted(DRIVER))
@pytest.mark.parametrize("ur_type", UR_TYPES)
def test_every_argument_the_launch_passes_is_declared_by_the_driver_with_a_valid_value(branch, ur_type):
    driver = DRIVER[branch]
    arguments = driver_launch_arguments(ur_type, "192.168.56.101", "ur_")
    for name, value in arguments.items():
        assert name in driver["arguments"], f"{branch} ({driver['commit'][:8]}) declares no argument {name!r}"
        if name in driver["choices"]:
            assert value in driver["choices"][name], f"{branch}: {name}:={value} is not one of its choices"


@pytest.mark.parametrize("branch", sorted(DRIVER))
def test_the_arm_comes_up_with_the_policys_controller_loaded_and_inactive(branch):
    driver = DRIVER[branch]
    arguments = driver_launch_arguments("ur5e", "10.0.0.2")
    # with activate_joint_controller:=false the initial controller stays in the inactive list too
    assert arguments["activate_joint_controller"] == "false" and INITIAL_CONTROLLER in driver["inactive"]
    for interface, controller in MOTION_CONTROLLERS.items():
        assert controller in driver["inactive"] and CONTROLLER_INTERFACE[controller] == interface
    # why the policy's controller cannot be the initial one (the first launch file passed it)
    assert "forward_effort_controller" not in driver["choices"]["initial_joint_controller"]


def test_activation_command_names_the_interfaces_controller_and_bad_arguments_are_refused():
    assert activation_command("effort").endswith("--activate forward_effort_controller")
    assert activation_command("velocity").endswith("--activate forward_velocity_controller")
    with pytest.raises(ConfigError, match="command_interface 'torque'"):
        activation_command("torque")
    with pytest.raises(ConfigError, match="ur_type 'ur10e'"):
        driver_launch_arguments("ur10e", "10.0.0.2")
    with pytest.raises(ConfigError, match="robot_ip"):
        driver_launch_arguments("ur5e", "")


def test_the_launch_file_takes_the_driver_arguments_from_one_place_and_is_the_packages_launch_file():
    tree = ast.parse(LAUNCH.read_text())
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert {"driver_launch_arguments", "motion_controller", "IncludeLaunchDescription"} <= calls
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not literals & {"initial_joint_controller", "forward_effort_controller", "activate_joint_controller"}
    declared = {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "DeclareLaunchArgument"}
    assert {"use_sim", "robot_ip", "ur_type", "tf_prefix", "command_interface"} <= declared
    package_copy = REPO / "ros2_ws" / "src" / "ds_robot" / "launch" / "grasp.launch.py"
    assert package_copy.resolve() == LAUNCH.resolve()  # a link, not a copy that can drift
