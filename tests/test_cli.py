"""The ds-robot command line, end to end."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ds_robot.cli.main import main
from ds_robot.paths import project_root


def test_eval_prints_table_and_writes_design_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    assert main(["eval", "grasp", "--episodes", "3", "--seed", "1", "--quiet", "--json", str(out_json),
                 "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "success rate" in printed and "ALL (hier)" in printed  # the shipped hierarchical policy by default
    doc = json.loads(out_json.read_text())
    assert doc["benchmark"] == "eval_grasp" and {"cpu", "cores", "python", "torch"} <= set(doc["machine"])
    row = doc["results"][0]
    assert row["name"] == "hier" and row["episodes"] == 3
    for key in ("success_rate", "success_rate_ci95", "time_to_lift_s", "energy_j"):
        assert key in row
    assert len(row["success_rate_ci95"]) == 2 and row["per_object"]
    assert out_png.stat().st_size > 10_000


def test_eval_of_each_controller_and_policy_errors(tmp_path, capsys):
    assert main(["eval", "grasp", "--controller", "scripted", "--episodes", "1", "--quiet"]) == 0
    assert "ALL (scripted)" in capsys.readouterr().out
    assert main(["eval", "grasp", "--controller", "hier", "--policy", str(tmp_path / "none.npz")]) == 2
    assert "policy file not found" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert main(["eval", "grasp", "--controller", "hier", "--policy", str(tmp_path / "bad.npz")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert main(["eval", "grasp", "--controller", "scripted", "--policy", str(tmp_path / "bad.npz")]) == 2
    assert main(["train", "grasp", "--out", str(tmp_path / "r"), "--steps", "10"]) == 2
    assert "does not apply to train grasp" in capsys.readouterr().err
    assert main(["train", "ppo", "--out", str(tmp_path / "r")]) == 2
    assert "needs --env" in capsys.readouterr().err


def test_eval_of_one_fixed_option_on_a_preset_and_its_errors(capsys):
    assert main(["eval", "grasp", "--controller", "fixed", "--option", "2", "--task", "realistic", "--split", "test",
                 "--episodes", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "ALL (fixed_2)" in printed and "task=realistic" in printed and "object set=test" in printed
    assert main(["eval", "grasp", "--controller", "fixed", "--option", "99", "--episodes", "1", "--quiet"]) == 2
    assert "choose 0-9" in capsys.readouterr().err
    assert main(["eval", "grasp", "--controller", "scripted", "--option", "1", "--episodes", "1", "--quiet"]) == 2
    assert main(["eval", "grasp", "--task", "nonsense", "--episodes", "1", "--quiet"]) == 2
    assert "presets" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_render_writes_an_image(tmp_path, suffix):
    out = tmp_path / f"episode{suffix}"
    assert main(["render", "grasp", "--seed", "2", "--out", str(out), "--width", "160", "--height", "120",
                 "--fps", "5"]) == 0
    assert out.stat().st_size > 1000


def test_bench_sim_quick_writes_json(tmp_path):
    out = tmp_path / "sim.json"
    assert main(["bench", "sim", "--quick", "--repeats", "1", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"mujoco_bare", "ur5grasp_env", "ur5grasp_env_scripted", "ds_robot_w1_e4", "ds_robot_w2_e4"}
    assert rows["ds_robot_w2_e4"]["env_steps_per_s"] > 0 and rows["ds_robot_w2_e4"]["num_envs"] == 8
    assert rows["mujoco_bare"]["physics_steps_per_s"] > 1000
    assert rows["ur5grasp_env"]["overhead_ratio"] > 1.0


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ds_robot.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_malformed_object_set_gives_one_plain_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nplacement: {x_range_m: [0.4, 0.6], y_range_m: [0, 0], yaw_range_rad: [0, 0]}\n"
                   "objects:\n  - {name: brick, shape: box, size_m: [0.02, 0.02], mass_kg: 0.1, friction: 0.8}\n")
    result = run_cli("eval", "grasp", "--episodes", "1", "--objects", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(bad) in result.stderr and "brick" in result.stderr and "size_m" in result.stderr


def test_missing_model_file_gives_one_plain_error(tmp_path):
    root = project_root()
    shutil.copytree(root / "models", tmp_path / "models")
    shutil.copytree(root / "sim", tmp_path / "sim")
    (tmp_path / "models" / "ur5" / "gripper.xml").unlink()
    import os

    result = run_cli("eval", "grasp", "--episodes", "1", "--quiet", env={**os.environ, "DS_ROBOT_ROOT": str(tmp_path)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "gripper model not found" in result.stderr and str(Path(tmp_path)) in result.stderr


def test_bad_arguments_are_refused_by_the_parser():
    result = run_cli("eval", "grasp", "--episodes", "0")
    assert result.returncode == 2 and "must be at least 1" in result.stderr
    result = run_cli("render", "grasp", "--out", "x.avi")
    assert result.returncode == 2 and ".mp4, .gif or .png" in result.stderr


def test_ensemble_writes_one_policy_from_training_seeds_and_refuses_mixed_members(tmp_path):
    seeds = project_root() / "models" / "policies" / "seeds"
    out = tmp_path / "ens.npz"
    result = run_cli("ensemble", str(seeds / "grasp_hier_s0.npz"), str(seeds / "grasp_hier_s2.npz"), "--out", str(out))
    assert result.returncode == 0 and "mean of 2 planners" in result.stdout and out.is_file()
    result = run_cli("ensemble", str(seeds / "grasp_hier_s0.npz"), str(seeds / "grasp_hier_no_torque_s1.npz"),
                     "--out", str(tmp_path / "mixed.npz"))
    assert result.returncode == 2 and "torque_features" in result.stderr and not (tmp_path / "mixed.npz").exists()


def test_help_everywhere():
    for args in ([], ["eval"], ["render"], ["bench"], ["model"], ["quantize"], ["ensemble"], ["train"]):
        result = run_cli(*args, "--help")
        assert result.returncode == 0 and "usage: ds-robot" in result.stdout


def _without_torch(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The CLI in a Python where torch and TensorBoard cannot be imported (a robot-side install)."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['tensorboard'] = None; "
            "from ds_robot.cli.main import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_robot_side_runs_without_torch_and_training_says_which_extra_it_needs(tmp_path):
    run = _without_torch("eval", "grasp", "--controller", "hier", "--episodes", "1", "--quiet",
                         "--json", str(tmp_path / "e.json"))
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "e.json").read_text())["machine"]["torch"] is None
    run = _without_torch("train", "a2c", "--env", "CartPole-v1", "--steps", "100", "--out", str(tmp_path / "r"))
    assert run.returncode == 2 and "pip install 'ds-robot[train]'" in run.stderr, run.stderr
