"""The hierarchical grasp controller: options, env, policy files, runtime, training, benchmark."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from ds_robot.control.scripted import GraspOption, ScriptedConfig, ScriptedGraspController
from ds_robot.deploy.controllers import controller_for_env
from ds_robot.envs.grasp_env import UR5GraspEnv
from ds_robot.errors import ActionError, ConfigError
from ds_robot.evaluate import run_episode
from ds_robot.hier.controller import HierarchicalController
from ds_robot.hier.env import HierGraspEnv
from ds_robot.hier.features import HIER_OBS_SIZE, H, available_options
from ds_robot.hier.options import DEFAULT_OPTIONS, MAX_OPTIONS, validate_options
from ds_robot.hier.policy import HierPolicy, PolicyFileError, _digest
from ds_robot.hier.train import HierTrainConfig, HierTrainer, train_grasp
from ds_robot.paths import policies_dir

SHIPPED = policies_dir() / "grasp_hier.npz"


def test_option_count_is_validated():
    assert len(DEFAULT_OPTIONS) <= MAX_OPTIONS
    too_many = [GraspOption("narrow", 0.03 + 0.01 * i, 0.1) for i in range(MAX_OPTIONS + 1)]
    with pytest.raises(ConfigError, match="2 to 10 options"):
        validate_options(too_many)
    with pytest.raises(ConfigError, match="2 to 10 options"):
        validate_options(DEFAULT_OPTIONS[:1])
    with pytest.raises(ConfigError, match="distinct"):
        validate_options([DEFAULT_OPTIONS[0], DEFAULT_OPTIONS[0]])
    with pytest.raises(ConfigError, match="2 to 10 options"):
        HierTrainConfig(options=tuple(("narrow", 0.03 + 0.01 * i, 0.1) for i in range(11)))
    with pytest.raises(ConfigError, match="planner_fields"):
        HierTrainConfig(planner_fields=("object_size", "object_colour"))
    for penalty in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="attempt_penalty"):
            HierTrainConfig(attempt_penalty=penalty)
    with pytest.raises(ConfigError, match="axis"):
        GraspOption("diagonal", 0.1, 0.1)
    with pytest.raises(ConfigError, match="heights"):
        GraspOption("narrow", 0.1, 0.03)  # below the 5 cm success threshold


def test_env_with_zero_residual_and_the_baseline_option_is_the_scripted_controller():
    baseline = DEFAULT_OPTIONS.index(GraspOption())
    env = HierGraspEnv()
    obs, _ = env.reset(seed=3)
    assert obs.shape == (HIER_OBS_SIZE,) and obs[H["decision"]] == 1.0
    action = np.zeros(8)
    action[0] = baseline
    done = False
    decisions = 0
    while not done:
        decisions += int(obs[H["decision"]][0])
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    scripted_env = UR5GraspEnv()
    scripted = run_episode(scripted_env, ScriptedGraspController.for_env(scripted_env), 3)
    assert info["success"] and scripted.success
    assert info["energy_j"] == pytest.approx(scripted.energy_j, rel=1e-6)  # float32 vs float64 actions
    assert info["time_to_lift_s"] == pytest.approx(scripted.time_to_lift_s)
    assert env.decisions == [baseline] and decisions == 1


def test_env_refuses_bad_actions():
    env = HierGraspEnv()
    env.reset(seed=0)
    with pytest.raises(ActionError, match="shape"):
        env.step(np.zeros(7))
    bad = np.zeros(8)
    bad[2] = np.nan
    with pytest.raises(ActionError, match="NaN"):
        env.step(bad)


def test_options_change_the_grasp():
    env = UR5GraspEnv()
    low = ScriptedGraspController.for_env(env, ScriptedConfig(option=GraspOption("narrow", 0.04, 0.065)))
    high = ScriptedGraspController.for_env(env, ScriptedConfig(option=GraspOption("narrow", 0.12, 0.12)))
    a, b = run_episode(env, low, 5), run_episode(env, high, 5)
    assert a.success and b.success
    assert a.energy_j < b.energy_j and a.time_to_lift_s < b.time_to_lift_s


def _untrained_policy(torque_features=True) -> HierPolicy:
    trainer = HierTrainer(HierTrainConfig(workers=0, envs_per_worker=1, torque_features=torque_features))
    try:
        return trainer.export()
    finally:
        trainer.close()


def test_policy_file_round_trip_and_refusals(tmp_path):
    policy = _untrained_policy()
    policy.palm_clearance_m = 0.01
    path = tmp_path / "p.npz"
    policy.save(path)
    loaded = HierPolicy.load(path)
    x = np.random.default_rng(0).normal(size=HIER_OBS_SIZE)
    np.testing.assert_allclose(loaded.planner(x), policy.planner(x), rtol=1e-5, atol=1e-6)
    assert loaded.options == policy.options and loaded.torque_features
    assert loaded.palm_clearance_m == 0.01  # the machine it was trained with runs it
    assert HierarchicalController(loaded).machine.config.palm_clearance_m == 0.01

    with pytest.raises(PolicyFileError, match="not found"):
        HierPolicy.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(PolicyFileError, match="corrupt or truncated"):
        HierPolicy.load(tmp_path / "junk.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PolicyFileError, match="corrupt or truncated"):
        HierPolicy.load(truncated)

    def rewrite(name, edit_header=None, edit_arrays=None):
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        header = json.loads(str(arrays.pop("header")))
        if edit_header:
            edit_header(header)
        if edit_arrays:
            edit_arrays(arrays)
        out = tmp_path / name
        np.savez(out, header=np.array(json.dumps(header)), **arrays)
        return out

    # a file from before round 10 was trained grasping at the object's centre and runs so
    assert HierPolicy.load(rewrite("no_palm.npz", lambda h: h.pop("palm_clearance_m"))).palm_clearance_m is None
    for bad in (-0.01, 0.5, "1cm", True, float("nan")):
        with pytest.raises(PolicyFileError, match="palm_clearance_m"):
            HierPolicy.load(rewrite("bad_palm.npz", lambda h, bad=bad: h.update(palm_clearance_m=bad)))
    other_layout = rewrite("layout.npz", lambda h: h["obs_layout"].append(["time", 1]))
    with pytest.raises(PolicyFileError, match="observation layout"):
        HierPolicy.load(other_layout)
    # a file from before the last_* fields: it loads, with zero input weights for them (its
    # planner and skills never read them); a layout that is not a prefix of this one is refused
    with np.load(path) as data:
        arrays = {k: data[k][:-4] if k.endswith(".w0") else data[k] for k in data.files if k != "header"}
        header = json.loads(str(data["header"]))
    header.update(obs_layout=header["obs_layout"][:-3], sha256=_digest(arrays))
    older = tmp_path / "older.npz"
    np.savez(older, header=np.array(json.dumps(header)), **arrays)
    old_policy, x = HierPolicy.load(older), np.random.default_rng(0).normal(size=(4, HIER_OBS_SIZE))
    assert old_policy.planner.in_size == HIER_OBS_SIZE
    assert np.allclose(old_policy.planner(x), HierPolicy.load(path).planner(np.hstack([x[:, :-4], np.zeros((4, 4))])))
    moved = x.copy()
    moved[:, -4:] += 1.0
    assert np.allclose(old_policy.planner(moved), old_policy.planner(x))
    shuffled = rewrite("shuffled.npz", lambda h: h.update(obs_layout=h["obs_layout"][1:2] + h["obs_layout"][:1]))
    with pytest.raises(PolicyFileError, match="observation layout"):
        HierPolicy.load(shuffled)
    other_version = rewrite("version.npz", lambda h: h.update(version=99))
    with pytest.raises(PolicyFileError, match="version"):
        HierPolicy.load(other_version)
    tampered = rewrite("tampered.npz", edit_arrays=lambda a: a["planner.b0"].__iadd__(1.0))
    with pytest.raises(PolicyFileError, match="SHA-256"):
        HierPolicy.load(tampered)
    assert zipfile.is_zipfile(path)


def test_controller_runs_an_episode_and_reports_latency():
    env = UR5GraspEnv()
    controller = controller_for_env("hier", env, policy=_untrained_policy(torque_features=False))
    result = run_episode(env, controller, 1)
    assert len(controller.chosen) >= 1 and len(controller.planning_latency_s) == len(controller.chosen)
    assert 0.0 <= controller.residual_share < 0.5
    assert result.control_step_us > 0


def test_runtime_imports_no_torch():
    code = ("import sys; import ds_robot.hier.controller, ds_robot.hier.policy; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_training_smoke_runs_and_resumes(tmp_path):
    out = tmp_path / "run"
    small = {"workers": 0, "envs_per_worker": 2, "n_steps": 16, "planner_batch": 2, "skill_minibatch": 16}
    trainer, summary = train_grasp(out, budget_s=3.0, progress=False, **small)
    assert summary["steps"] > 0
    assert (out / "checkpoint.pt").is_file() and (out / "policy.npz").is_file()
    first = trainer.steps
    assert HierPolicy.load(out / "policy.npz").palm_clearance_m == HierTrainConfig().palm_clearance_m == 0.01
    with pytest.raises(ConfigError, match="already exists"):
        train_grasp(out, budget_s=1.0, progress=False, **small)
    with pytest.raises(ConfigError, match="differ"):
        train_grasp(out, resume=True, budget_s=1.0, progress=False, **{**small, "torque_features": False})
    trainer, _ = train_grasp(out, resume=True, budget_s=2.0, progress=False, **small)
    assert trainer.steps > first
    assert trainer.wall_seconds >= 3.0


def test_a_diverged_update_stops_training_instead_of_writing_nan_weights():
    """Every step of the hierarchical trainer goes through the RL core's optimize_step: NaN
    gradients raise TrainingError (a bare backward()/step() would write NaN into the weights)."""
    import torch

    from ds_robot.rl.amp import TrainingError

    trainer = HierTrainer(HierTrainConfig(workers=0, envs_per_worker=2, n_steps=16, skill_minibatch=16))
    try:
        batch = trainer.collect()
        skill = trainer.skills[0]
        with torch.no_grad():
            skill.critic[0].weight[0, 0] = float("nan")
        before = [p.detach().clone() for p in skill.actor.parameters()]
        with pytest.raises(TrainingError, match="diverged"):
            trainer.update_skills(batch)
        for old, new in zip(before, skill.actor.parameters(), strict=True):
            assert torch.equal(old, new), "a diverged step changed the weights"
    finally:
        trainer.close()


def test_domain_randomisation_trains_in_the_world_it_is_handed_and_resumes_only_there(tmp_path):
    from ds_robot.physics.mujoco_backend import MuJoCoBackend
    from ds_robot.rl.amp import TrainingError
    from ds_robot.sim2real.worlds import ShiftedMuJoCoBackend

    small = {"workers": 0, "envs_per_worker": 2, "n_steps": 16, "planner_batch": 2, "skill_minibatch": 16,
             "randomize_physics": True}
    with pytest.raises(ConfigError, match="randomized_world"):
        HierTrainer(HierTrainConfig(**small))
    out = tmp_path / "dr"
    trainer = HierTrainer(HierTrainConfig(**small), out=out, randomized_world=ShiftedMuJoCoBackend)
    try:
        backends = [e.unwrapped.env.backend for e in trainer.envs.envs]
        assert all(isinstance(b, ShiftedMuJoCoBackend) for b in backends)
        assert backends[0].shift != backends[1].shift, "every episode should draw its own physics"
        trainer.train(budget_s=1.0, progress=False)
    finally:
        trainer.close()
    with pytest.raises(TrainingError, match="world"):
        train_grasp(out, resume=True, budget_s=0.5, progress=False, randomized_world=MuJoCoBackend, **small)
    resumed, _ = train_grasp(out, resume=True, budget_s=0.5, progress=False, randomized_world=ShiftedMuJoCoBackend,
                             **small)
    assert resumed.steps > trainer.steps


def test_checkpoint_of_another_layout_is_refused(tmp_path):
    out = tmp_path / "run"
    small = {"workers": 0, "envs_per_worker": 1, "n_steps": 8}
    train_grasp(out, budget_s=0.5, progress=False, **small)
    trainer = HierTrainer(HierTrainConfig(torque_features=False, **small))
    try:
        with pytest.raises(Exception, match="torque_features"):
            trainer.load(out / "checkpoint.pt")
    finally:
        trainer.close()


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped policy yet")
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_shipped_policy_grasps(seed):
    env = UR5GraspEnv()
    controller = controller_for_env("hier", env, policy=SHIPPED)
    result = run_episode(env, controller, seed)
    assert result.success, f"seed {seed}: {result}"


def test_bench_grasp_small_run(tmp_path):
    from ds_robot.bench.grasp import run_grasp_benchmark

    policy = tmp_path / "hier.npz"
    _untrained_policy().save(policy)
    out = tmp_path / "grasp.json"
    run_grasp_benchmark(quick=True, json_path=out, seeds=1, episodes=2, workers=1, variants=("scripted", "hier"),
                        sets=("train",), policies={"hier": policy}, task="nominal", training_seeds={"hier": [policy]})
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    # another training seed's file runs the same episodes (here the same file: the same success)
    seeds = rows["hier"]["training_seeds"]
    assert seeds["success_rate"] == [rows["hier"]["success_rate"]] * 2 and seeds["mean"] == rows["hier"]["success_rate"]
    # and each seed file's own per-object success (one seed file here)
    assert seeds["per_object_success"] == [rows["hier"]["per_object_success"]]
    assert rows["scripted"]["success_rate"] == 1.0 and rows["scripted"]["episodes"] == 2
    for row in rows.values():
        assert row["planning_latency_ms"] > 0 and row["control_step_us"] > 0
    assert "residual_share" in rows["hier"] and "options_chosen" in rows["hier"]
    assert rows["scripted"]["tracking_rms_mrad"] > 0
    assert rows["scripted"]["out_of_reach"] == 0 and rows["scripted"]["energy_j_max"] >= rows["scripted"]["energy_j_median"]
    # the joint tracking error: a residual that pushes the shoulder off the machine's targets raises
    # it; the same file with the residual off (hier_planner_only) is not charged for it
    pushing = _untrained_policy()
    for skill in pushing.skills:
        skill.biases[-1][1] = 1.0  # the shoulder's residual, at its bound
    pushing.save(policy)
    run_grasp_benchmark(quick=True, json_path=out, seeds=1, episodes=1, workers=1, variants=("hier", "hier_planner_only"),
                        sets=("train",), policies={"hier": policy, "hier_planner_only": policy}, task="nominal")
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["hier"]["tracking_rms_mrad"] > 2 * rows["hier_planner_only"]["tracking_rms_mrad"] > 0


def test_bench_grasp_finds_best_fixed_on_the_training_set_and_reports_missing_peers(tmp_path):
    from ds_robot.bench.grasp import run_grasp_benchmark

    out = tmp_path / "grasp.json"
    run_grasp_benchmark(quick=True, json_path=out, seeds=1, episodes=3, workers=2,
                        variants=("scripted", "best_fixed", "rule_probe", "sb3_sac"), task="realistic",
                        policies={"sb3_sac": tmp_path / "not_trained.zip"})  # an absent peer is reported missing
    doc = json.loads(out.read_text())
    rows = {(r["object_set"], r["name"]): r for r in doc["results"]}
    searched = {name: r for (split, name), r in rows.items() if name.startswith("fixed_")}
    assert len(searched) == len(DEFAULT_OPTIONS) and all(r["object_set"] == "train" for r in searched.values())
    best = rows[("train", "best_fixed")]
    assert best["success_rate"] == max(r["success_rate"] for r in searched.values())
    assert doc["config"]["best_fixed"] == f"fixed_{best['option']['index']}"
    assert ("test", "best_fixed") in rows and rows[("test", "best_fixed")]["episodes"] == 3
    assert "missing" in rows[("test", "sb3_sac")]
    # the hand-written probe rule weighs first (option 6), then decides in the hand
    probe = rows[("train", "rule_probe")]
    assert probe["episodes"] == 3 and probe["success_rate"] >= 2 / 3


def _constant_planner(policy: HierPolicy, option: int) -> HierPolicy:
    """``policy`` with a planner that picks ``option`` in every state (the trivial planner), and
    without the initiation sets that would take the option away after a slip."""
    import dataclasses

    from ds_robot.hier.policy import NumpyMLP

    weights = [w.copy() for w in policy.planner.weights]
    biases = [b.copy() for b in policy.planner.biases]
    weights[-1][:] = 0.0
    biases[-1][:] = 0.0
    biases[-1][option] = 1.0
    return dataclasses.replace(policy, planner=NumpyMLP(weights, biases), escalate_after_slip=False, jaw_fit=False)


def test_grasp_select_chooses_on_the_validation_set_and_groups_by_feature_set(tmp_path):
    from ds_robot.bench.grasp_select import run_grasp_select, select

    # the trivial candidate: the shipped policy with a planner that always grips narrow at 5 N
    # (heavy validation objects slip out of it); listed first, so "the first" would pick it
    constant = tmp_path / "constant.npz"
    _constant_planner(HierPolicy.load(SHIPPED), 2).save(constant)
    out = tmp_path / "select.json"
    run_grasp_select([constant, SHIPPED], seeds=1, episodes=8, json_path=out, workers=2)
    doc = json.loads(out.read_text())
    rows = {r["name"]: r for r in doc["results"]}
    assert doc["config"]["split"] == "val" and doc["config"]["object_set"].endswith("val.yaml")
    assert rows[str(constant)]["success_rate"] < rows[str(SHIPPED)]["success_rate"]
    assert doc["config"]["selected"] == str(SHIPPED)
    assert all(r["object_set"] == "val" and r["episodes"] == 8 for r in rows.values())
    groups = doc["config"]["feature_groups"]
    assert [g["torque_features"] for g in groups] == [True] and groups[0]["candidates"] == 2
    # equal success: the faster one; a candidate that never lifted counts as the slowest
    a = {"success_rate": 0.9, "time_to_lift_s": 4.0}
    b = {"success_rate": 0.9, "time_to_lift_s": 3.5}
    assert select([a, b]) is b and select([b, {"success_rate": 0.95, "time_to_lift_s": 9.0}])["success_rate"] == 0.95
    assert select([{"success_rate": 0.0, "time_to_lift_s": float("nan")}, {"success_rate": 0.0,
                                                                          "time_to_lift_s": 5.0}])["time_to_lift_s"] == 5.0
    with pytest.raises(ConfigError, match="test set"):
        run_grasp_select([SHIPPED], split="test")
    with pytest.raises(ConfigError, match="no policy file"):
        run_grasp_select([tmp_path])
    with pytest.raises(ConfigError, match="listed twice"):
        run_grasp_select([SHIPPED, SHIPPED])


def test_an_ensemble_chooses_by_the_mean_of_its_members_values_and_refuses_mismatched_members(tmp_path):
    from ds_robot.bench.grasp import _ensembles, _policy_metas
    from ds_robot.hier.policy import ensemble

    seeds = sorted((policies_dir() / "seeds").glob("grasp_hier_s*.npz"))[:3]
    members = [HierPolicy.load(f) for f in seeds]
    ens = ensemble(seeds)
    x = np.random.default_rng(0).normal(size=(64, HIER_OBS_SIZE))
    mean = np.mean([m.planner(x) for m in members], axis=0)
    np.testing.assert_allclose(ens.planner(x), mean, atol=1e-9)  # exactly the mean, as one wider MLP
    assert ens.options == members[0].options
    for mine, first in zip(ens.skills, members[0].skills, strict=True):  # the first member's skills
        np.testing.assert_array_equal(mine(x), first(x))
    # two constant planners: the mean follows the one that values its option more, not the first
    shipped = HierPolicy.load(seeds[0])
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    _constant_planner(shipped, 2).save(a)
    strong = _constant_planner(shipped, 5)
    strong.planner.biases[-1][5] = 3.0
    strong.save(b)
    both = ensemble([a, b])
    assert (both.choose(x) == 5).all() and (HierPolicy.load(a).choose(x) == 2).all()
    # saved, loaded, int8-quantized: the same decisions, the members recorded
    path = tmp_path / "ens.npz"
    ens.save(path)
    loaded = HierPolicy.load(path)
    assert (loaded.choose(x) == ens.choose(x)).all()
    assert [m["file"] for m in loaded.meta["ensemble"]["members"]] == list(map(str, seeds))
    assert _ensembles(_policy_metas({"hier": path, "hier_no_torque": seeds[0]}, ["hier", "hier_no_torque"])) == {"hier": 3}
    ens.save(tmp_path / "ens_int8.npz", quantization="int8_channel")
    assert (HierPolicy.load(tmp_path / "ens_int8.npz").choose(x) == ens.choose(x)).mean() > 0.9
    with pytest.raises(PolicyFileError, match="at least 2"):
        ensemble([seeds[0]])
    with pytest.raises(PolicyFileError, match="listed twice"):
        ensemble([seeds[0], seeds[0]])
    with pytest.raises(PolicyFileError, match="torque_features"):
        ensemble([seeds[0], policies_dir() / "seeds" / "grasp_hier_no_torque_s1.npz"])
    with pytest.raises(PolicyFileError, match="quantization"):
        ensemble([path, tmp_path / "ens_int8.npz"])
    with pytest.raises(PolicyFileError, match="must be fp32"):
        ensemble([tmp_path / "ens_int8.npz", path])


def test_the_exported_planner_folds_the_input_scales_and_ranks_options_by_their_values():
    import torch

    trainer = HierTrainer(HierTrainConfig(workers=0, envs_per_worker=1, n_steps=8))
    try:
        with torch.no_grad():
            for p in trainer.planner.parameters():
                p.normal_(0.0, 0.3)
            features = np.random.default_rng(0).normal(0.0, 0.5, (5, trainer.planner.scale.numel())).astype(np.float32)
            values = trainer.planner(torch.as_tensor(features)).numpy()
        exported = trainer.export().planner(features.astype(np.float64))
        assert np.allclose(exported, values / trainer.config.planner_temperature, atol=1e-4)
        assert trainer.planner.scale.max() > 1.0  # the object fields are scaled up
    finally:
        trainer.close()


def test_the_planner_learns_which_option_pays_in_which_state():
    """Option values regressed on decisions: option 1 pays for objects wider than 3 cm, option 0
    for the others; after the updates the greedy choice differs between the two (a constant
    planner fails), and it does not depend on the arm's joint state (a planner that reads the
    start pose does)."""
    trainer = HierTrainer(HierTrainConfig(workers=0, envs_per_worker=1, n_steps=8, planner_batch=16,
                                          planner_steps=200, planner_lr=3e-3))
    try:
        rng = np.random.default_rng(0)
        size = H["object_size"].start
        for _ in range(4):
            for _ in range(64):
                features = rng.normal(0.0, 0.3, HIER_OBS_SIZE).astype(np.float32)
                features[size] = 0.03 + rng.choice([-0.01, 0.01])
                option = int(rng.integers(len(trainer.options)))
                good = (features[size] > 0.03) == (option == 1) and option in (0, 1)
                trainer.finished_decisions.append((features, option, 1.0 if good else -1.0))
            trainer.update_planner()
        policy = trainer.export()
        probe = np.zeros((2, HIER_OBS_SIZE))
        probe[:, size] = (0.04, 0.02)
        assert list(np.argmax(policy.planner(probe), axis=1)) == [1, 0]
        moved = probe.copy()
        moved[:, H["q"]] += 0.3  # another start pose
        moved[:, H["tau"]] = 0.2
        assert np.allclose(policy.planner(moved), policy.planner(probe))
    finally:
        trainer.close()


@pytest.mark.parametrize("target", ["q", "mc"])
def test_the_planner_values_a_probe_by_the_best_choice_after_it_not_by_its_exploration(target):
    """A probe (option 6) earns nothing itself and leads to an in-hand decision where option 2
    pays +1 and option 0 costs -1; gripping at once (option 0) pays 0.5. Half the in-hand choices
    made while exploring were the bad one, so the probe's Monte-Carlo return averages 0: the
    Q-learning target (the best value at the next decision) ranks the probe first, the
    Monte-Carlo one ranks gripping at once first."""
    import torch

    trainer = HierTrainer(HierTrainConfig(workers=0, envs_per_worker=1, n_steps=8, planner_batch=16,
                                          planner_steps=200, planner_lr=3e-3, planner_target=target))
    try:
        rng = np.random.default_rng(0)
        start = np.zeros(HIER_OBS_SIZE, np.float32)
        in_hand = start.copy()
        in_hand[H["in_hand"]] = 1.0
        for _ in range(6):
            for _ in range(16):
                good = bool(rng.integers(2))
                after = 1.0 if good else -1.0
                trainer.finished_decisions += [
                    (start, 6, after, 0.0, in_hand),             # the probe, then the in-hand decision
                    (in_hand, 2 if good else 0, after, after, None),
                    (start, 0, 0.5, 0.5, None)]                  # the full grip at once
            trainer.update_planner()
        values = trainer.planner(torch.as_tensor(np.stack([start, in_hand]))).detach().numpy()
        assert int(np.argmax(values[1])) == 2
        assert int(np.argmax(values[0])) == (6 if target == "q" else 0), values[0]
    finally:
        trainer.close()


def _in_hand_decisions(rng, n):
    """After a probe (in_hand 1), boxes of one size range whose weighed payload alone says which
    grip holds them: under 0.3 kg the 5 N grip (option 2) succeeds (+1) and the full grip
    (option 0) crushes (-1, fragile); over 0.8 kg the 5 N grip slips (-1) and the full grip holds."""
    rows = []
    for _ in range(n):
        features = np.zeros(HIER_OBS_SIZE, np.float32)
        features[H["object_size"]] = rng.uniform(0.02, 0.05, 3)
        features[H["in_hand"]] = 1.0
        features[H["last_grip"]] = 4.0 / 24.0
        light = bool(rng.integers(2))
        features[H["last_load"]] = (rng.uniform(0.02, 0.3) if light else rng.uniform(0.8, 2.0)) + rng.normal(0, 0.03)
        option = int(rng.choice([0, 2]))
        good = (option == 2) == light
        rows.append((features, option, 1.0 if good else -1.0))
    return rows


@pytest.mark.parametrize("heads,fields", [(1, None), (5, None), (5, ("object_size", "in_hand"))])
def test_the_in_hand_choice_follows_the_weighed_payload(heads, fields):
    """The grip chosen with the object in the hand follows what the probe weighed; a planner that
    does not read the payload (the last case) picks by size: a coin flip here."""
    extra = {"planner_fields": fields} if fields else {}
    trainer = HierTrainer(HierTrainConfig(workers=0, envs_per_worker=1, n_steps=8, planner_batch=16,
                                          planner_steps=100, planner_lr=3e-3, planner_heads=heads, **extra))
    try:
        rng = np.random.default_rng(0)
        for _ in range(3):
            trainer.finished_decisions += _in_hand_decisions(rng, 64)
            trainer.update_planner()
        test = np.stack([d[0] for d in _in_hand_decisions(np.random.default_rng(1), 200)])
        light = test[:, H["last_load"]][:, 0] < 0.5
        choice = np.argmax(trainer.export().planner(test.astype(np.float64))[:, [0, 2]], axis=1)
        right = np.mean((choice == 1) == light)
        assert right >= 0.95 if fields is None else right < 0.7, right
    finally:
        trainer.close()


def test_a_planner_saved_before_the_value_heads_loads_into_one_head():
    """Checkpoints from before ``planner_heads`` hold the planner's one network under ``q.``: it
    loads as head 0 and values every state as before."""
    import torch

    from ds_robot.hier.train import Planner

    old = Planner(HIER_OBS_SIZE, 10)
    state = {("q." + k[len("heads.0."):] if k.startswith("heads.0.") else k): v for k, v in old.state_dict().items()}
    assert any(k.startswith("q.") for k in state)
    new = Planner(HIER_OBS_SIZE, 10)
    new.load_state_dict(state)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(4, HIER_OBS_SIZE)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(new(x), old(x))


def _probe_loving_policy(probe_in_hand: bool) -> HierPolicy:
    """An untrained policy whose planner ranks the narrow probe first everywhere, then the full grip."""
    policy = _untrained_policy()
    k = len(policy.options)
    bias = np.zeros(k)
    bias[policy.options.index(GraspOption(grip_force_n=4.0, probe=True))] = 2.0
    bias[policy.options.index(GraspOption())] = 1.0
    planner = type(policy.planner)([np.zeros((HIER_OBS_SIZE, k))], [bias])
    return HierPolicy(planner=planner, skills=policy.skills, options=policy.options, torque_features=True,
                      residual_scale=policy.residual_scale, gripper_scale=policy.gripper_scale,
                      probe_in_hand=probe_in_hand)


def _without_header_key(path, key: str) -> HierPolicy:
    """The policy file at ``path`` as a file written before ``key`` existed (saved beside it, loaded)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays.pop("header")))
    del header[key]
    before = path.with_name(f"before_{key}.npz")
    np.savez(before, header=np.array(json.dumps(header)), **arrays)
    return HierPolicy.load(before)


