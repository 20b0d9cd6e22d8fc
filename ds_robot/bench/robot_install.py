"""``ds-robot bench robot-install``: the robot-side install, from scratch, and what it costs.

Two fresh venvs from this checkout (``pip install -e``, as the README's robot instructions):
``core`` (the package alone: NumPy, MuJoCo, PyYAML) and ``core+ros`` (with the ``ros`` extra:
rclpy and the message packages from PyPI, which a robot PC with ROS installed takes from the
system instead). For each: the size of its site-packages, whether anything of the training
side came along (torch, gymnasium, TensorBoard, matplotlib), and import times (best of 3 fresh
interpreters): the int8 policy loaded and run for one step (core), the policy node module
(core+ros). ``tests/test_ros.py`` runs the policy node from such a venv against the sim node.
Pip takes wheels from its cache where it has them (the main install put them there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ds_robot.bench.report import format_table, write_json
from ds_robot.paths import policies_dir, project_root

TRAINING_SIDE = ("torch", "gymnasium", "tensorboard", "matplotlib", "pybullet", "stable_baselines3")


def _lowest_priority() -> None:
    os.nice(19)  # an install must not starve what runs beside it (the test suite's timing-sensitive tests)


def make_robot_venv(path: Path, ros: bool = True) -> Path:
    """A fresh venv at ``path`` with the robot-side install (``ros``: and the ros extra); its python.
    Pip runs at the lowest CPU priority."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    spec = f"{project_root()}[ros]" if ros else str(project_root())
    run = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", spec],
                         capture_output=True, text=True, preexec_fn=_lowest_priority)
    if run.returncode != 0:
        raise RuntimeError(f"pip install -e {spec} failed:\n{run.stderr[-3000:]}")
    return python


def importable(python: Path, modules) -> list[str]:
    """Which of ``modules`` that interpreter can import."""
    code = ("import importlib.util, json, sys; "
            f"print(json.dumps([m for m in {list(modules)!r} if importlib.util.find_spec(m) is not None]))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def import_seconds(python: Path, code: str, repeats: int = 3) -> float:
    """Best of ``repeats`` fresh interpreters: the time ``code`` takes after start-up."""
    timed = f"import time; t = time.perf_counter(); exec({code!r}); print(time.perf_counter() - t)"
    best = float("inf")
    for _ in range(repeats):
        run = subprocess.run([str(python), "-c", timed], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{code!r} failed in {python}:\n{run.stderr[-2000:]}")
        best = min(best, float(run.stdout.strip().splitlines()[-1]))
    return best


def site_packages_bytes(venv: Path) -> int:
    return sum(f.stat().st_size for f in venv.glob("lib/python*/site-packages/**/*") if f.is_file())


def run_robot_install_benchmark(json_path: str | None = None) -> int:
    int8 = policies_dir() / "grasp_hier_int8.npz"
    policy_code = ("import numpy as np; from ds_robot.hier.controller import HierarchicalController; "
                   "from ds_robot.hier.policy import HierPolicy; "
                   f"c = HierarchicalController(HierPolicy.load({str(int8)!r}))")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ros in (("core", False), ("core+ros", True)):
            print(f"  {name}: a fresh venv, pip install -e .{'[ros]' if ros else ''}")
            start = time.perf_counter()
            venv = Path(tmp) / name.replace("+", "_")
            python = make_robot_venv(venv, ros=ros)
            row = {"venv": name, "install_s": time.perf_counter() - start,
                   "site_packages_mb": site_packages_bytes(venv) / 1e6,
                   "training_side_present": importable(python, TRAINING_SIDE),
                   "int8_controller_import_s": import_seconds(python, policy_code)}
            if ros:
                row["policy_node_import_s"] = import_seconds(python, "import ds_robot.deploy.policy_node")
            rows.append(row)
    print(format_table(["venv", "install s", "site-packages MB", "training side present", "int8 controller s",
                        "policy node import s"],
                       [[r["venv"], f"{r['install_s']:.0f}", f"{r['site_packages_mb']:.0f}",
                         ", ".join(r["training_side_present"]) or "none", f"{r['int8_controller_import_s']:.2f}",
                         f"{r['policy_node_import_s']:.2f}" if "policy_node_import_s" in r else "-"] for r in rows]))
    if json_path:
        write_json(json_path, "robot-install", {"policy": str(int8)}, rows)
        print(f"wrote {json_path}")
    return 0 if not any(r["training_side_present"] for r in rows) else 1
