from glob import glob

from setuptools import setup

PACKAGE = "ds_robot"  # the ROS package (package.xml)

setup(
    name="ds_robot_ros",  # the Python distribution: "ds_robot" is the pip-installed ds-robot itself
    version="0.1.0",
    packages=["ds_robot_ros"],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ds-robot developers",
    maintainer_email="dev@ds-robot.invalid",
    description="ds-robot policy and sim nodes for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "policy_node = ds_robot_ros.nodes:policy_main",
            "sim_node = ds_robot_ros.nodes:sim_main",
            "supervisor = ds_robot_ros.nodes:supervisor_main",
        ],
    },
)
