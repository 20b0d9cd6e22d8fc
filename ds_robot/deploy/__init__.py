"""Robot-side deployment: the one controller factory, the pure-Python control core of the ROS 2
policy node, and the rclpy nodes (policy node, MuJoCo sim node) that wrap it.

Nothing imported from here on the robot path imports torch.
"""
