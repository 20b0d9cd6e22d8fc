"""``ds-robot bench grasp-select``: choose a hierarchical policy among trained candidates on the
validation object set, never on the test set.

Every candidate (a policy ``.npz`` or a ``train grasp`` run directory, whose ``policy.npz`` is
taken) runs the same episodes (``seeds`` base seeds x ``episodes``; episode seeds derive from the
base seed) on the ``--task`` preset's ``val`` object set: objects in neither the training nor the
test set (``sim/objects/val.yaml``). The table gives each candidate's success (Wilson 95% CI),
time to lift, energy, crushed episodes and its worst objects. The selected candidate has the
highest validation success; ties go to the shorter mean time to lift.

Candidates are also grouped by what they were trained with (torque features on or off, from
each file's ``config``): the mean validation success over a group's training seeds with a 95% CI
across seeds, the comparison a choice of feature set rests on.

Why a third set: the shipped files were first chosen by their own training-episode success
(rounds 7-10). That favours what fits the training objects; choosing on the test set would make
the test set's number a selected maximum instead of a measurement.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ds_robot.bench.grasp import _run, summarise_jobs
from ds_robot.bench.report import ci_text, format_table, write_json
from ds_robot.errors import ConfigError
from ds_robot.stats import mean_ci95


def candidate_file(path: str | Path) -> Path:
    """A policy file: ``path`` itself (an ``.npz``) or a run directory's ``policy.npz``."""
    path = Path(path)
    file = path / "policy.npz" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"grasp-select candidate {path}: no policy file"
                          + (" (policy.npz) in the run directory" if path.is_dir() else ""))
    return file


def select(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest validation success; among equals, the shortest mean time to lift
    (NaN, no success at all, counts as the longest)."""
    if not rows:
        raise ConfigError("grasp-select needs at least one candidate")

    def key(row):
        lift = row["time_to_lift_s"]
        return (-row["success_rate"], lift if math.isfinite(lift) else math.inf)

    return min(rows, key=key)


def feature_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates grouped by their training's torque features: the mean validation success over
    the group's files with a 95% CI across them (one file: no interval)."""
    groups = []
    for torque in (True, False):
        rates = [r["success_rate"] for r in rows if r["torque_features"] is torque]
        if rates:
            mean, ci = mean_ci95(rates)
            groups.append({"torque_features": torque, "candidates": len(rates), "success_rate": rates,
                           "mean": mean, "ci95": list(ci)})
    return groups


def _worst(row: dict[str, Any], k: int = 3) -> str:
    lost = sorted((rate, name) for name, rate in row["per_object_success"].items() if rate < 1.0)[:k]
    return ", ".join(f"{name} {rate:.2f}" for rate, name in lost) or "-"


def run_grasp_select(candidates, seeds: int = 2, episodes: int = 60, json_path: str | Path | None = None,
                     workers: int = 2, task: str = "realistic", split: str = "val") -> int:
    from ds_robot.envs.presets import load_task
    from ds_robot.hier.policy import HierPolicy

    if split == "test":
        raise ConfigError("grasp-select chooses on the val (or train) set: choosing on the test set would make "
                          "the test number a selected maximum, not a measurement")
    preset = load_task(task)
    object_set = preset.object_set(split)  # a clear error when the preset has no such set
    files = [candidate_file(c) for c in candidates]
    if len(set(files)) != len(files):
        raise ConfigError("grasp-select: a candidate is listed twice: " + ", ".join(map(str, files)))
    metas = [HierPolicy.load(f).meta for f in files]
    jobs = [("hier", split, seed, episodes, {"hier": f}, task) for f in files for seed in range(seeds)]
    print(f"bench grasp-select: {len(files)} candidates x {seeds} seeds x {episodes} episodes on the {split} set "
          f"of task {preset.name} ({object_set})")
    done = _run(jobs, workers, "grasp-select")
    rows = []
    for f, meta in zip(files, metas, strict=True):
        row = summarise_jobs(str(f), split, [j for j, job in zip(done, jobs, strict=True) if job[4]["hier"] == f])
        config = meta.get("config", {})
        row.update(torque_features=bool(config.get("torque_features", True)), training_seed=config.get("seed"),
                   trained_steps=meta.get("steps"), trained_task=config.get("task", "nominal"))
        rows.append(row)
    best = select(rows)
    print(format_table(
        ["candidate", "torque", "seed", "steps", f"{split} success [95% CI]", "time to lift s", "energy J", "crushed",
         "worst objects"],
        [[("* " if r is best else "  ") + r["name"], "yes" if r["torque_features"] else "no", r["training_seed"],
          f"{r['trained_steps']:,}" if r["trained_steps"] else "?",
          ci_text(r["success_rate"], r["success_rate_ci95"], digits=3), f"{r['time_to_lift_s']:.2f}",
          f"{r['energy_j']:.1f}", r["crushed"], _worst(r)] for r in rows]))
    groups = feature_groups(rows)
    for g in groups:
        lo, hi = g["ci95"]
        spread = f" [{lo:.3f}, {hi:.3f}] (95% CI across them)" if g["candidates"] > 1 else ""
        print(f"torque features {'on' if g['torque_features'] else 'off'}: mean {g['mean']:.3f}{spread} over "
              f"{g['candidates']} candidates: " + ", ".join(f"{x:.3f}" for x in g["success_rate"]))
    others = [r["trained_task"] for r in rows if r["trained_task"] != preset.name]
    if others:
        print(f"note: {len(others)} candidates were trained on another task ({', '.join(sorted(set(others)))})")
    print(f"selected: {best['name']} ({split} success {best['success_rate']:.3f})")
    if json_path:
        write_json(json_path, "grasp_select",
                   {"task": preset.name, "split": split, "object_set": str(object_set), "seeds": seeds,
                    "episodes_per_seed": episodes, "processes": workers, "candidates": [str(f) for f in files],
                    "selected": best["name"], "rule": "highest success, then shortest time to lift",
                    "feature_groups": groups}, rows)
        print(f"wrote {json_path}")
    return 0


__all__ = ["candidate_file", "feature_groups", "run_grasp_select", "select"]
