"""RL core: learning on real Gymnasium tasks, the loss scaler, schedules, diagnostics,
wrappers, checkpoints and resume."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from ds_robot.cli.main import main
from ds_robot.errors import ConfigError
from ds_robot.rl import schedules
from ds_robot.rl.a2c import A2C, A2CConfig
from ds_robot.rl.amp import DynamicLossScaler, TrainingError, optimize_step
from ds_robot.rl.common import evaluate
from ds_robot.rl.diagnostics import Diagnostics, TrainingWarning
from ds_robot.rl.onpolicy import Rollout, returns_and_advantages
from ds_robot.rl.ppo import PPO, PPOConfig
from ds_robot.rl.sac import SAC, SACConfig
from ds_robot.rl.train import train
from ds_robot.rl.wrappers import ReachabilityBonus, UniformTransitionNoise

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::ds_robot.rl.diagnostics.TrainingWarning")


def solves_cartpole(agent, every: int) -> bool:
    solved = []

    def check(a, stats):
        if a.steps % every < a.config.n_steps * a.config.n_envs:
            solved.append(evaluate(lambda o: a.act(o), "CartPole-v1", 10, seed=99).mean() >= 475)
            return solved[-1]
        return False

    agent.train(check, progress=False)
    agent.close()
    return bool(solved and solved[-1])


def test_a2c_solves_cartpole():
    assert solves_cartpole(A2C(A2CConfig(total_steps=100_000, ent_coef=0.01, seed=0)), every=5_000)


def test_ppo_solves_cartpole():
    config = PPOConfig(total_steps=100_000, n_steps=32, minibatch_size=256, n_epochs=20, gae_lambda=0.8,
                       gamma=0.98, learning_rate=1e-3, seed=0)
    assert solves_cartpole(PPO(config), every=5_120)


def test_sac_improves_on_pendulum():
    agent = SAC(SACConfig(env_id="Pendulum-v1", total_steps=3_500, learning_starts=500, hidden=(64, 64),
                          batch_size=64, learning_rate=1e-3, seed=0))
    before = evaluate(lambda o: agent.act(o), "Pendulum-v1", 5, seed=3).mean()
    agent.train(progress=False)
    after = evaluate(lambda o: agent.act(o), "Pendulum-v1", 5, seed=3).mean()
    assert after > before + 400 and after > -900, (before, after)


def test_ppo_continuous_actions_and_amp_run():
    agent = PPO(PPOConfig(env_id="Pendulum-v1", total_steps=1_024, n_envs=2, n_steps=256, amp=True))
    result = agent.train(progress=False)
    assert result.steps == 1_024 and agent.scaler.enabled
    assert all(torch.isfinite(p.detach()).all() for p in agent.policy.parameters())


# -- loss scaler ------------------------------------------------------------------------------


def test_loss_scaler_grows_caps_and_backs_off():
    scaler = DynamicLossScaler(scale=2.0**23, growth_interval=3)
    for _ in range(3):
        scaler.update(overflow=False)
    assert scaler.scale == 2.0**24
    for _ in range(6):
        scaler.update(overflow=False)
    assert scaler.scale == 2.0**24  # capped
    scaler.update(overflow=True)
    assert scaler.scale == 2.0**23 and scaler.good_steps == 0 and scaler.overflows == 1
    default = DynamicLossScaler()
    assert (default.scale, default.growth_interval, default.max_scale) == (2.0**15, 2000, 2.0**24)


def test_overflow_retries_the_same_batch_at_half_scale():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = DynamicLossScaler()
    batch = torch.tensor([1.0, 2.0, 3.0])
    seen = []

    def loss_fn():
        seen.append(batch)
        loss = (weight * batch).sum()
        return (loss * float("inf") if len(seen) == 1 else loss), {}

    stats = optimize_step(loss_fn, optimizer, [weight], scaler)
    assert len(seen) == 2 and seen[0] is seen[1]
    assert scaler.scale == 2.0**14 and stats["loss_scale"] == 2.0**14
    assert torch.allclose(weight.detach(), 1 - 0.1 * batch)  # gradients unscaled before the step


def test_persistent_overflow_is_reported_not_looped_forever():
    weight = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(TrainingError, match="overflowed"):
        optimize_step(lambda: ((weight * float("nan")).sum(), {}), torch.optim.SGD([weight], lr=0.1), [weight],
                      DynamicLossScaler(), max_retries=5)


# -- schedules, returns, diagnostics ------------------------------------------------------------


def test_schedules():
    halving = schedules.entropy_schedule("halving")
    assert (halving(0), halving(99_999), halving(100_000), halving(250_000)) == (0.1, 0.1, 0.05, 0.025)
    lr = schedules.linear_decay(1e-3, 1_000)
    assert lr(0) == 1e-3 and lr(500) == pytest.approx(5e-4) and lr(2_000) == 0.0
    with pytest.raises(ConfigError):
        schedules.entropy_schedule("fast")
    with pytest.raises(ConfigError):
        schedules.entropy_schedule(2.0)


def test_n_step_returns_and_gae_on_a_hand_checked_rollout():
    ro = Rollout(obs=None, actions=None, log_probs=None, rewards=np.array([[1.0], [1.0], [1.0]]),
                 dones=np.array([[0.0], [1.0], [0.0]]), values=np.array([[0.5], [0.5], [0.5]]))
    returns, adv, td = returns_and_advantages(ro, np.array([2.0]), gamma=0.9, lam=1.0)
    assert returns[:, 0].tolist() == pytest.approx([1 + 0.9 * 1, 1.0, 1 + 0.9 * 2.0])
    assert adv[:, 0].tolist() == pytest.approx([1.4, 0.5, 2.3])
    assert td[:, 0].tolist() == pytest.approx([1 + 0.9 * 0.5 - 0.5, 0.5, 1 + 0.9 * 2.0 - 0.5])


def test_diagnostics_warn_on_the_seed_rules_and_rate_limit():
    diag = Diagnostics(warn_every=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diag.policy_entropy(0.2, step=1, update=1, discrete=True)
        diag.policy_entropy(0.2, step=2, update=2, discrete=True)  # rate-limited
        diag.policy_entropy(0.2, step=3, update=3, discrete=False)  # continuous: no floor
        diag.td_errors(np.array([0.1, 5.0, -3.0, 0.2]), step=1, update=1)
        diag.feature_variance(np.column_stack([np.ones(50), np.random.default_rng(0).normal(size=50) * 1e4]),
                              step=1, update=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, TrainingWarning)]
    assert sum("entropy" in m for m in messages) == 1
    assert any("TD errors" in m for m in messages)
    assert any("collapsed" in m for m in messages) and any("> 1e6" in m for m in messages)
    assert diag.latest["diagnostics/td_within_1"] == 0.5


# -- wrappers -----------------------------------------------------------------------------------


def test_uniform_transition_noise_replaces_with_probability_eps():
    env = UniformTransitionNoise(gym.make("Pendulum-v1"), eps=0.2)
    env.reset(seed=0)
    for _ in range(4_000):
        obs, *_ , trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        if trunc:
            env.reset()
    n, p = env.steps, 0.2
    assert abs(env.replacements - n * p) < 5 * np.sqrt(n * p * (1 - p))
    with pytest.raises(ConfigError, match="infinite bounds"):
        UniformTransitionNoise(gym.make("CartPole-v1"), eps=0.1)
    bounded = UniformTransitionNoise(gym.make("CartPole-v1"), eps=1.0, low=-1.0, high=1.0)
    bounded.reset(seed=0)
    assert np.all(np.abs(bounded.step(0)[0]) <= 1.0)
    with pytest.raises(ConfigError):
        UniformTransitionNoise(gym.make("Pendulum-v1"), eps=1.5)


def test_reachability_bonus_matches_the_formula():
    env = ReachabilityBonus(gym.make("Pendulum-v1"), lam=0.5, sigma=0.3)
    base = gym.make("Pendulum-v1")
    obs0, _ = env.reset(seed=4)
    base.reset(seed=4)
    obs1, reward, *_ , info = env.step(np.array([1.0]))
    _, base_reward, *_ = base.step(np.array([1.0]))
    expected = 0.5 * (1 - np.exp(-np.linalg.norm(obs1 - obs0) / 0.3))
    assert info["reachability_bonus"] == pytest.approx(expected)
    assert reward == pytest.approx(base_reward + expected)
    with pytest.raises(ConfigError):
        ReachabilityBonus(gym.make("Pendulum-v1"), lam=1.0, sigma=0.0)


# -- checkpoints and resume ---------------------------------------------------------------------


def test_checkpoint_round_trip_and_resume(tmp_path):
    out = tmp_path / "run"
    agent, result = train("a2c", out, resume=False, progress=False, env_id="CartPole-v1", total_steps=2_000)
    assert result.steps == 2_000 and (out / "checkpoint.pt").is_file() and (out / "tb").is_dir()
    with pytest.raises(ConfigError, match="--resume"):
        train("a2c", out, resume=False, progress=False, env_id="CartPole-v1", total_steps=4_000)
    resumed, result = train("a2c", out, resume=True, progress=False, env_id="CartPole-v1", total_steps=4_000)
    assert resumed.steps == 4_000 and result.steps == 4_000 and resumed.updates == 100
    fresh = A2C(A2CConfig(total_steps=4_000))
    fresh.load(out / "checkpoint.pt")
    for a, b in zip(fresh.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fresh.steps == 4_000


def test_a_checkpoint_from_before_the_network_rename_still_resumes_and_evaluates(tmp_path):
    """Checkpoints written when the source document's network was called "seed"."""
    from ds_robot.rl.checkpoint import load_checkpoint, save_checkpoint
    from ds_robot.rl.train import evaluate_checkpoint

    out = tmp_path / "run"
    train("a2c", out, resume=False, progress=False, env_id="CartPole-v1", total_steps=400)
    old = load_checkpoint(out / "checkpoint.pt")
    old["policy"] = old["config"]["policy"] = "seed"
    old.pop("format_version")
    save_checkpoint(out / "checkpoint.pt", old)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["policy"] == "seed"
    resumed, result = train("a2c", out, resume=True, progress=False, env_id="CartPole-v1", total_steps=800)
    assert result.steps == 800 and resumed.config.policy == "a2c_paper"
    assert evaluate_checkpoint(out / "checkpoint.pt", 2, 0, env_id="CartPole-v1", algo="a2c")["episodes"] == 2


