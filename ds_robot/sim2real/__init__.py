"""Sim-to-real: worlds that differ from the controller's model, and the online estimator
that corrects the model while the arm runs."""

WORLDS = ("nominal", "shifted", "unmodelled", "pybullet")  # built by ds_robot.sim2real.worlds.build_world
