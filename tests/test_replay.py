"""Replay buffers: sum-tree invariants, prioritized sampling, novelty counts, weights, save/load, errors."""

import json
import math

import numpy as np
import pytest

from ds_robot.errors import DsRobotError
from ds_robot.rl.replay import Batch, PrioritizedReplayBuffer, ReplayBuffer, ReplayError, SumTree

OBS, ACT = 5, 2


def transitions(n, seed=0, obs_dim=OBS, act_dim=ACT):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, obs_dim)).astype(np.float32), rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            rng.standard_normal(n).astype(np.float32), rng.standard_normal((n, obs_dim)).astype(np.float32),
            (rng.random(n) < 0.2).astype(np.float32))


def check_tree(tree: SumTree, expected: np.ndarray) -> None:
    """Leaves equal ``expected``, every maintained parent is exactly the sum of its children, and
    the total is the sum of the leaves."""
    raw, leaf0, top0 = tree._tree, tree._leaf0, tree._top0
    expected = np.asarray(expected)
    np.testing.assert_array_equal(tree.priorities, expected)
    assert not raw[leaf0 + tree.capacity:].any()
    parents = np.arange(top0, leaf0)
    np.testing.assert_array_equal(raw[parents], raw[2 * parents] + raw[2 * parents + 1])
    assert tree.total == pytest.approx(expected.sum(), rel=1e-12, abs=1e-300)


# --------------------------------------------------------------------------------------------- SumTree


@pytest.mark.parametrize("capacity", [1, 2, 3, 7, 100, 1000, 5000, 70_000, (1 << 20) + 5])
def test_sum_tree_invariants_hold_after_random_batched_updates_with_repeats(capacity):
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity)
    expected = np.zeros(capacity)
    for _ in range(30):
        n = int(rng.integers(1, 300))
        # Few distinct indices so that repeats are common; the last write of an index must win.
        indices = rng.integers(0, capacity, n) if rng.random() < 0.5 else rng.integers(0, min(capacity, 8), n)
        priorities = rng.exponential(size=n) * (rng.random(n) < 0.9)  # some zeros
        tree.update(indices, priorities)
        for i, p in zip(indices, priorities, strict=True):
            expected[i] = p
        check_tree(tree, expected)
    tree.set(capacity - 1, 2.5)
    expected[capacity - 1] = 2.5
    check_tree(tree, expected)


def test_sum_tree_find_matches_a_prefix_sum_search_and_skips_empty_leaves():
    for seed in range(40):
        rng = np.random.default_rng(seed)
        capacity = int(rng.integers(1, 3000))
        priorities = rng.integers(0, 4, capacity).astype(float)  # integers: every sum is exact
        priorities[rng.integers(capacity)] = 1.0
        tree = SumTree(capacity)
        tree.update(np.arange(capacity), priorities)
        total = priorities.sum()
        values = rng.uniform(0, total, 500)
        values = np.concatenate([values, np.arange(int(total)), [-3.0, total, total + 10]])
        found = tree.find(values)
        reference = np.searchsorted(np.cumsum(priorities), np.clip(values, 0, None), side="right")
        last_positive = np.flatnonzero(priorities)[-1]
        np.testing.assert_array_equal(found, np.minimum(reference, last_positive))
        assert (priorities[found] > 0).all()


def test_sum_tree_stratified_draws_are_ascending_and_never_empty():
    tree = SumTree(1000)
    priorities = np.where(np.arange(1000) % 3 == 0, 0.0, np.random.default_rng(0).random(1000))
    tree.update(np.arange(1000), priorities)
    drawn = tree.stratified(256, np.random.default_rng(1))
    assert (np.diff(drawn) >= 0).all() and (priorities[drawn] > 0).all()