def test_a_probe_starts_only_with_an_empty_hand(tmp_path):
    """The probes' initiation set (hier.features.available_options): at the decision after a probe
    the planner's best available option is taken, not a second probe, at run time, in the saved
    file and in the trainer's exploration. A policy from before (no key in its file) keeps
    choosing among all options, as it was trained."""
    from ds_robot.hier.train import Planner

    probe, full = DEFAULT_OPTIONS.index(GraspOption(grip_force_n=4.0, probe=True)), DEFAULT_OPTIONS.index(GraspOption())
    empty, in_hand = np.zeros(HIER_OBS_SIZE), np.zeros(HIER_OBS_SIZE)
    in_hand[H["in_hand"]] = 1.0
    masked, free = _probe_loving_policy(False), _probe_loving_policy(True)
    assert list(masked.choose(np.stack([empty, in_hand]))) == [probe, full]
    assert list(free.choose(np.stack([empty, in_hand]))) == [probe, probe]

    # through the run-time controller, on an episode: the probe weighs the 60 g cube, then the full grip
    env = UR5GraspEnv()
    for policy, expected in ((masked, [probe, full]), (free, [probe, probe])):
        controller = controller_for_env("hier", env, policy=policy)
        run_episode(env, controller, 0)
        assert controller.chosen[:2] == expected, controller.chosen

    masked.save(tmp_path / "masked.npz")
    assert HierPolicy.load(tmp_path / "masked.npz").probe_in_hand is False
    assert _without_header_key(tmp_path / "masked.npz", "probe_in_hand").probe_in_hand is True

    import torch

    planner = Planner(HIER_OBS_SIZE, len(DEFAULT_OPTIONS))
    obs = np.stack([empty, in_hand]).astype(np.float32)
    available = torch.as_tensor(available_options(obs, DEFAULT_OPTIONS))
    probs = planner.behaviour(torch.as_tensor(obs), 0.1, 0.2, available).probs.detach().numpy()
    probes = [i for i, o in enumerate(DEFAULT_OPTIONS) if o.probe]
    assert probs[0, probes].min() > 0.01 and probs[1, probes].max() == 0.0
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert available_options(obs, DEFAULT_OPTIONS, probe_in_hand=True).all()


