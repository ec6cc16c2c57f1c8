"""Dataclass configs read from YAML, with ``section.key=value`` overrides; unknown keys are errors."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} in {where or 'the top level'}; allowed keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(value, hint, where: str):
    """YAML reads '3e-4' as a string; numbers are converted by the field's declared type, with a clear error."""
    types = typing.get_args(hint) or (hint,)
    if value is None or not isinstance(value, str) or str in types:
        return value
    for t in (int, float):
        if t in types:
            try:
                return t(value)
            except ValueError:
                pass
    if int in types or float in types:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(d: dict, dotted: str, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    d[keys[-1]] = value


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Defaults of ``cls`` ← YAML file ← ``key.sub=value`` overrides (values parsed as YAML)."""
    data = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        _merge(data, loaded, "", cls)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.steps=100)")
        key, raw = item.split("=", 1)
        patch: dict = {}
        _set_dotted(patch, key.strip(), yaml.safe_load(raw))
        _merge(data, patch, "", cls)
    return _build(cls, data, "")


def _merge(base: dict, patch: dict, where: str, cls):
    if not isinstance(patch, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k, v in patch.items():
        if k not in fields:
            raise ConfigError(f"unknown config key {k!r} in {where or 'the top level'}; allowed keys: {sorted(fields)}")
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            _merge(base[k], v, f"{where}.{k}" if where else k, hints[k])
        else:
            base[k] = v


def save_config(cfg, path: Path):
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
