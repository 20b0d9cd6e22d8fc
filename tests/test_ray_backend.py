"""Ray backend on a small local Ray instance: same trajectories as the local engine, policy
broadcast, Ape-X-style collection into a replay actor, and recovery from a killed actor."""

import gymnasium as gym
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray backend is the optional 'dist' extra")

from ds_robot.rl.replay_actor import make_replay_actor  # noqa: E402
from ds_robot.rollout import RolloutWarning  # noqa: E402
from ds_robot.rollout.ray_backend import RayRolloutEngine  # noqa: E402


def random_policy(params, obs, rng):
    return rng.integers(0, 2, size=len(obs))


@pytest.fixture(scope="module")
def local_ray():
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_step_matches_a_sync_vector_env_with_the_same_seeds(local_ray):
    engine = RayRolloutEngine("CartPole-v1", num_workers=2, envs_per_worker=2)
    reference = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4,
                                         autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    a, _ = engine.reset(seed=5)
    b, _ = reference.reset(seed=5)
    assert np.array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(150):  # long enough for several autoresets
        actions = rng.integers(0, 2, size=4)
        ours, theirs = engine.step(actions), reference.step(actions)
        for x, y in zip(ours[:4], theirs[:4], strict=True):
            assert np.array_equal(x, y)
        if theirs[4].get("_final_obs") is not None and theirs[4]["_final_obs"].any():
            mask = theirs[4]["_final_obs"]
            assert np.array_equal(ours[4]["_final_obs"], mask)
            assert np.array_equal(ours[4]["final_obs"][mask], np.stack(theirs[4]["final_obs"][mask]))
    engine.close()


def test_broadcast_reaches_every_actor_and_apex_collection_fills_the_replay_actor(local_ray):
    engine = RayRolloutEngine("CartPole-v1", num_workers=2, envs_per_worker=2, policy_fn=random_policy)
    engine.reset(seed=0)
    engine.broadcast({"w": np.zeros(3)}, version=7)
    batch = engine.collect(16)
    assert batch.obs.shape == (16, 4, 4) and batch.actions.shape == (16, 4)
    assert (batch.policy_versions == 7).all()
    replay = make_replay_actor(prioritized=True, capacity=1_000, obs_shape=(4,), action_shape=(), seed=0,
                               action_dtype=np.int64)
    added = engine.collect_into_replay(replay, 25)
    assert added == 100 and ray.get(replay.size.remote()) == 100
    sample = ray.get(replay.sample.remote(32))
    assert sample.obs.shape == (32, 4) and np.all(sample.weights > 0)
    ray.get(replay.update_priorities.remote(sample.indices, np.ones(32)))
    engine.close()


def test_a_killed_actor_is_reported_and_replaced(local_ray):
    engine = RayRolloutEngine("CartPole-v1", num_workers=2, envs_per_worker=1)
    engine.reset(seed=1)
    ray.kill(engine._actors[1], no_restart=True)
    with pytest.warns(RolloutWarning, match="worker 1"):
        obs, rewards, terminated, truncated, infos = engine.step(np.array([0, 1]))
    assert truncated[1] and not truncated[0] and infos["_rollout_reset"].tolist() == [False, True]
    assert engine.errors and engine.errors[-1].worker_index == 1
    fresh = gym.make("CartPole-v1").reset(seed=2)[0]  # env 1 restarts from its original seed
    assert np.array_equal(obs[1], fresh)
    engine.step(np.array([0, 0]))  # and keeps working
    engine.close()


def test_a2c_trains_identically_on_ray_actors_and_in_process(local_ray):
    import torch

    from ds_robot.rl.a2c import A2C, A2CConfig

    def trained(**kwargs):
        agent = A2C(A2CConfig(total_steps=400, seed=4, **kwargs))
        agent.train(progress=False)
        agent.close()
        return [p.detach().clone() for p in agent.policy.parameters()]

    for a, b in zip(trained(), trained(workers=2, backend="ray"), strict=True):
        assert torch.equal(a, b)


def test_the_hierarchical_grasp_trainer_learns_identically_on_ray_actors_and_in_process(local_ray):
    """``train grasp --backend ray``: the same envs (seeded seed + j) on two Ray actors give the same
    update as stepping them in this process."""
    import torch

    from ds_robot.hier.train import HierTrainConfig, HierTrainer
    from ds_robot.rollout.ray_backend import RayRolloutEngine

    def trained(**kwargs):
        config = HierTrainConfig(n_steps=16, planner_batch=2, skill_minibatch=32, seed=3, total_steps=64, **kwargs)
        trainer = HierTrainer(config)
        engine = type(trainer.envs)
        trainer.train(progress=False)
        trainer.close()
        return engine, [p.detach().clone() for p in trainer.skills.parameters()]

    local_engine, local = trained(workers=0, envs_per_worker=4)
    ray_engine, on_ray = trained(workers=2, envs_per_worker=2, backend="ray")
    assert ray_engine is RayRolloutEngine and local_engine is not RayRolloutEngine
    for a, b in zip(local, on_ray, strict=True):
        assert torch.equal(a, b)