def test_after_a_slip_only_a_stronger_grip_may_follow(tmp_path):
    """The escalation initiation set (hier.features.available_options, ``escalate``): after an
    attempt that slipped, no option whose grip is no stronger than the one that slipped, and no
    probe; a full grip that slipped may be tried again (the pose may have been the cause); after a
    miss, or without the switch, every option. The switch is in the policy file (old files: off)."""
    def state(end: str, grip_n: float) -> np.ndarray:
        obs = np.zeros(HIER_OBS_SIZE)
        obs[H["last_grip"]] = grip_n / 24.0
        obs[H["last_end"].start + (1 if end == "slipped" else 0)] = 1.0
        return obs

    grips = np.array([o.grip_force_n or 24.0 for o in DEFAULT_OPTIONS])
    probes = np.array([o.probe for o in DEFAULT_OPTIONS])
    rows = np.stack([state("slipped", 4.0), state("slipped", 5.0), state("slipped", 12.0), state("slipped", 24.0),
                     state("missed", 12.0)])
    on, off = available_options(rows, DEFAULT_OPTIONS, escalate=True), available_options(rows, DEFAULT_OPTIONS)
    assert off.all()
    assert not on[0, probes].any() and on[0, ~probes].all()  # after the probe slipped: 5 N, 12 N, full
    assert list(np.unique(grips[on[1]])) == [12.0, 24.0] and list(np.unique(grips[on[2]])) == [24.0]
    assert list(np.unique(grips[on[3]])) == [24.0] and on[3].sum() == (grips == 24.0).sum()
    assert on[4].all()  # a miss says nothing about the grip

    # a planner that loves the 5 N grip takes it again after it slipped, unless the switch is on
    policy = _probe_loving_policy(False)
    gentle = DEFAULT_OPTIONS.index(GraspOption(grip_force_n=5.0))
    policy.planner.biases[-1][:] = -np.arange(len(DEFAULT_OPTIONS), dtype=float)
    policy.planner.biases[-1][gentle] = 10.0
    assert int(policy.choose(state("slipped", 5.0))) == gentle
    policy.escalate_after_slip = True
    choice = int(policy.choose(state("slipped", 5.0)))
    assert choice != gentle and grips[choice] > 5.0
    policy.save(tmp_path / "esc.npz")
    assert HierPolicy.load(tmp_path / "esc.npz").escalate_after_slip is True
    assert _without_header_key(tmp_path / "esc.npz", "escalate_after_slip").escalate_after_slip is False