def test_sum_tree_sampling_frequencies_match_priorities():
    rng = np.random.default_rng(3)
    capacity = 50
    priorities = rng.exponential(size=capacity) * (rng.random(capacity) < 0.8)
    tree = SumTree(capacity)
    tree.update(np.arange(capacity), priorities)
    draws = np.concatenate([tree.stratified(64, rng) for _ in range(2000)])
    observed = np.bincount(draws, minlength=capacity)
    expected = len(draws) * priorities / priorities.sum()
    sigma = np.sqrt(np.maximum(expected * (1 - priorities / priorities.sum()), 1e-12))
    assert (np.abs(observed - expected) <= 5 * sigma + 1e-9).all()
    assert observed[priorities == 0].sum() == 0


@pytest.mark.parametrize("bad", [math.nan, -0.5, math.inf])
def test_sum_tree_rejects_nan_negative_and_infinite_priorities(bad):
    tree = SumTree(4)
    with pytest.raises(ReplayError, match="finite and >= 0"):
        tree.update([0, 1], [1.0, bad])
    with pytest.raises(ValueError, match="finite and >= 0"):
        tree.set(0, bad)
    assert tree.total == 0


def test_sum_tree_rejects_bad_indices_and_shapes():
    tree = SumTree(4)
    with pytest.raises(ReplayError, match=r"\[0, 4\)"):
        tree.update([4], [1.0])
    with pytest.raises(ReplayError, match="same length"):
        tree.update([0, 1], [1.0])
    with pytest.raises(ReplayError, match="integers"):
        tree.update([0.5], [1.0])
    with pytest.raises(ReplayError, match="every priority is zero"):
        tree.find([0.0])


# ---------------------------------------------------------------------------------------- ReplayBuffer


def test_batch_add_with_wraparound_equals_single_adds():
    data = transitions(23)
    one_by_one, batched = ReplayBuffer(10, OBS, ACT), ReplayBuffer(10, OBS, ACT)
    for row in zip(*data, strict=True):
        one_by_one.add(*row)
    batched.add(*(d[:6] for d in data))
    batched.add(*(d[6:] for d in data))  # wraps, and is longer than the capacity
    assert len(one_by_one) == len(batched) == 10 and one_by_one._pos == batched._pos == 3
    for name, array in one_by_one._arrays().items():
        np.testing.assert_array_equal(array, batched._arrays()[name], err_msg=name)
    # The ring holds the newest ten: transition 22 sits in slot 2.
    np.testing.assert_array_equal(batched._obs[2], data[0][22])


def test_uniform_sample_shapes_dtypes_and_unit_weights():
    buffer = ReplayBuffer(100, (2, 3), 4, seed=0)
    rng = np.random.default_rng(0)
    buffer.add(rng.random((50, 2, 3)), rng.random((50, 4)), rng.random(50), rng.random((50, 2, 3)), np.zeros(50, bool))
    batch = buffer.sample(32)
    assert isinstance(batch, Batch)
    assert batch.obs.shape == batch.next_obs.shape == (32, 2, 3) and batch.action.shape == (32, 4)
    assert batch.obs.dtype == np.float32 and batch.reward.shape == batch.done.shape == (32,)
    assert batch.indices.dtype == np.int64 and batch.indices.max() < 50
    assert batch.weights.dtype == np.float32 and (batch.weights == 1).all()
    np.testing.assert_array_equal(batch.obs, buffer._obs[batch.indices])
    batch.obs[:] = 7  # a copy: the buffer is untouched
    assert not (buffer._obs[batch.indices] == 7).all()


@pytest.mark.parametrize("field, value, message", [
    ("obs", np.zeros(OBS + 1), "obs has shape"),
    ("action", np.zeros(ACT + 1), "action has shape"),
    ("next_obs", np.zeros((1, OBS)), "next_obs has shape"),
    ("obs", np.array([0, 0, math.nan, 0, 0]), "obs contains NaN or Inf"),
    ("next_obs", np.array([0, 0, 0, 0, -math.inf]), "next_obs contains NaN or Inf"),
    ("action", np.array([math.inf, 0]), "action contains NaN or Inf"),
    ("reward", math.nan, "reward is nan"),
    ("reward", np.zeros(2), "reward must be a scalar"),
    ("done", np.zeros(1), "done must be a scalar"),
    ("done", 0.5, "done must be 0/1"),
])
def test_add_rejects_wrong_shapes_and_non_finite_values(field, value, message):
    buffer = PrioritizedReplayBuffer(8, OBS, ACT)
    row = dict(obs=np.zeros(OBS), action=np.zeros(ACT), reward=0.0, next_obs=np.zeros(OBS), done=False)
    row[field] = value
    with pytest.raises(ReplayError, match=message) as info:
        buffer.add(**row)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DsRobotError)
    assert len(buffer) == 0


