"""The fair flat baseline's pieces (issue 16): the Cartesian action env, the running observation
normaliser, and the flat controller that runs a Cartesian checkpoint exactly as it was trained."""

import numpy as np
import pytest
import torch

from ds_robot.control.cartesian import CartesianGraspEnv
from ds_robot.control.learned import FlatPolicyController
from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.envs.presets import load_task
from ds_robot.errors import ActionError
from ds_robot.evaluate import run_episode
from ds_robot.rl.policies import RunningNorm
from ds_robot.rl.ppo import PPO, PPOConfig


def _scripted_cartesian(env: CartesianGraspEnv, obs: np.ndarray, state: dict) -> np.ndarray:
    """A hand-written policy in the Cartesian action space: above the perceived object, down,
    close, lift. It shows the action space can solve the task (the baseline is not set up to fail)."""
    cmd = env.command
    pos, rot = cmd.robot.tcp_pose()
    obj, obj_rot = cmd.layout.object_pose(obs, pos, rot)
    half = cmd.layout.object_half_extents(obs)
    target, grip = np.array([obj[0], obj[1], max(obj[2], 0.012)]), -1.0
    if state["phase"] == 0:
        target[2] += 0.10
        state["phase"] += np.linalg.norm(target - pos) < 0.01
    elif state["phase"] == 1:
        state["phase"] += np.linalg.norm(target - pos) < 0.006
        state["t"] = 0
    elif state["phase"] == 2:
        grip, state["t"] = 1.0, state["t"] + 1
        if state["t"] > 10:
            state["phase"], state["z0"] = 3, pos[2]
    else:
        grip, target = 1.0, np.array([pos[0], pos[1], state["z0"] + 0.10])
    per_step = cmd.max_speed_m_s * cmd.dt * env.action_repeat
    closing = obj_rot[:, 0] if half[0] <= half[1] else obj_rot[:, 1]
    turn = (np.arctan2(closing[1], closing[0]) - cmd.yaw + np.pi / 2) % np.pi - np.pi / 2
    return np.array([*np.clip((target - pos) / per_step, -1, 1),
                     np.clip(turn / (cmd.max_yaw_rate_rad_s * cmd.dt * env.action_repeat), -1, 1), grip])


def test_the_cartesian_action_space_can_grasp_and_doing_nothing_cannot():
    env = CartesianGraspEnv(task="realistic")
    scripted, idle = 0, 0
    try:
        for seed in (4, 5, 6, 7):  # non-fragile training objects (a full grip crushes the fragile ones)
            obs, _ = env.reset(seed=seed)
            state = {"phase": 0}
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(_scripted_cartesian(env, obs, state))
                done = terminated or truncated
            scripted += bool(info["success"])
            env.reset(seed=seed)
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(np.array([0, 0, 0, 0, -1.0]))
                done = terminated or truncated
            idle += bool(info["success"])
        assert scripted >= 3 and idle == 0
        with pytest.raises(ActionError, match="shape"):
            env.step(np.zeros(7))
        with pytest.raises(ActionError, match="NaN"):
            env.step(np.array([0, np.nan, 0, 0, 0]))
    finally:
        env.close()


def test_running_norm_matches_the_batch_statistics_and_travels_in_the_state_dict():
    rng = np.random.default_rng(0)
    data = rng.normal([0.3, -2.0, 50.0], [0.01, 1.0, 20.0], size=(900, 3))
    norm = RunningNorm(3)
    for chunk in np.split(data, [100, 350, 351]):
        norm.update(chunk)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-9)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-9)
    out = norm(torch.as_tensor(data, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(0), 1.0, atol=1e-3)
    copy = RunningNorm(3)
    copy.load_state_dict(norm.state_dict())
    assert torch.equal(copy(torch.ones(1, 3)), norm(torch.ones(1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        norm.update(np.array([[0.0, np.nan, 1.0]]))


def test_ppo_with_the_normaliser_learns_its_statistics_and_the_flat_controller_replays_the_env(tmp_path):
    agent = PPO(PPOConfig(env_id="ds_robot/UR5GraspCartesian-v0", policy="mlp_norm", n_envs=2, n_steps=32,
                          n_epochs=1, minibatch_size=32, total_steps=64))
    try:
        agent.train(progress=False)
        stats = agent.policy.obs_norm
        assert stats.count.item() == 64 and not torch.allclose(stats.var, torch.ones_like(stats.var))
        agent.save(tmp_path / "flat.pt")
        env = CartesianGraspEnv(task="realistic")
        obs, _ = env.reset(seed=11)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs[None], deterministic=True)[0])
            done = terminated or truncated
    finally:
        agent.close()
    grasp_env = UR5GraspEnv(**load_task("realistic").env_kwargs("train"))
    controller = FlatPolicyController(tmp_path / "flat.pt")
    assert controller.robot_model is not None and controller.uses_torque_features
    result = run_episode(grasp_env, controller, seed=11)
    # the same episode step for step: the controller holds each action for the env's repeat
    assert result.energy_j == pytest.approx(info["energy_j"], rel=1e-9)
    assert result.success == info["success"] and result.object == info["object"]


def test_sb3_sac_peer_trains_under_a_budget_resumes_and_runs_as_a_controller(tmp_path):
    pytest.importorskip("stable_baselines3")
    from ds_robot.control.learned import SB3CartesianController
    from ds_robot.errors import ConfigError
    from ds_robot.rl.sb3_peer import train_sb3_sac

    first = train_sb3_sac(tmp_path, budget_s=3.0, progress=False)
    assert first["steps"] > 0 and (tmp_path / "model.zip").is_file() and (tmp_path / "replay.pkl").is_file()
    with pytest.raises(ConfigError, match="--resume"):
        train_sb3_sac(tmp_path, budget_s=3.0, progress=False)
    second = train_sb3_sac(tmp_path, budget_s=6.0, resume=True, progress=False)
    assert second["steps"] > first["steps"] and second["seconds"] >= 6.0
    grasp_env = UR5GraspEnv(**load_task("realistic").env_kwargs("train"))
    controller = SB3CartesianController(tmp_path / "model.zip")
    result = run_episode(grasp_env, controller, seed=3)
    assert np.isfinite(result.energy_j) and controller.trained_steps == second["steps"]
