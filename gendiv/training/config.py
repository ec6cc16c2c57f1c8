"""Dataclass configs read from YAML, with ``section.key=value`` overrides; unknown keys are errors."""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path

import torch
import yaml

from ..errors import ResourceError, UserError
from .ema import MAX_RELATIVE_STD


class ConfigError(UserError):
    """A config value or override that cannot be used; the message names the key."""


# keys that moved between sections (the distillation contract v2 made warm-up and sample reuse method options)
MOVED = {"optim.fake_warmup_steps": "method.fake_warmup_steps",
         "optim.reuse_generator_samples": "method.reuse_generator_samples"}


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        moved = MOVED.get(f"{where}.{unknown[0]}")
        hint = f" (it moved to {moved})" if moved else ""
        raise ConfigError(f"unknown config key {unknown[0]!r} in {where or 'the top level'}{hint}; allowed keys: "
                          f"{sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if _is_tagged(hint):  # a typed section chosen by a tag (method by name, σ sampler by kind)
            kwargs[name] = hint.parse_section(value, f"{where}.{name}" if where else name)
        elif dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)  # __post_init__ validates ranges and cross-field rules
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def check_optimizer(section: str, lrs: list, betas, weight_decay: float, ema_decay: float, ema_std=None):
    """Learning rates > 0, two Adam betas in [0, 1), weight decay ≥ 0, EMA decay in [0, 1], power-EMA σ_rel in
    (0, 1/√12] when given (ema.py)."""
    for name, lr in lrs:
        check(lr > 0, f"{section}.{name} must be > 0, got {lr}")
    check(isinstance(betas, (list, tuple)) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
          f"{section}.betas must be two numbers in [0, 1) (e.g. [0.9, 0.99]), got {betas!r}")
    check(weight_decay >= 0, f"{section}.weight_decay must be ≥ 0, got {weight_decay}")
    check(0 <= ema_decay <= 1, f"{section}.ema_decay must be in [0, 1], got {ema_decay}")
    check(ema_std is None or (isinstance(ema_std, (int, float)) and 0 < ema_std <= MAX_RELATIVE_STD),
          f"{section}.ema_std (σ_rel of EDM2's power-function EMA, replaces ema_decay) must be in "
          f"(0, {MAX_RELATIVE_STD:.4f}], e.g. 0.05; got {ema_std!r}")


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes of memory a tensor on ``device`` can use at most: the GPU's total memory, or the machine's RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_allocation(what: str, n_bytes: int, device, fix: str):
    """Refuse, before allocating, a size this machine cannot hold; the message gives the estimate and the limit."""
    limit = available_memory(device)
    if n_bytes > limit:
        raise ResourceError(f"{what} needs at least {_gib(n_bytes)} of memory, more than this machine's "
                            f"{_gib(limit)} ({torch.device(device).type}); {fix}")


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2 ** 30:,.1f} GiB"


def check(condition: bool, message: str):
    """Config validation in __post_init__: raise ConfigError(message) unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def _coerce(value, hint, where: str):
    """Check a value against the field's declared type, converting what YAML leaves as text ('3e-4', '1e1').

    Integers must be whole (2.5 for a step count is an error, not a silent truncation); booleans are not numbers.
    """
    types = typing.get_args(hint) or (hint,)
    if value is None:
        if type(None) in types or hint is typing.Any:
            return None
        raise ConfigError(f"{where}: must not be null")
    if isinstance(value, bool):
        if bool in types:
            return value
        raise ConfigError(f"{where}: expected {_type_name(types)}, got {value!r}")
    if set(types) <= {bool, type(None)}:  # a plain switch: 'maybe' or 1 is not a silent true
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if int in types and float not in types:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                if str in types:  # e.g. `str | int` fields such as run.threads: auto | 2
                    return value
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if isinstance(number, float) and number.is_integer():
            return int(number)
        if isinstance(number, int):
            return number
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if float in types:
        if isinstance(value, (int, float)):
            return _finite(float(value), where) if not (int in types and isinstance(value, int)) else value
        if isinstance(value, str) and str not in types:
            try:
                return _finite(float(value), where)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if str in types and isinstance(value, str):
        return value
    if (list in types or typing.get_origin(hint) is list) and isinstance(value, (list, tuple)):
        return list(value)
    if dict in types and isinstance(value, dict):
        return value
    if str in types and isinstance(value, (int, float)) and len(types) == 1:
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if any(t in types for t in (int, float, str, list, dict)):
        raise ConfigError(f"{where}: expected {_type_name(types)}, got {value!r}")
    return value


def _finite(number: float, where: str) -> float:
    """No config number is meaningful as NaN or ±Inf (an infinite learning rate or σ passes a "> 0" check and fails
    later, unnamed), so every float field refuses them."""
    if not math.isfinite(number):
        raise ConfigError(f"{where} must be a finite number, got {number}")
    return number


def _type_name(types) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping", bool: "true/false"}
    return " or ".join(names[t] for t in types if t in names) or "a value"


def to_dict(cfg) -> dict:
    """A config as plain data (typed sections as their fields)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value):
    if hasattr(value, "model_dump"):  # a pydantic section
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_tagged(hint) -> bool:
    return isinstance(hint, type) and hasattr(hint, "parse_section") and hasattr(hint, "section_tag")


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
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
        _merge(data, loaded, "", cls)
    # a tag (method.name=sid) applies first, so method.alpha=1 method.name=sid keeps α whatever the order
    for item in sorted(overrides or [], key=lambda it: not _is_tag_override(cls, it)):
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.steps=100)")
        key, raw = item.split("=", 1)
        patch: dict = {}
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_dotted(patch, key.strip(), value)
        # section.key=value updates a mapping section key by key; section={...} replaces it whole
        _merge(data, patch, "", cls, merge_mappings="." in key)
    return _build(cls, data, "")


def _merge(base: dict, patch: dict, where: str, cls, merge_mappings: bool = False):
    """Patch ``base`` in place. A free-form mapping field (e.g. ``method``) is replaced by a file's section but
    updated key by key by command-line overrides (``method.divergence=fkl`` keeps ``method.name``)."""
    if not isinstance(patch, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {patch!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k, v in patch.items():
        if k not in fields:
            moved = MOVED.get(f"{where}.{k}")
            raise ConfigError(f"unknown config key {k!r} in {where or 'the top level'}"
                              f"{f' (it moved to {moved})' if moved else ''}; allowed keys: {sorted(fields)}")
        if _is_tagged(hints[k]) and merge_mappings and isinstance(v, dict) and isinstance(base.get(k), dict):
            tag = hints[k].section_tag
            # choosing another method (or σ kind) by its tag gives that choice's defaults, not the old one's options
            base[k] = _deep_update({tag: v[tag]} if tag in v and v[tag] != base[k].get(tag) else base[k], v)
        elif dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            _merge(base[k], v, f"{where}.{k}" if where else k, hints[k], merge_mappings)
        elif merge_mappings and isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _deep_update(base[k], v)
        else:
            base[k] = v


def _is_tag_override(cls, item: str) -> bool:
    *path, last = item.partition("=")[0].strip().split(".")
    for name in path:
        hint = typing.get_type_hints(cls).get(name) if dataclasses.is_dataclass(cls) else None
        if hint is None:
            return False
        cls = hint
    return bool(path) and _is_tagged(cls) and last == cls.section_tag


def _deep_update(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_config(cfg, path: Path):
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
