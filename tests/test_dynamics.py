"""Real physics: gravity compensation from the controller's model, and a firm 500 g grasp."""

import mujoco
import numpy as np
import pytest

from ds_robot.control.robot_model import RobotModel
from ds_robot.control.scripted import ScriptedGraspController
from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.envs.grasp_task import GraspTaskConfig
from ds_robot.physics.mujoco_backend import MuJoCoBackend


def no_friction(model: mujoco.MjModel) -> None:
    model.dof_frictionloss[:] = 0.0  # friction would hide a wrong gravity model


def test_inverse_dynamics_gravity_compensation_holds_the_arm_still():
    env = UR5GraspEnv(backend=MuJoCoBackend("ur5e", model_hook=no_friction))
    env.reset(seed=0)
    robot = RobotModel("ur5e")
    limits = env.backend.joint_torque_limit_nm
    start = env.state.tcp_pos_m.copy()
    for _ in range(200):  # 2 s at 100 Hz
        state = env.state
        robot.update(state.q_rad, np.zeros(6), state.gripper_opening_m)
        env.step(np.concatenate([robot.bias_torque() / limits, [-1.0]]))
    drift = np.linalg.norm(env.state.tcp_pos_m - start)
    assert drift < 1e-3, f"TCP drifted {drift * 1e3:.2f} mm in 2 s"


def test_without_compensation_the_arm_falls():
    env = UR5GraspEnv()
    env.reset(seed=0)
    start = env.state.tcp_pos_m.copy()
    for _ in range(50):
        env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    assert np.linalg.norm(env.state.tcp_pos_m - start) > 0.02


def test_a_grasped_500g_object_is_held_for_3s_without_slip_jitter_or_penetration():
    env = UR5GraspEnv(episode_s=12.0, task=GraspTaskConfig(hold_s=60.0))
    assert {o.name: o.mass_kg for o in env.object_set.objects}["cube_large"] == 0.5
    obs, _ = env.reset(seed=3, options={"object": "cube_large"})
    controller = ScriptedGraspController.for_env(env)
    controller.reset(obs)
    while controller.phase != "hold":
        obs, *_ = env.step(controller.act(obs))
    model, data = env.backend.model, env.backend.data
    relative, deepest = [], 0.0
    for _ in range(300):  # 3 s
        obs, *_ = env.step(controller.act(obs))
        s = env.state
        relative.append(s.tcp_rot.T @ (s.object_pos_m - s.tcp_pos_m))
        deepest = min([deepest] + [data.contact[i].dist for i in range(data.ncon)])
    relative = np.array(relative)
    assert env.task.lifted(env.state)
    slip = np.linalg.norm(relative - relative[0], axis=1).max()
    assert slip < 5e-3, f"object slipped {slip * 1e3:.2f} mm"
    jitter = np.linalg.norm(np.diff(relative, axis=0), axis=1).max()
    assert jitter < 2e-4, f"object jitters by {jitter * 1e3:.3f} mm per step"
    assert deepest > -2e-3, f"contact penetration {-deepest * 1e3:.2f} mm"
    assert model.opt.timestep == 0.002


def test_measured_joint_torque_carries_the_load_of_a_grasped_object():
    """Empty-handed, the measured shoulder torque matches the model's gravity torque; holding
    500 g about 0.5 m out it exceeds it by roughly m * g * lever (~2.5 N m)."""
    env = UR5GraspEnv(episode_s=12.0, task=GraspTaskConfig(hold_s=60.0))
    obs, _ = env.reset(seed=3, options={"object": "cube_large"})
    controller = ScriptedGraspController.for_env(env)
    controller.reset(obs)
    robot = RobotModel("ur5e")

    def load_torque() -> np.ndarray:
        s = env.state
        robot.update(s.q_rad, s.qd_rad_s, s.gripper_opening_m)
        return s.tau_measured_nm - robot.bias_torque()

    while controller.phase != "descend":
        obs, *_ = env.step(controller.act(obs))
    empty = load_torque()
    while controller.phase != "hold":
        obs, *_ = env.step(controller.act(obs))
    for _ in range(50):
        obs, *_ = env.step(controller.act(obs))
    loaded = load_torque()
    lever = np.linalg.norm(env.state.object_pos_m[:2])
    assert abs(empty[1]) < 1.0
    assert abs(loaded[1]) == pytest.approx(0.5 * 9.81 * lever, rel=0.35)