def test_the_jaws_never_close_across_a_side_wider_than_they_open(tmp_path):
    """The jaw-fit initiation set (``jaw_fit``): with the 10 cm jaws, a 3 x 13.6 cm box may be
    gripped across its narrow side only; a box too wide both ways masks nothing; ``ds-robot
    ensemble --jaw-fit --escalate-after-slip`` writes both switches into a file."""
    from ds_robot.cli.main import main

    def box(hx: float, hy: float) -> np.ndarray:
        obs = np.zeros(HIER_OBS_SIZE)
        obs[H["object_size"]] = (hx, hy, 0.03)
        return obs

    wide = np.array([o.axis == "wide" for o in DEFAULT_OPTIONS])
    rows = np.stack([box(0.015, 0.068), box(0.03, 0.03), box(0.06, 0.07)])
    fit = available_options(rows, DEFAULT_OPTIONS, jaw_fit=True)  # the 10 cm jaws
    assert not fit[0, wide].any() and fit[0, ~wide].all()
    assert fit[1].all() and fit[2].all()
    assert available_options(rows, DEFAULT_OPTIONS).all()

    policy = _untrained_policy()  # a planner whose values are its last bias: the wide full grip first
    policy.planner.weights[-1][:] = 0.0
    policy.planner.biases[-1][:] = 0.0
    policy.planner.biases[-1][DEFAULT_OPTIONS.index(GraspOption(axis="wide"))] = 5.0
    assert DEFAULT_OPTIONS[int(policy.choose(rows[0]))].axis == "wide"
    policy.save(tmp_path / "a.npz")
    policy.save(tmp_path / "a2.npz")
    assert main(["ensemble", str(tmp_path / "a.npz"), str(tmp_path / "a2.npz"), "--jaw-fit", "--escalate-after-slip",
                 "--out", str(tmp_path / "b.npz")]) == 0
    loaded = HierPolicy.load(tmp_path / "b.npz")
    assert loaded.jaw_fit and loaded.escalate_after_slip
    assert DEFAULT_OPTIONS[int(loaded.choose(rows[0]))].axis == "narrow"


