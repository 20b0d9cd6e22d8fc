import fcntl
import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

INTERFACES = Path(__file__).resolve().parent / "interfaces"
# What building a ROS interface package needs beyond the ros extra: the ament_cmake tool chain
# and the rosidl generators, in a venv of their own (the test venv stays as installed).
BUILD_TOOLS = ("ros-kilted-ament-cmake==2.7.3", "ros-kilted-ament-cmake-python==2.7.3",
               "ros-kilted-ament-cmake-include-directories==2.7.3", "ros-kilted-ament-cmake-ros-core==0.14.5",
               "ros-kilted-ament-package==0.17.2", "ros-kilted-rosidl-default-generators==1.7.1",
               "ros-kilted-rosidl-core-generators==0.3.1")


def _lowest_priority() -> None:
    os.nice(19)  # a build beside the suite's timing-sensitive tests must not starve them


def _build_interface(package: str, root: Path) -> Path:
    """Build ``tests/interfaces/<package>`` with cmake against this venv's ROS wheels; its prefix."""
    prefix, tools, build = root / "install", root / "tools", root / "build"
    if (prefix / ".built").exists():
        return prefix
    venv = Path(sys.prefix)
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
    subprocess.run([str(tools / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *BUILD_TOOLS], check=True, preexec_fn=_lowest_priority)
    site = sysconfig.get_path("purelib", vars={"base": str(tools), "platbase": str(tools)})
    env = {**os.environ, "CMAKE_PREFIX_PATH": f"{tools}:{venv}", "AMENT_PREFIX_PATH": f"{tools}:{venv}",
           "PYTHONPATH": f"{site}:{sysconfig.get_path('purelib')}", "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
           "LD_LIBRARY_PATH": str(venv / "lib")}
    for step in (["cmake", "-S", str(INTERFACES / package), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}",
                  f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
                 ["cmake", "--build", str(build), "-j1"], ["cmake", "--install", str(build)]):
        run = subprocess.run(step, env=env, capture_output=True, text=True, preexec_fn=_lowest_priority)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    (prefix / ".built").touch()
    return prefix


@pytest.fixture(scope="session")
def controller_manager_msgs(tmp_path_factory) -> dict[str, str]:
    """ros2_control's SwitchController service type, built for the tests (PyPI has no
    controller_manager_msgs): the environment a node process needs to import it. Built once per
    run; xdist workers share it (a file lock)."""
    source = INTERFACES / "controller_manager_msgs"
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(source.rglob("*")) if f.is_file())).hexdigest()
    # beside pytest's numbered base directories: kept across runs while the sources are unchanged
    root = tmp_path_factory.getbasetemp().parent / f"controller_manager_msgs-{digest[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prefix = _build_interface("controller_manager_msgs", root)
    site = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    return {"PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")])),
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(prefix / "lib"), os.environ.get("LD_LIBRARY_PATH")])),
            "AMENT_PREFIX_PATH": os.pathsep.join([str(prefix), sys.prefix])}


@pytest.fixture
def open_loop():
    """``open_loop(backend, steps, amplitude_nm, rad_per_step)``: the arm's joint positions (steps x 6)
    under gravity compensation at the start pose plus a sinusoidal torque, open loop, from episode
    seed 0 of ``backend`` (None: the nominal MuJoCo world); the env is closed after."""
    import numpy as np

    from ds_robot.control.robot_model import RobotModel
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.envs.layout import OBS_SLICES

    def run(backend, steps: int, amplitude_nm, rad_per_step: float) -> np.ndarray:
        env = UR5GraspEnv(backend=backend)
        obs, _ = env.reset(seed=0)
        model = RobotModel()
        model.update(obs[OBS_SLICES["q"]].astype(float), np.zeros(6))
        hold = model.gravity_torque()
        qs = []
        for k in range(steps):
            tau = hold + np.asarray(amplitude_nm, dtype=float) * np.sin(rad_per_step * k)
            obs, *_ = env.step(np.append(tau / env.backend.joint_torque_limit_nm, -1.0))
            qs.append(obs[OBS_SLICES["q"]].astype(float))
        env.close()
        return np.array(qs)

    return run