def test_batch_add_rejects_mismatched_lengths_and_nan():
    buffer = ReplayBuffer(8, OBS, ACT)
    obs, action, reward, next_obs, done = transitions(4)
    with pytest.raises(ReplayError, match="action has shape"):
        buffer.add(obs, action[:3], reward, next_obs, done)
    reward = reward.copy()
    reward[2] = math.nan
    with pytest.raises(ReplayError, match=r"reward contains NaN or Inf \(first at index \(2,\)\)"):
        buffer.add(obs, action, reward, next_obs, done)
    with pytest.raises(ReplayError, match="done must be 0/1"):
        buffer.add(obs, action, np.zeros(4), next_obs, np.full(4, 2.0))
    assert len(buffer) == 0


def test_sampling_an_empty_buffer_says_what_to_do():
    with pytest.raises(ReplayError, match="empty replay buffer: add transitions first"):
        PrioritizedReplayBuffer(8, OBS, ACT).sample(4)
    with pytest.raises(ReplayError, match="batch_size"):
        ReplayBuffer(8, OBS, ACT).sample(0)


# ----------------------------------------------------------------------------- PrioritizedReplayBuffer


def test_prioritized_sampling_frequencies_follow_td_errors():
    buffer = PrioritizedReplayBuffer(16, OBS, ACT, seed=0, eta=0.0)
    buffer.add(*transitions(16))
    td_errors = np.linspace(-3, 3, 16)
    buffer.update_priorities(np.arange(16), td_errors)
    expected_p = (np.abs(td_errors) + buffer.epsilon) ** 0.6
    np.testing.assert_allclose(buffer.priorities, expected_p)
    draws = np.concatenate([buffer.sample(128).indices for _ in range(400)])
    observed = np.bincount(draws, minlength=16)
    probability = expected_p / expected_p.sum()
    expected = len(draws) * probability
    assert (np.abs(observed - expected) <= 5 * np.sqrt(expected * (1 - probability))).all()


def test_new_transitions_get_the_highest_priority_so_far():
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, eta=0.0)
    buffer.add(*transitions(4))
    np.testing.assert_array_equal(buffer.priorities, np.ones(4))
    buffer.update_priorities([0, 1], [10.0, 0.0])
    top = (10.0 + buffer.epsilon) ** 0.6
    assert buffer.max_priority == pytest.approx(top)
    buffer.add(*(t[0] for t in transitions(1, seed=1)))
    assert buffer.priorities[4] == pytest.approx(top)


def test_repeated_state_gets_lower_priority_than_a_novel_one():
    buffer = PrioritizedReplayBuffer(100, OBS, ACT, eta=0.2, cell_size=1.0)
    seen = np.full(OBS, 0.3, np.float32)
    for k in range(50):  # the same cell, from slightly different states
        buffer.add(seen + 0.001 * k, np.zeros(ACT), 0.0, seen, False)
    novel = np.full(OBS, 7.5, np.float32)
    buffer.add(novel, np.zeros(ACT), 0.0, seen, False)
    np.testing.assert_array_equal(buffer.visit_counts(np.stack([seen, novel])), [50, 1])
    buffer.update_priorities([0, 50], [0.5, 0.5])
    base = (0.5 + buffer.epsilon) ** 0.6
    np.testing.assert_allclose(buffer.priorities[[0, 50]], [base + 0.2 / 50, base + 0.2 / 1])
    assert buffer.priorities[50] > buffer.priorities[0]


