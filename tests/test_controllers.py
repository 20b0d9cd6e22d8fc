"""The controller contract and the one factory the CLI, the benchmarks and the node use."""

from __future__ import annotations

import numpy as np
import pytest

from ds_robot.control.contract import Controller
from ds_robot.control.robot_model import RobotModel
from ds_robot.deploy.controllers import CONTROLLERS, build_controller, controller_for_env
from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.envs.layout import ACTION_SIZE
from ds_robot.errors import ConfigError


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_every_kind_keeps_the_contract(kind):
    env = UR5GraspEnv()
    controller = controller_for_env(kind, env, **({"option": 2} if kind == "fixed" else {}))
    assert isinstance(controller, Controller)
    obs, _ = env.reset(seed=0)
    controller.reset(obs)
    action = controller.act(obs)
    assert action.shape == (ACTION_SIZE,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
    if kind == "flat":
        assert controller.robot_model is None
    else:
        assert isinstance(controller.robot_model, RobotModel)
    assert controller.uses_torque_features == (kind == "hier")  # the shipped flat policy is the no-torque one


@pytest.mark.parametrize("kind", ["scripted", "hier"])
def test_correction_writes_into_the_model_the_controller_declares(kind):
    env = UR5GraspEnv()
    corrected = controller_for_env(kind, env, correction=True, warmup_steps=1)
    model = corrected.robot_model.model
    inner = corrected.inner
    computes_with = inner.robot if kind == "scripted" else inner.machine.robot  # what its torque law uses
    assert corrected.robot_model is computes_with
    nominal = model.dof_armature[:6].copy()
    obs, _ = env.reset(seed=0)
    corrected.reset(obs)
    for _ in range(60):
        obs, *_ = env.step(corrected.act(obs))
    assert not np.array_equal(model.dof_armature[:6], nominal), "the estimate never reached the controller's model"


def test_factory_refusals():
    with pytest.raises(ConfigError, match="without a model of the arm"):
        build_controller("flat", correction=True)
    with pytest.raises(ConfigError, match="unknown controller"):
        build_controller("pid")
    with pytest.raises(ConfigError, match="not scripted"):
        build_controller("scripted", policy="x.npz")
    with pytest.raises(ConfigError, match="runtime"):
        build_controller("hier", runtime="onnx")
    with pytest.raises(ConfigError, match="apply with correction only"):
        build_controller("hier", warmup_steps=3)


def test_cli_refuses_correction_of_a_model_free_controller(capsys):
    from ds_robot.cli.main import main

    assert main(["eval", "grasp", "--controller", "flat", "--correction", "on", "--episodes", "1", "--quiet"]) == 2
    assert "without a model of the arm" in capsys.readouterr().err


def test_a_fixed_controller_takes_its_one_option_for_every_attempt_and_bad_indices_are_refused():
    from ds_robot.hier.options import DEFAULT_OPTIONS

    env = UR5GraspEnv()
    controller = controller_for_env("fixed", env, option=2)
    assert controller.name == "fixed_2" and controller.config.option == DEFAULT_OPTIONS[2]
    for bad in (-1, len(DEFAULT_OPTIONS), "1"):
        with pytest.raises(ConfigError, match="option"):
            controller_for_env("fixed", env, option=bad)
    with pytest.raises(ConfigError, match="option K"):
        controller_for_env("scripted", env, option=1)