def test_corrupt_missing_and_mismatched_checkpoints_are_refused(tmp_path):
    agent = A2C(A2CConfig(total_steps=100))
    path = tmp_path / "ckpt.pt"
    agent.save(path)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(TrainingError, match="corrupt or truncated"):
        agent.load(corrupt)
    with pytest.raises(TrainingError, match="not found"):
        agent.load(tmp_path / "missing.pt")
    other = A2C(A2CConfig(env_id="Acrobot-v1", total_steps=100))
    with pytest.raises(TrainingError, match="env_id"):
        other.load(path)
    with pytest.raises(TrainingError, match="algo"):
        PPO(PPOConfig(total_steps=100, policy="a2c_paper")).load(path)


def test_impossible_settings_are_refused():
    with pytest.raises(ConfigError, match="gamma"):
        A2CConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="clip_range"):
        PPOConfig(clip_range=0.0)
    with pytest.raises(ConfigError, match="replay"):
        SACConfig(replay="fancy")
    with pytest.raises(ConfigError, match="Discrete"):
        A2C(A2CConfig(env_id="Pendulum-v1"))
    with pytest.raises(ConfigError, match="bounded 1-D Box"):
        SAC(SACConfig(env_id="CartPole-v1"))
    with pytest.raises(ConfigError, match="cannot make environment"):
        A2C(A2CConfig(env_id="NoSuchEnv-v0"))


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "cli_run"
    assert main(["train", "a2c", "--env", "CartPole-v1", "--steps", "1000", "--out", str(out), "--quiet"]) == 0
    assert main(["eval", "a2c", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "3",
                 "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "CartPole-v1" in printed and "1,000" in printed
    assert main(["eval", "ppo", "--checkpoint", str(out / "checkpoint.pt")]) == 2
    assert main(["train", "a2c", "--env", "CartPole-v1", "--steps", "1000", "--out", str(out), "--quiet"]) == 2


def test_a_run_killed_mid_way_resumes_from_its_last_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "ds_robot.cli.main", "train", "a2c", "--env", "CartPole-v1", "--steps",
               "10000000", "--checkpoint-every", "1000", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = A2C(A2CConfig(total_steps=10_000_000))
    saved.load(out / "checkpoint.pt")
    assert saved.steps >= 1_000
    agent, result = train("a2c", out, resume=True, progress=False, env_id="CartPole-v1",
                          total_steps=saved.steps + 400)
    assert agent.steps == saved.steps + 400 and agent.updates == saved.updates + 10


def test_cli_trains_sac_and_refuses_options_of_other_algorithms(tmp_path):
    out = tmp_path / "sac"
    assert main(["train", "sac", "--env", "Pendulum-v1", "--steps", "300", "--replay", "per_novelty",
                 "--out", str(out), "--quiet"]) == 0
    assert main(["eval", "sac", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "2"]) == 0
    assert main(["train", "sac", "--env", "Pendulum-v1", "--ent-coef", "0.1", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "a2c", "--env", "CartPole-v1", "--replay", "per", "--out", str(tmp_path / "y")]) == 2


def test_resume_without_steps_keeps_the_budget_and_a_smaller_budget_is_refused(tmp_path):
    out = tmp_path / "budget"
    train("a2c", out, resume=False, progress=False, env_id="CartPole-v1", total_steps=400)
    with pytest.raises(ConfigError, match="already at step 400"):
        train("a2c", out, resume=True, progress=False, total_steps=200)
    with pytest.raises(ConfigError, match="already at step 400"):
        train("a2c", out, resume=True, progress=False)  # the saved budget is used, and it is reached


def test_sac_is_reproducible_for_a_seed():
    def state_after_warmup(seed):
        agent = SAC(SACConfig(env_id="Pendulum-v1", total_steps=50, learning_starts=100, buffer_size=256,
                              batch_size=8, seed=seed))
        agent.train(progress=False)  # 50 uniformly random warm-up actions
        return agent.obs.copy()

    assert np.array_equal(state_after_warmup(1), state_after_warmup(1))


def test_cartpole_benchmark_runs_on_both_sides(tmp_path):
    from ds_robot.bench.cartpole import run_ds_robot, run_sb3

    ours = run_ds_robot("0.01", seed=0, budget=400, eval_every=200)
    peer = run_sb3(seed=0, budget=400, eval_every=200)
    for run in (ours, peer):
        assert 0.0 < run["action_entropy"] <= np.log(2) + 1e-6 and run["steps_per_s"] > 0


def test_training_through_rollout_workers_matches_in_process_training():
    def trained(workers):
        agent = A2C(A2CConfig(total_steps=800, workers=workers, seed=3))
        agent.train(progress=False)
        agent.close()
        return [p.detach().clone() for p in agent.policy.parameters()]

    for a, b in zip(trained(0), trained(2), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="workers"):
        A2CConfig(n_envs=8, workers=3)


def test_ppo_trains_on_the_grasp_env_through_rollout_workers(tmp_path):
    import ds_robot  # noqa: F401  (registers ds_robot/UR5Grasp-v0)

    out = tmp_path / "grasp"
    assert main(["train", "ppo", "--env", "ds_robot/UR5Grasp-v0", "--steps", "512", "--envs", "2", "--workers", "2",
                 "--out", str(out), "--quiet"]) == 0
    agent = PPO(PPOConfig(env_id="ds_robot/UR5Grasp-v0", n_envs=2, total_steps=512))
    agent.load(out / "checkpoint.pt")
    assert agent.steps == 512 and agent.action_space.shape == (7,)
    agent.close()


def test_ppo_with_the_cnn_policy_trains_on_preprocessed_atari_through_workers():
    pytest.importorskip("ale_py", reason="Atari is in the 'bench' extra")
    agent = PPO(PPOConfig(env_id="ALE/Pong-v5", policy="cnn", n_envs=2, n_steps=16, total_steps=64,
                          minibatch_size=32, n_epochs=1, workers=2))
    assert agent.envs.single_observation_space.shape == (4, 84, 84) and agent.obs_dtype == np.uint8
    result = agent.train(progress=False)
    agent.close()
    assert result.steps == 64 and np.isfinite(result.history[-1]["entropy"])
