"""``ds-robot bench per``: prioritized replay speed and memory, ds_robot against cpprb.

Humanoid-sized transitions (observation 348 float32, action 17 float32, float32 reward and done,
and a separate next observation), ring capacity 1,000,000 (``--quick``: 20,000), batch 256.
Each variant's buffer is built and filled to capacity (in chunks of 2,048), then measured:

- ``sample_update_per_s``: batches per second of ``sample(256)`` followed by a priority update of
  the 256 sampled transitions with fresh TD errors (the loop a PER learner runs);
- ``add_per_s``: single-transition ``add`` calls per second into the full buffer (overwriting);
- ``bytes_per_transition``: growth of the process's resident memory from before the buffer is
  built to after it is filled, divided by the capacity (storage, priority trees, counters).

Variants: ``ds_robot`` (``PrioritizedReplayBuffer``, alpha 0.6, no novelty: eta = 0),
``ds_robot_novelty`` (eta = 0.2, hashed-grid visit counts updated on every add and read on every
priority update) and the peer ``cpprb`` (``cpprb.PrioritizedReplayBuffer``, alpha 0.6, same
fields). Variants alternate within each repeat, so slow drift of the machine hits all of them;
each repeat builds fresh buffers. Everything runs in one process, single-threaded.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from ds_robot.bench.report import format_table, write_json
from ds_robot.errors import ConfigError
from ds_robot.rl.replay import PrioritizedReplayBuffer
from ds_robot.stats import mean_ci95

OBS_DIM = 348
ACTION_DIM = 17
BATCH_SIZE = 256
ALPHA = 0.6
EPSILON = 1e-6
FILL_CHUNK = 2_048
POOL_SIZE = 4 * FILL_CHUNK
VARIANTS = ("ds_robot", "ds_robot_novelty", "cpprb")


class _Transitions:
    """A fixed pool of random transitions that fills and feeds every buffer alike."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.obs = rng.standard_normal((POOL_SIZE, OBS_DIM), np.float32)
        self.next_obs = rng.standard_normal((POOL_SIZE, OBS_DIM), np.float32)
        self.action = rng.uniform(-1, 1, (POOL_SIZE, ACTION_DIM)).astype(np.float32)
        self.reward = rng.standard_normal(POOL_SIZE, np.float32)
        self.done = (rng.random(POOL_SIZE) < 0.01).astype(np.float32)
        self.td_errors = rng.standard_normal((64, BATCH_SIZE))

    def chunk(self, k: int) -> tuple[np.ndarray, ...]:
        s = slice((k % (POOL_SIZE // FILL_CHUNK)) * FILL_CHUNK, (k % (POOL_SIZE // FILL_CHUNK) + 1) * FILL_CHUNK)
        return self.obs[s], self.action[s], self.reward[s], self.next_obs[s], self.done[s]


@dataclass
class _Subject:
    """One buffer under test: ``add`` (one transition or a batch) and one sample + priority update."""

    add: Callable[..., None]
    sample_update: Callable[[np.ndarray], None]


def _ds_robot(capacity: int, eta: float, seed: int) -> _Subject:
    buffer = PrioritizedReplayBuffer(capacity, OBS_DIM, ACTION_DIM, seed=seed, alpha=ALPHA, eta=eta, epsilon=EPSILON)

    def sample_update(td_errors: np.ndarray) -> None:
        batch = buffer.sample(BATCH_SIZE)
        buffer.update_priorities(batch.indices, td_errors)

    return _Subject(buffer.add, sample_update)


def _cpprb(capacity: int, seed: int) -> _Subject:
    import cpprb

    np.random.seed(seed)  # cpprb samples with numpy's global generator
    env_dict = {"obs": {"shape": OBS_DIM}, "act": {"shape": ACTION_DIM}, "rew": {}, "next_obs": {"shape": OBS_DIM},
                "done": {}}
    buffer = cpprb.PrioritizedReplayBuffer(capacity, env_dict, alpha=ALPHA, eps=EPSILON)

    def add(obs, action, reward, next_obs, done) -> None:
        buffer.add(obs=obs, act=action, rew=reward, next_obs=next_obs, done=done)

    def sample_update(td_errors: np.ndarray) -> None:
        batch = buffer.sample(BATCH_SIZE, beta=0.4)
        buffer.update_priorities(batch["indexes"], np.abs(td_errors))

    return _Subject(add, sample_update)


def _cpprb_version() -> str | None:
    try:
        import cpprb  # noqa: F401
    except ImportError:
        return None
    try:
        return metadata.version("cpprb")
    except metadata.PackageNotFoundError:
        return "unknown"


_LIBC = None


def _resident_bytes() -> int:
    """Resident set size of this process, after handing freed heap pages back to the OS."""
    global _LIBC
    gc.collect()
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed pages may stay resident and inflate the next reading a little
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(make: Callable[[int], _Subject], seed: int, data: _Transitions, capacity: int, batches: int,
             adds: int) -> dict[str, float]:
    before = _resident_bytes()
    subject = make(seed)
    for k in range(-(-capacity // FILL_CHUNK)):
        subject.add(*data.chunk(k))
    bytes_per_transition = (_resident_bytes() - before) / capacity

    td = data.td_errors
    for i in range(10):  # warm-up
        subject.sample_update(td[i % len(td)])
    start = time.perf_counter()
    for i in range(batches):
        subject.sample_update(td[i % len(td)])
    sample_update_per_s = batches / (time.perf_counter() - start)

    rows = [(data.obs[j], data.action[j], float(data.reward[j]), data.next_obs[j], float(data.done[j]))
            for j in range(min(adds, POOL_SIZE))]
    add = subject.add
    start = time.perf_counter()
    for i in range(adds):
        add(*rows[i % len(rows)])
    add_per_s = adds / (time.perf_counter() - start)
    del subject, rows
    gc.collect()
    return {"sample_update_per_s": sample_update_per_s, "add_per_s": add_per_s,
            "bytes_per_transition": bytes_per_transition}


def run_per_benchmark(quick: bool = False, json_path=None, repeats: int = 3) -> int:
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    capacity = 20_000 if quick else 1_000_000
    batches = 200 if quick else 2_000
    adds = 2_000 if quick else 20_000
    if quick:
        repeats = min(repeats, 2)
    cpprb_version = _cpprb_version()
    makers: dict[str, Callable[[int], _Subject]] = {
        "ds_robot": lambda seed: _ds_robot(capacity, 0.0, seed),
        "ds_robot_novelty": lambda seed: _ds_robot(capacity, 0.2, seed),
    }
    if cpprb_version is not None:
        makers["cpprb"] = lambda seed: _cpprb(capacity, seed)

    data = _Transitions(seed=0)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in makers}
    for repeat in range(repeats):
        for name, make in makers.items():
            samples[name].append(_measure(make, repeat, data, capacity, batches, adds))

    metrics = ("sample_update_per_s", "add_per_s", "bytes_per_transition")
    results, rows = [], []
    for name in VARIANTS:
        if name not in samples:
            results.append({"name": name, "missing": True})
            rows.append([name, "missing (pip install cpprb)", "-", "-"])
            continue
        row: dict = {"name": name}
        for metric in metrics:
            mean, ci = mean_ci95([s[metric] for s in samples[name]])
            row[metric] = mean
            row[f"{metric}_ci95"] = list(ci)
        results.append(row)
        rows.append([name, _with_ci(row, "sample_update_per_s"), _with_ci(row, "add_per_s"),
                     f"{row['bytes_per_transition']:,.0f}"])
    by_name = {r["name"]: r for r in results}
    peer = by_name["cpprb"]
    if not peer.get("missing"):
        for row, result in zip(rows, results, strict=True):
            row.append(f"{result['sample_update_per_s'] / peer['sample_update_per_s']:.2f}x / "
                       f"{result['add_per_s'] / peer['add_per_s']:.2f}x")

    print(f"\nbench per: capacity {capacity:,}, obs {OBS_DIM} + action {ACTION_DIM} float32, batch {BATCH_SIZE}, "
          f"{batches:,} sample+update batches and {adds:,} single adds per run, {repeats} repeats")
    headers = ["variant", "sample+update batches/s (95% CI)", "single adds/s (95% CI)", "bytes/transition"]
    if not peer.get("missing"):
        headers.append("vs cpprb (s+u / add)")
    print(format_table(headers, rows))
    if peer.get("missing"):
        print("cpprb is not installed: reported as missing (pip install cpprb, or the 'bench' extra)")
    if json_path:
        config = {"capacity": capacity, "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "obs_dtype": "float32",
                  "batch_size": BATCH_SIZE, "alpha": ALPHA, "epsilon": EPSILON, "novelty_eta": 0.2,
                  "novelty_cell_size": 1.0, "sample_update_batches": batches, "single_adds": adds,
                  "fill_chunk": FILL_CHUNK, "repeats": repeats, "quick": quick, "cpprb_version": cpprb_version,
                  "process": "one process, single-threaded, not pinned to a core",
                  "bytes_per_transition_method": "resident-set growth from before construction to after fill, "
                                                 "divided by capacity"}
        write_json(json_path, "per", config, results)
        print(f"wrote {json_path}")
    return 0


def _with_ci(row: dict, metric: str) -> str:
    lo, hi = row[f"{metric}_ci95"]
    if not np.isfinite(lo):
        return f"{row[metric]:,.0f}"
    return f"{row[metric]:,.0f} ± {(hi - lo) / 2:,.0f}"