def test_the_skill_residual_is_off_during_a_probe():
    """A probe is a measurement (hier.features.residual_acts): with ``probe_residual`` off, a
    residual of any size changes nothing until the probe has weighed the object, in training
    (HierGraspEnv) and at run time (the controller); with it on (the policies before round 9) it
    does."""
    probe = DEFAULT_OPTIONS.index(GraspOption(grip_force_n=4.0, probe=True))

    def until_weighed(probe_residual: bool, residual: float) -> np.ndarray:
        env = HierGraspEnv(probe_residual=probe_residual)
        obs, _ = env.reset(seed=0)
        action = np.array([probe] + [residual] * 6 + [0.0], np.float32)
        for _ in range(2000):
            obs, _, terminated, truncated, _ = env.step(action)
            if env.machine.phase == "decide" or terminated or truncated:
                break
        assert env.machine.phase == "decide"
        return obs

    assert np.array_equal(until_weighed(False, 1.0), until_weighed(False, 0.0))
    assert not np.allclose(until_weighed(True, 1.0), until_weighed(True, 0.0))

    env = UR5GraspEnv()
    for probe_residual in (False, True):
        policy = _probe_loving_policy(probe_in_hand=False)
        policy.skills = [type(s)([np.zeros((HIER_OBS_SIZE, 7))], [np.full(7, 0.5)]) for s in policy.skills]
        policy.probe_residual = probe_residual
        controller = controller_for_env("hier", env, policy=policy)
        obs, _ = env.reset(seed=0)
        controller.reset(obs)
        in_probe = []
        for _ in range(400):
            before = controller._residual_abs
            obs, *_ = env.step(controller.act(obs))
            if controller.machine.probing:
                in_probe.append(controller._residual_abs - before)
        assert len(in_probe) > 100
        assert (max(in_probe) == 0.0) != probe_residual, (probe_residual, max(in_probe))


