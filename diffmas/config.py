"""Typed configuration: dataclasses that load from YAML and from the command line.

A config class is a plain dataclass whose fields carry a ``help`` string in their metadata. The
same class gives the argparse options of a subcommand and the keys accepted in YAML; values from
YAML act as defaults that explicit command-line flags override.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffmas.errors import DiffMASError

T = TypeVar("T")


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (shown by ``--help``)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def redefault(cls: type, name: str, default: Any, help: str | None = None) -> Any:
    """The option ``name`` of dataclass ``cls`` with another default (and optionally another help),
    for a config that shares the option but not its default: the option is still declared once."""
    base = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if base is None:
        raise TypeError(f"{cls.__name__} has no option {name!r}")
    meta = dict(base.metadata)
    return option(default, help or meta.pop("help"), **{k: v for k, v in meta.items() if k != "help"})


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X | None`` annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise DiffMASError(f"{where}: unknown key {key!r}{hint}")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    inner, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise DiffMASError(f"{name}: a value is required")
    if inner is bool and isinstance(value, str):
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise DiffMASError(f"{name}: expected true or false, got {value!r}")
    if inner in (int, float, str):
        try:
            return inner(value)
        except (TypeError, ValueError):
            raise DiffMASError(f"{name}: expected {inner.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
    _check_keys(cls, data, where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DiffMASError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DiffMASError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DiffMASError(f"config {path} must be a mapping of key: value")
    return data


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field. Defaults are left unset (None) so that we can tell
    which flags the user gave explicitly and let them override YAML values."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        inner, _ = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if "shown_default" in f.metadata:  # a default computed later, e.g. an output directory named after the run
            default = getattr(cls, f.metadata["shown_default"]).replace("{", "<").replace("}", ">")
        help_ = f.metadata.get("help", "")
        if default is not None and "default" not in help_:  # a help text may say it better itself
            help_ += f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if inner is bool:
            action = parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            action.help = help_  # BooleanOptionalAction adds "(default: None)": the unset marker, not the default
        elif typing.get_origin(inner) is list:
            parser.add_argument(flag, nargs="+", **kw)
        else:
            parser.add_argument(flag, type=inner if inner in (int, float) else str, **kw)


def from_args(cls: type[T], ns: argparse.Namespace, yaml_path: str | None = None) -> T:
    """Merge YAML (if any) and explicitly given flags into a ``cls`` instance."""
    data: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
    if yaml_path:
        _check_keys(cls, data, str(yaml_path))
    for f in dataclasses.fields(cls):
        value = getattr(ns, f.name, None)
        if value is not None:
            data[f.name] = value
    return from_dict(cls, data, where=str(yaml_path or "arguments"))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
