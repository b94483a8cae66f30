"""Typed configs: frozen dataclasses parsed by tyro, optionally pre-filled from YAML.

A command's dataclass is the single source of its options; its field docstrings are the
`--help`. `--config FILE.yaml` fills fields before the command line overrides them. A YAML key
may be spelled as the flag (`max-steps: 100`) or as the field (`max_steps: 100`); a nested
group's options go under its name (`ppo: {cost-limit: 25}`) or in one dotted key
(`ppo.cost-limit: 25`). PyYAML reads `1e-4` (no decimal point) as text, so a number field takes
text that reads as a number. An unknown key is refused with the closest option named.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from alignloop.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or option that cannot be used, with where and why."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is typing.Annotated:
        return _coerce(value, get_args(tp)[0], where)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {type(value).__name__}")
        return from_mapping(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value, strict=True))
            )
        inner = args[0] if args else Any
        return origin(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {type(value).__name__}")
        return Path(value)
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no point) as text
            try:
                return float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _renamed(hints: dict[str, Any]) -> dict[str, str]:
    """Fields whose flag tyro names otherwise (``tyro.conf.arg(name="output-dir")``): flag -> field."""
    out = {}
    for name, tp in hints.items():
        for meta in get_args(tp)[1:] if get_origin(tp) is typing.Annotated else ():
            flag = getattr(meta, "name", None)
            if isinstance(flag, str):
                out[flag.replace("-", "_")] = name
    return out


def _by_field(
    data: dict[Any, Any], names: set[str], where: str, renamed: dict[str, str] | None = None
) -> dict[str, Any]:
    """`data` keyed by field name: `max-steps` and `max_steps` both mean `max_steps`, a field's
    own flag name (`renamed`) means it too, and a dotted key (`ppo.cost-limit`) goes into its
    group. Unknown keys are refused, with the closest option."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        head, dot, rest = str(key).partition(".")
        name = head.replace("-", "_")
        name = (renamed or {}).get(name, name)
        if name not in names:
            match = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f"; did you mean {_flag(match[0])}?" if match else ""
            allowed = ", ".join(sorted(_flag(n) for n in names))
            raise ConfigError(f"{where}: unknown option {key!r}{hint} (the options: {allowed})")
        if dot:
            value = {rest: value}
            if isinstance(out.get(name), dict):
                value = {**out[name], **value}
        elif name in out and not (isinstance(out[name], dict) and isinstance(value, dict)):
            raise ConfigError(f"{where}: option {_flag(name)} is given twice")
        elif isinstance(out.get(name), dict):
            value = {**out[name], **value}
        out[name] = value
    return out


def from_mapping(cls: type[T], data: dict[str, Any], where: str = "config", base: T | None = None) -> T:
    """Build `cls` from a mapping, checking every key and value; unknown keys are errors."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = _by_field(data, set(fields), where, _renamed(hints))
    if base is None:  # fields without a default stay required (tyro asks for them on the command line)
        import tyro

        base = cls(**{name: tyro.MISSING for name, f in fields.items() if _required(f)})
    values = {}
    for key, value in data.items():
        current = getattr(base, key)
        tp = hints[key]
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            values[key] = from_mapping(type(current), value, f"{where}.{key}", current)
        else:
            values[key] = _coerce(value, tp, f"{where}.{key}")
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def load_yaml(cls: type[T], path: Path) -> T:
    """Read a YAML file into `cls`; errors name the file and the offending key."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level")
    upgrade = getattr(cls, "upgrade_mapping", None)  # a command's deprecated option names
    if upgrade is not None:
        data = upgrade(data, str(path))
    return from_mapping(cls, data, str(path))


CONFIG_HELP = (
    "YAML file of options to start from; the options given here win. Keys as the options are "
    "named (max-steps: 100, or max_steps), a group's under its name (ppo: {cost-limit: 25}) or "
    "dotted (ppo.cost-limit: 25)."
)


@functools.cache
def _with_config_option(cls: type) -> type:
    """`cls` plus a `--config` field, only so that `--help` lists it with the other options
    (`parse` reads `--config` itself, before tyro sees the rest)."""
    import tyro

    option = typing.Annotated[Path | None, tyro.conf.arg(help=CONFIG_HELP, metavar="FILE.yaml")]
    return dataclasses.make_dataclass(
        cls.__name__, [("config", option, dataclasses.field(default=None))], bases=(cls,), frozen=True
    )


def parse(cls: type[T], args: list[str], prog: str, description: str | None = None) -> T:
    """Parse `args` into `cls` with tyro; `--config FILE.yaml` pre-fills the defaults."""
    import tyro

    upgrade = getattr(cls, "upgrade_args", None)  # a command's deprecated spellings of options
    if upgrade is not None:
        args = upgrade(list(args), prog)
    default: T | None = None
    config: Path | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if arg == "--config":
                if i + 1 >= len(args):
                    raise ConfigError("--config needs a file path")
                value = args[i + 1]
                i += 2
            else:
                value = arg.split("=", 1)[1]
                i += 1
            config = Path(value)
            default = load_yaml(cls, config)
            continue
        rest.append(arg)
        i += 1
    if "-h" in rest or "--help" in rest:
        shown: Any = _with_config_option(cls)  # type: ignore[arg-type]
        base = None
        if default is not None:
            values = {f.name: getattr(default, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            base = shown(**values, config=config)
        tyro.cli(shown, args=rest, prog=prog, default=base, description=description)
    if default is None:
        return tyro.cli(cls, args=rest, prog=prog, description=description)
    return tyro.cli(cls, args=rest, prog=prog, default=default, description=description)
