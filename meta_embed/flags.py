"""Command-line flags described on config dataclass fields: `flag(help)` as a field's
metadata makes the field a flag, `flag_specs(cls)` lists them (name, parser, default,
help, choices) for the command layer to turn into options; `parse_time` reads ISO-8601
times. Light: the job configs and the command layer import it without torch or Beam."""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from collections.abc import Callable, Iterator
from typing import Any


def flag(help: str, **extra: Any) -> dict[str, Any]:
    """Field metadata that makes a config field a command-line flag (see `flag_specs`)."""
    return {"help": help, **extra}


def parse_time(text: str) -> dt.datetime:
    """ISO-8601 time (`2024-06-01T00:00:00Z`); without a zone it is taken as UTC."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"{text!r} is not an ISO-8601 time like 2024-06-01T00:00:00Z") from err
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """One command-line flag of a config field: `--name VALUE`; for a bool, a switch `--name`
    that turns it on, with `--no-name` to turn off one that is on by default."""

    field: str
    flag: str
    parse: Callable[[str], Any] | None  # None: a bool switch
    default: Any
    required: bool
    help: str
    choices: tuple[str, ...] | None = None


def flag_specs(cls: type) -> Iterator[FlagSpec]:
    """The flags of every field of a config dataclass whose metadata has a `help`."""
    hints = typing.get_type_hints(cls)
    parsers: dict[Any, Callable[[str], Any]] = {str: str, int: int, float: float, dt.datetime: parse_time}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if args else kind
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        name = f.name.replace("_", "-")
        if kind is bool:
            yield FlagSpec(f.name, f"--{name}", None, default, False, f.metadata["help"])
        else:
            yield FlagSpec(
                f.name,
                f"--{name}",
                parsers[kind],
                default,
                required,
                f.metadata["help"],
                f.metadata.get("choices"),
            )
