"""ROS 2 entry points of ds-robot. The nodes live in the ``ds_robot`` Python package
(``ds_robot.deploy``), installed with pip; this package only installs the executables,
the launch file and the configuration where ``ros2 run`` / ``ros2 launch`` find them."""
