"""The UR5 / UR5e description: parameters, kinematics and the URDF/MJCF generator."""