def test_grid_cells_floor_each_component_and_treat_both_zeros_alike():
    buffer = PrioritizedReplayBuffer(10, 2, 1, eta=0.2, cell_size=[1.0, 0.5])
    for state in ([0.1, 0.1], [0.9, 0.49], [0.0, -0.0], [-0.0, 0.0]):
        buffer.add(np.array(state), [0.0], 0.0, np.zeros(2), False)
    counts = buffer.visit_counts(np.array([[0.5, 0.2], [1.0, 0.2], [0.5, 0.5], [-0.1, 0.2]]))
    np.testing.assert_array_equal(counts, [4, 0, 0, 0])


def test_single_and_batch_adds_count_identically_and_hashes_spread():
    data = transitions(3000, seed=5, obs_dim=8)
    one_by_one = PrioritizedReplayBuffer(4000, 8, ACT, eta=0.2, cell_size=0.25)
    batched = PrioritizedReplayBuffer(4000, 8, ACT, eta=0.2, cell_size=0.25)
    for row in zip(*data, strict=True):
        one_by_one.add(*row)
    batched.add(*data)
    np.testing.assert_array_equal(one_by_one._slots, batched._slots)
    np.testing.assert_array_equal(one_by_one._counts, batched._counts)
    # 3000 distinct cells in 2^20 slots per row: nearly all land in their own slot.
    assert min(len(np.unique(batched._slots[:3000, row])) for row in range(2)) >= 2990
    np.testing.assert_array_equal(batched.visit_counts(data[0]), np.ones(3000))


def test_importance_weights_hand_checked():
    buffer = PrioritizedReplayBuffer(4, 1, 1, seed=0, alpha=1.0, eta=0.0, epsilon=0.0)
    for k in range(4):
        buffer.add([float(k)], [0.0], 0.0, [0.0], False)
    buffer.update_priorities(np.arange(4), [1.0, -2.0, 3.0, 4.0])  # P = 1, 2, 3, 4; total 10
    priorities = np.array([1.0, 2.0, 3.0, 4.0])
    seen_extremes = False
    for _ in range(200):
        beta = buffer.beta
        batch = buffer.sample(2)
        p = priorities[batch.indices]
        raw = (4 * p / 10) ** -beta  # w_i = (N P(i) / sum P)^-beta
        np.testing.assert_allclose(batch.weights, raw / raw.max(), rtol=1e-6)
        np.testing.assert_array_equal(batch.obs[:, 0], batch.indices)
        if beta == 0.4 and set(batch.indices) == {0, 3}:
            # (4 * 4/10)^-0.4 / (4 * 1/10)^-0.4 = (1/4)^0.4
            assert batch.weights[list(batch.indices).index(3)] == pytest.approx(0.5743491775, rel=1e-6)
            seen_extremes = True
        buffer._sample_calls = 0  # stay at beta 0.4 for the hand-checked case
    assert seen_extremes


def test_beta_anneals_linearly_from_0_4_to_1():
    buffer = PrioritizedReplayBuffer(4, 1, 1, seed=0, alpha=1.0, eta=0.0, epsilon=0.0, beta_steps=10)
    buffer.add(np.arange(4.0)[:, None], np.zeros((4, 1)), np.zeros(4), np.zeros((4, 1)), np.zeros(4))
    buffer.update_priorities(np.arange(4), [1.0, 2.0, 3.0, 4.0])
    betas = []
    for _ in range(13):
        betas.append(buffer.beta)
        batch = buffer.sample(4)
    np.testing.assert_allclose(betas, np.minimum(0.4 + 0.06 * np.arange(13), 1.0))
    p = batch.indices + 1.0
    np.testing.assert_allclose(batch.weights, p.min() / p, rtol=1e-6)  # beta = 1


