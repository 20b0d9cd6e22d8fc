"""Headless rendering of an episode to a video (.mp4, .gif) or a still (.png)."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio

from ds_robot.errors import DsRobotError
from ds_robot.evaluate import run_episode


def render_episode(env, controller, out: Path, seed: int = 0, fps: int = 25) -> dict:
    """Run one episode, grabbing a frame every 1/fps simulated seconds, and write ``out``."""
    frames = []
    every = max(1, round(1.0 / (fps * env.control_dt_s)))
    counter = {"steps": 0}

    def grab(e) -> None:
        if counter["steps"] % every == 0:
            frames.append(e.render())
        counter["steps"] += 1

    try:
        env.reset(seed=seed)
        frames.append(env.render())
    except Exception as exc:  # a missing GL stack surfaces here, deep inside mujoco
        raise DsRobotError(
            f"headless rendering failed ({exc}). Set MUJOCO_GL=egl and install EGL "
            "(Debian: apt-get install libegl1 libgl1-mesa-dri), or MUJOCO_GL=osmesa with libosmesa6."
        ) from exc
    result = run_episode(env, controller, seed, on_step=grab)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".png":
        iio.imwrite(out, frames[-1])
    elif suffix == ".gif":
        iio.imwrite(out, frames, duration=1000 / fps, loop=0)
    else:
        iio.imwrite(out, frames, fps=fps, codec="libx264", macro_block_size=8)
    env.close()
    return {"frames": len(frames), "object": result.object, "success": result.success}
