"""A replay buffer behind a Ray actor, for Ape-X-style collection with the Ray rollout backend
(``RayRolloutEngine.collect_into_replay`` pushes into it; the learner samples and updates
priorities). Ray is optional: ``pip install 'ds-robot[dist]'``."""

from __future__ import annotations

from typing import Any

from ds_robot.rl.replay import PrioritizedReplayBuffer, ReplayBuffer
from ds_robot.rollout.ray_backend import ensure_ray, ray_module


class ReplayActor:
    """A ``ReplayBuffer`` or ``PrioritizedReplayBuffer`` behind a Ray actor."""

    def __init__(self, prioritized: bool, **kwargs: Any):
        self.buffer = PrioritizedReplayBuffer(**kwargs) if prioritized else ReplayBuffer(**kwargs)

    def add(self, obs, action, reward, next_obs, done) -> int:
        self.buffer.add(obs, action, reward, next_obs, done)
        return len(self.buffer)

    def sample(self, batch_size: int):
        return self.buffer.sample(batch_size)

    def update_priorities(self, indices, td_errors) -> None:
        self.buffer.update_priorities(indices, td_errors)

    def size(self) -> int:
        return len(self.buffer)


def make_replay_actor(prioritized: bool = True, address: str | None = None, **buffer_kwargs: Any):
    """Start a :class:`ReplayActor` on Ray (a local instance when ``address`` is None)."""
    ensure_ray(address)
    return ray_module().remote(ReplayActor).remote(prioritized, **buffer_kwargs)