@pytest.mark.parametrize("td_errors, message", [
    ([math.nan, 1.0], "NaN or Inf"),
    ([1.0, math.inf], "NaN or Inf"),
    ([1.0], "same length"),
])
def test_update_priorities_rejects_non_finite_td_errors_and_bad_shapes(td_errors, message):
    buffer = PrioritizedReplayBuffer(8, OBS, ACT)
    buffer.add(*transitions(4))
    before = buffer.priorities.copy()
    with pytest.raises(ReplayError, match=message):
        buffer.update_priorities([0, 1], td_errors)
    np.testing.assert_array_equal(buffer.priorities, before)


def test_update_priorities_rejects_indices_outside_the_filled_part():
    buffer = PrioritizedReplayBuffer(8, OBS, ACT)
    buffer.add(*transitions(4))
    with pytest.raises(ReplayError, match=r"\[0, 4\)"):
        buffer.update_priorities([4], [1.0])
    with pytest.raises(ReplayError, match=r"\[0, 4\)"):
        buffer.update_priorities([-1], [1.0])


def test_update_priorities_with_repeated_indices_keeps_the_last():
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, eta=0.0, alpha=1.0, epsilon=0.0)
    buffer.add(*transitions(4))
    buffer.update_priorities([2, 1, 2, 2], [5.0, 1.0, 3.0, -0.25])
    np.testing.assert_allclose(buffer.priorities, [1.0, 1.0, 0.25, 1.0])


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": -1.0}, "alpha"), ({"eta": math.nan}, "eta"), ({"beta_start": 1.5}, "beta_start"),
    ({"beta_steps": 0}, "beta_steps"), ({"cell_size": [1.0, 2.0]}, "cell_size"), ({"cell_size": 0.0}, "cell_size"),
    ({"count_table_bits": 40}, "count_table_bits"),
])
def test_prioritized_buffer_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ReplayError, match=message):
        PrioritizedReplayBuffer(8, OBS, ACT, **kwargs)


# ------------------------------------------------------------------------------------------- save, load


def assert_same_batches(a, b, batches=3, size=16):
    for _ in range(batches):
        x, y = a.sample(size), b.sample(size)
        for field in ("obs", "action", "reward", "next_obs", "done", "weights", "indices"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)


def test_uniform_buffer_save_load_round_trip(tmp_path):
    buffer = ReplayBuffer(10, (2, 2), 3, obs_dtype=np.uint8, action_dtype=np.int64, seed=4)
    rng = np.random.default_rng(0)
    buffer.add(rng.integers(0, 255, (13, 2, 2)), rng.integers(0, 9, (13, 3)), rng.random(13),
               rng.integers(0, 255, (13, 2, 2)), np.zeros(13))
    buffer.sample(5)
    path = buffer.save(tmp_path / "uniform.npz")
    loaded = ReplayBuffer.load(path)
    assert len(loaded) == 10 and loaded._pos == 3 and loaded.obs_dtype == np.uint8 and loaded.action_dtype == np.int64
    for name, array in buffer._arrays().items():
        np.testing.assert_array_equal(array, loaded._arrays()[name])
    assert_same_batches(buffer, loaded)


@pytest.mark.parametrize("eta", [0.0, 0.2])
def test_prioritized_buffer_save_load_round_trip(tmp_path, eta):
    buffer = PrioritizedReplayBuffer(64, OBS, ACT, seed=1, eta=eta, beta_steps=50, cell_size=0.5)
    buffer.add(*transitions(40))
    for _ in range(5):
        batch = buffer.sample(8)
        buffer.update_priorities(batch.indices, np.random.default_rng(len(buffer)).standard_normal(8))
    path = buffer.save(tmp_path / "sub" / "per.npz")
    loaded = PrioritizedReplayBuffer.load(path)
    assert loaded._config() == buffer._config()
    assert loaded.beta == buffer.beta and loaded.max_priority == buffer.max_priority
    np.testing.assert_array_equal(loaded.priorities, buffer.priorities)
    check_tree(loaded._sum_tree, buffer.priorities.tolist() + [0.0] * 24)
    assert_same_batches(buffer, loaded)
    new = transitions(3, seed=9)
    buffer.add(*new)
    loaded.add(*new)
    if eta:
        np.testing.assert_array_equal(loaded._counts, buffer._counts)
        np.testing.assert_array_equal(loaded.visit_counts(new[0]), buffer.visit_counts(new[0]))
    assert_same_batches(buffer, loaded)


