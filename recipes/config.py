"""Recipe configs: typed dataclasses built from defaults, a TOML/YAML/JSON file and
``--set key=value`` overrides, every value type-checked and range-checked, any problem one
:class:`ConfigError` naming the key."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "RecipeConfig", "build_config", "config_dict", "validate_config"]


class ConfigError(ValueError):
    """A recipe config is invalid (unknown key, wrong type, or does not fit the model)."""


@dataclass
class RecipeConfig:
    """Fields every recipe has."""

    model: str = "smollm2-135m"
    seed: int = 0
    progress: bool = True


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (often a string from --set) to ``annotation`` or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {annotation}, got {value!r}")
    if origin is typing.Literal:
        for allowed in args:
            if value == allowed or (isinstance(value, str) and str(allowed) == value):
                return allowed
        raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        items = value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ConfigError(
                        f"{key}: not a valid JSON list ({exc.msg} at character {exc.pos}): "
                        f"{value!r}"
                    ) from None
            else:
                items = [v for v in text.split(",") if v.strip()]
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def build_config(
    cls: type[RecipeConfig],
    file: str | os.PathLike[str] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RecipeConfig:
    """Defaults, then a TOML/YAML/JSON file, then ``key=value`` overrides; all type-checked."""
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_read_config_file(Path(file)))
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value")
            k, v = item.split("=", 1)
            values[k.strip()] = v
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}"
        )
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    config = cls(**kwargs)
    validate_config(config)
    return config


def _read_config_file(path: Path) -> dict[str, Any]:
    """The key/value table of a TOML, YAML or JSON config file; any problem is one line."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {path}: use .toml, .yaml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            doc: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
            doc = {} if doc is None else doc
    except Exception as exc:  # tomllib, json and yaml each raise their own syntax error
        detail = " ".join(str(exc).split())
        raise ConfigError(f"config file {path}: syntax error: {detail}") from None
    if not isinstance(doc, dict):
        raise ConfigError(
            f"config file {path} must hold a table of key = value settings, got a "
            f"{type(doc).__name__}"
        )
    return doc


def validate_config(config: Any) -> None:
    """Value checks that need no model, declared on the config's fields: a list may not be
    empty (unless ``metadata={"allow_empty": True}``); ``metadata={"min": m}`` bounds a
    number, ``{"min_len": m}`` a list's length. Raises ConfigError naming the key."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if isinstance(value, (list, tuple)):
            if not value and not meta.get("allow_empty"):
                raise ConfigError(f"{f.name}: empty list; give at least one value")
            if len(value) < meta.get("min_len", 0):
                raise ConfigError(
                    f"{f.name}: needs at least {meta['min_len']} values, got {len(value)}"
                )
        low = meta.get("min")
        if (
            low is not None
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value < low
        ):
            raise ConfigError(f"{f.name}: must be >= {low}, got {value!r}")


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
