"""The scripted baseline grasps every object of the default set."""

import numpy as np
import pytest

from ds_robot.control.scripted import ScriptedGraspController, min_jerk
from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.evaluate import run_episode, summarise
from ds_robot.sim.objects import default_object_set_path, load_object_set

NAMES = load_object_set(default_object_set_path()).names()


@pytest.mark.parametrize("name", NAMES)
def test_scripted_controller_lifts_each_default_object(name):
    env = UR5GraspEnv()
    controller = ScriptedGraspController.for_env(env)
    obs, _ = env.reset(seed=11, options={"object": name})
    controller.reset(obs)
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(controller.act(obs))
        done = terminated or truncated
    assert info["success"], f"{name}: not lifted (phase {controller.phase})"
    assert 1.0 < info["time_to_lift_s"] < 6.0
    assert 5.0 < info["energy_j"] < 200.0


def test_summary_of_a_few_seeded_episodes():
    env = UR5GraspEnv()
    controller = ScriptedGraspController.for_env(env)
    results = [run_episode(env, controller, seed) for seed in range(4)]
    row = summarise("scripted", results)
    assert row["success_rate"] == 1.0 and row["episodes"] == 4
    low, high = row["success_rate_ci95"]
    assert low < 0.8 and high == pytest.approx(1.0)
    assert row["control_step_us"] > 0


def test_min_jerk_profile():
    assert min_jerk(0.0) == 0.0 and min_jerk(1.0) == 1.0 and min_jerk(0.5) == pytest.approx(0.5)
    assert min_jerk(-1) == 0.0 and min_jerk(2) == 1.0
    assert np.all(np.diff([min_jerk(s) for s in np.linspace(0, 1, 50)]) >= 0)