def test_load_names_the_file_when_missing_or_corrupt(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(ReplayError, match=f"replay file {missing} does not exist"):
        ReplayBuffer.load(missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ReplayError, match=f"cannot load replay file {garbage}"):
        ReplayBuffer.load(garbage)
    good = ReplayBuffer(8, OBS, ACT).save(tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ReplayError, match=f"cannot load replay file {truncated}"):
        ReplayBuffer.load(truncated)


def rewrite(path, edit):
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(str(arrays.pop("header")))
    edit(header, arrays)
    with open(path, "wb") as f:
        np.savez(f, header=np.array(json.dumps(header)), **arrays)


def test_load_rejects_other_versions_classes_and_mismatched_arrays(tmp_path):
    buffer = PrioritizedReplayBuffer(8, OBS, ACT, eta=0.2)
    buffer.add(*transitions(5))
    path = buffer.save(tmp_path / "per.npz")
    with pytest.raises(ReplayError, match=f"{path}: it holds a PrioritizedReplayBuffer, not a ReplayBuffer"):
        ReplayBuffer.load(path)

    rewrite(path, lambda header, arrays: header.update(format_version=99))
    with pytest.raises(ReplayError, match="format version 99"):
        PrioritizedReplayBuffer.load(path)

    buffer.save(path)
    rewrite(path, lambda header, arrays: header["config"].update(obs_shape=[OBS + 1]))
    with pytest.raises(ReplayError, match=f"{path}: array 'obs' is float32\\[5, 5\\], expected float32\\[5, 6\\]"):
        PrioritizedReplayBuffer.load(path)

    buffer.save(path)
    rewrite(path, lambda header, arrays: arrays.pop("priorities"))
    with pytest.raises(ReplayError, match=f"cannot load replay file {path}"):
        PrioritizedReplayBuffer.load(path)

    buffer.save(path)
    rewrite(path, lambda header, arrays: arrays["obs"].__setitem__((1, 1), np.nan))
    with pytest.raises(ReplayError, match="obs contains NaN or Inf"):
        PrioritizedReplayBuffer.load(path)


# -------------------------------------------------------------------------------------------- benchmark


def test_per_benchmark_quick_writes_design_json(tmp_path, capsys):
    from ds_robot.bench.per import run_per_benchmark

    out = tmp_path / "per.json"
    assert run_per_benchmark(quick=True, json_path=out, repeats=1) == 0
    printed = capsys.readouterr().out
    assert "sample+update batches/s" in printed and "ds_robot_novelty" in printed
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "per" and doc["config"]["capacity"] == 20_000
    rows = {row["name"]: row for row in doc["results"]}
    assert set(rows) == {"ds_robot", "ds_robot_novelty", "cpprb"}
    for row in rows.values():
        if row.get("missing"):
            continue
        for metric in ("sample_update_per_s", "add_per_s", "bytes_per_transition"):
            assert row[metric] > 0 and len(row[f"{metric}_ci95"]) == 2
        assert row["bytes_per_transition"] > 4 * (2 * 348 + 17)


def test_per_benchmark_reports_a_missing_peer(tmp_path, capsys, monkeypatch):
    from ds_robot.bench import per

    monkeypatch.setattr(per, "_cpprb_version", lambda: None)
    out = tmp_path / "per.json"
    assert per.run_per_benchmark(quick=True, json_path=out, repeats=1) == 0
    assert "cpprb is not installed" in capsys.readouterr().out
    rows = {row["name"]: row for row in json.loads(out.read_text())["results"]}
    assert rows["cpprb"] == {"name": "cpprb", "missing": True}
