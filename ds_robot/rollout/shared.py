"""One ``multiprocessing.shared_memory`` block holding several named numpy arrays.

The learner creates a block (``SharedBlock.create``) and sends its small, picklable
``BlockLayout`` to the workers, which map the same memory (``SharedBlock.attach``). Every
array starts on a 64-byte boundary, so two workers writing neighbouring slices of different
arrays never share a cache line at an array boundary. Only the creator unlinks the block.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import shared_memory

import gymnasium as gym
import numpy as np

from ds_robot.errors import ConfigError

NAME_PREFIX = "dsr_rollout_"
"""Every block's name starts with this (on Linux the block is ``/dev/shm/<name>``)."""

_ALIGN_BYTES = 64
_ARRAY_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype (a numpy dtype string such as ``'<f4'``) of one array."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def batched(self, *leading: int) -> ArraySpec:
        """The spec of ``leading`` stacked copies, e.g. ``(n_steps, num_envs, *shape)``."""
        return ArraySpec((*leading, *self.shape), self.dtype)


def space_array_spec(space: gym.Space, what: str) -> ArraySpec:
    """The fixed-size array a sample of ``space`` occupies; ``what`` names the space in errors."""
    if not isinstance(space, _ARRAY_SPACES):
        raise ConfigError(
            f"the {what} space is {space}: the rollout engine passes observations and actions through "
            "shared memory and supports Box, Discrete, MultiDiscrete and MultiBinary spaces only "
            "(wrap the env with gymnasium.wrappers.FlattenObservation for Dict or Tuple observations)"
        )
    return ArraySpec(tuple(int(n) for n in space.shape), np.dtype(space.dtype).str)


@dataclass(frozen=True)
class BlockLayout:
    """Where each named array lies in the block ``name``: ``(field, spec, byte offset)``."""

    name: str
    fields: tuple[tuple[str, ArraySpec, int], ...]
    size: int


class SharedBlock:
    """Named numpy arrays backed by one shared-memory block."""

    def __init__(self, layout: BlockLayout, memory: shared_memory.SharedMemory, owner: bool):
        self.layout = layout
        self._memory = memory
        self._owner = owner
        self.arrays: dict[str, np.ndarray] = {
            field: np.ndarray(spec.shape, np.dtype(spec.dtype), buffer=memory.buf, offset=offset)
            for field, spec, offset in layout.fields
        }

    @property
    def name(self) -> str:
        return self.layout.name

    def __getitem__(self, field: str) -> np.ndarray:
        return self.arrays[field]

    @classmethod
    def create(cls, specs: Mapping[str, ArraySpec]) -> SharedBlock:
        """Allocate a zero-filled block for ``specs`` under a fresh, unique name."""
        fields, offset = [], 0
        for field, spec in specs.items():
            fields.append((field, spec, offset))
            offset += -(-spec.nbytes // _ALIGN_BYTES) * _ALIGN_BYTES
        name = f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        memory = shared_memory.SharedMemory(name=name, create=True, size=max(offset, 1))
        block = cls(BlockLayout(name, tuple(fields), max(offset, 1)), memory, owner=True)
        for array in block.arrays.values():
            array.fill(0)
        return block

    @classmethod
    def attach(cls, layout: BlockLayout) -> SharedBlock:
        """Map a block another process created."""
        return cls(layout, shared_memory.SharedMemory(name=layout.name), owner=False)

    def close(self) -> None:
        """Unmap the block; the creator also removes it from the system (unlink)."""
        self.arrays = {}
        with contextlib.suppress(BufferError):  # a caller still holds a view; the mapping goes with it
            self._memory.close()
        if self._owner:
            self._owner = False
            with contextlib.suppress(FileNotFoundError):
                self._memory.unlink()
