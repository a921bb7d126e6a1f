"""`--config FILE.toml`: defaults for the commands' flags, one table per command.

    [refresh]                 # meta-embed refresh
    keep = 7
    max-support = 50          # a flag's name, with dashes or underscores
    [data.prepare]            # meta-embed data prepare
    out = "data/ml-1m"

Flags given on the command line override the file. The file is checked against the
command tree before anything runs: an unknown table or key is a usage error naming it;
a value is checked by the flag's own type when the command parses (`options.Option`).
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

import click


def pop_config(args: list[str]) -> tuple[list[str], str | None]:
    """`args` without `--config FILE` (or `--config=FILE`), wherever it stands before `--`,
    and the file named."""
    out, path, i = [], None, 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        if arg == "--config":
            if i + 1 >= len(args):
                raise click.UsageError("Option '--config' requires an argument (a TOML file).")
            path, i = args[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    return out, path


def load(path: str, root: click.Group) -> dict[str, Any]:
    """The file as Click's `default_map` for `root`'s commands, after checking every table
    and key against them."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise click.UsageError(f"--config {path}: cannot read it ({err})") from None
    return _check(raw, root, path, [])


def _check(table: dict[str, Any], command: click.Command, path: str, where: list[str]) -> dict[str, Any]:
    name = ".".join(where)
    if isinstance(command, click.Group):
        out = {}
        for key, value in table.items():
            sub = command.commands.get(key)
            if sub is not None and not isinstance(value, dict):
                raise click.UsageError(
                    f"--config {path}: {'.'.join([*where, key])} = {value!r} must be a table "
                    f"[{'.'.join([*where, key])}] of the command's flags"
                )
            if sub is None:
                known = sorted(command.commands)
                hint = difflib.get_close_matches(key, known, n=1)
                raise click.UsageError(
                    f"--config {path}: unknown table [{'.'.join([*where, key])}]"
                    + (f"; did you mean [{'.'.join([*where, hint[0]])}]?" if hint else "")
                    + f" Tables here are the commands: {', '.join(known)}"
                )
            out[key] = _check(value, sub, path, [*where, key])
        return out
    params = {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}
    out = {}
    for key, value in table.items():
        field = key.replace("-", "_")
        if field not in params or isinstance(value, dict):
            hint = difflib.get_close_matches(field, list(params), n=1)
            raise click.UsageError(
                f"--config {path}: [{name}] has no key {key!r}"
                + (f"; did you mean {hint[0].replace('_', '-')!r}?" if hint else "")
                + f" Keys are the flags of `meta-embed {' '.join(where)}`: "
                + ", ".join(sorted(p.replace("_", "-") for p in params if p != "help"))
            )
        out[field] = value
    return out
