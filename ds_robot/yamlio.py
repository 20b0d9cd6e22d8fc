"""Reading YAML configuration with errors that name the file, the entry and the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ds_robot.errors import ConfigError


def load_yaml(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        with path.open() as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc


class Fields:
    """Typed access to one mapping of a YAML file; errors say ``file: entry: field: problem``."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
        self.data = data
        self.where = where

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: field '{key}': {problem}")

    def raw(self, key: str, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        return self.data[key]

    def sub(self, key: str) -> Fields:
        return Fields(self.raw(key), f"{self.where}: {key}")

    def number(self, key: str, default: Any = ..., low: float = -math.inf, high: float = math.inf) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"expected a finite number, got {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"{value} is outside [{low}, {high}]")
        return float(value)

    def string(self, key: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"'{value}' is not one of {', '.join(choices)}")
        return value

    def vector(
        self, key: str, length: int, default: Any = ..., low: float = -math.inf, high: float = math.inf
    ) -> tuple[float, ...]:
        value = self.raw(key, default)
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise self.fail(key, f"expected a list of {length} numbers, got {value!r}")
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                raise self.fail(key, f"expected finite numbers, got {item!r}")
            if not low <= item <= high:
                raise self.fail(key, f"{item} is outside [{low}, {high}]")
            out.append(float(item))
        return tuple(out)

    def matrix(self, key: str, rows: int, cols: int) -> tuple[tuple[float, ...], ...]:
        value = self.raw(key)
        if not isinstance(value, (list, tuple)) or len(value) != rows:
            raise self.fail(key, f"expected {rows} rows of {cols} numbers, got {value!r}")
        return tuple(Fields({key: row}, self.where).vector(key, cols) for row in value)