def test_a_frozen_planner_chooses_greedily_and_only_the_skills_learn(tmp_path):
    import torch

    source = HierPolicy.load(SHIPPED)
    # the shipped file's initiation sets come with its planner (round 14)
    small = {"workers": 0, "envs_per_worker": 2, "n_steps": 16, "skill_minibatch": 16, "planner_from": str(SHIPPED),
             "escalate_after_slip": True, "jaw_fit": True}
    trainer = HierTrainer(HierTrainConfig(**small))
    try:
        obs = trainer.obs
        assert (obs[:, H["decision"]] > 0.5).all(), "an episode starts with a decision"
        actions = trainer._act(obs)[0]
        values = np.where(available_options(obs, trainer.options, escalate=True, jaw_fit=True), source.planner(obs),
                          -np.inf)
        assert np.array_equal(actions[:, 0], np.argmax(values, axis=1)), "the frozen planner chooses greedily"
        planner_before = [p.detach().clone() for p in trainer.planner.parameters()]
        skills_before = [p.detach().clone() for p in trainer.skills.parameters()]
        trainer.train(budget_s=2.0, progress=False)
        assert all(torch.equal(a, b) for a, b in zip(planner_before, trainer.planner.parameters(), strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(skills_before, trainer.skills.parameters(), strict=True))
        exported = trainer.export()
        assert all(np.array_equal(a, b) for a, b in zip(exported.planner.weights, source.planner.weights, strict=True))
        assert exported.escalate_after_slip and exported.jaw_fit
        # the trainer's own initiation sets: after a 5 N slip, nothing as weak
        slipped = obs[:1].copy()
        slipped[0, H["last_grip"]] = 5.0 / 24.0
        slipped[0, H["last_end"].start + 1] = 1.0
        grips = np.array([o.grip_force_n or 24.0 for o in trainer.options])
        assert (grips[trainer._available(slipped)[0]] > 5.0).all()
    finally:
        trainer.close()
    # a planner trained on other features, or used with other initiation sets, is refused
    with pytest.raises(ConfigError, match="torque_features"):
        HierTrainer(HierTrainConfig(**{**small, "planner_from": str(policies_dir() / "grasp_hier_no_torque.npz")}))
    with pytest.raises(ConfigError, match="escalate_after_slip"):
        HierTrainer(HierTrainConfig(**{**small, "escalate_after_slip": False}))


def test_the_tracking_term_charges_the_arm_for_leaving_its_targets():
    """With the same episode, option and residual, the reward differs by exactly the reported
    tracking cost; a residual that pushes the shoulder off its target costs more than none."""
    def episode(weight, push):
        env = HierGraspEnv(tracking_weight=weight)
        env.reset(seed=3)
        rewards, costs = [], []
        for _ in range(120):
            action = np.zeros(8, np.float32)
            action[2] = push  # shoulder residual
            _, reward, terminated, truncated, info = env.step(action)
            rewards.append(reward)
            costs.append(info["tracking_cost"])
            if terminated or truncated:
                break
        return np.array(rewards), np.array(costs)

    free, none = episode(0.0, 0.0)
    charged, costs = episode(2.0, 0.0)
    assert np.all(none == 0.0) and costs.sum() > 0
    np.testing.assert_allclose(free - charged, costs, atol=1e-9)
    _, pushed = episode(2.0, 1.0)
    assert pushed.sum() > 3 * costs.sum()
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="tracking_weight"):
            HierGraspEnv(tracking_weight=bad)
        with pytest.raises(ConfigError, match="tracking_weight"):
            HierTrainConfig(tracking_weight=bad)
