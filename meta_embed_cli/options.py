"""Click building blocks shared by the commands.

- `option`: a flag whose bad value from the `--config` file names the file, table and key.
- `config_options`: the flags of a config dataclass, read from its fields (`flag_specs`):
  name, help, type and default are written once, in the dataclass.
- `build`: a config from flag values; its validation errors name the flags, not fields.
- `BeamCommand`: a command whose unknown flags are Beam pipeline options, passed through;
  a flag that neither the command nor Beam knows is a usage error before any work.
- `examples`: an epilog of example command lines that Click prints as written.
- `add_verbose`: `--verbose` on a command and every subcommand (third-party logs back on).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import click
from click.core import ParameterSource

from meta_embed.flags import flag_specs, parse_time


class Option(click.Option):
    """A click.Option whose value from the `--config` file, when invalid, is reported with the
    file, the table and the key it came from."""

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as err:
            if ctx.get_parameter_source(self.name) is not ParameterSource.DEFAULT_MAP:
                raise
            table = ".".join(ctx.command_path.split()[1:])
            source = (ctx.find_root().obj or {}).get("config")
            where = f"--config {source}: [{table}] {self.name.replace('_', '-')}"
            raise click.UsageError(f"{where} = {value!r}: {err.message}", ctx) from None


option = functools.partial(click.option, cls=Option)


class Parsed(click.ParamType):
    """A parameter type from a parse function whose ValueError says what is wrong."""

    def __init__(self, parse: Callable[[str], Any], name: str):
        self.parse, self.name = parse, name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


TIME = Parsed(parse_time, "TIME")
_TYPES: dict[Any, click.ParamType] = {str: click.STRING, int: click.INT, float: click.FLOAT, parse_time: TIME}


def config_options(cls: type, *, skip: Iterable[str] = (), optional: Iterable[str] = ()) -> Callable:
    """Decorator: one option per flag field of the config dataclass `cls` (see
    `meta_embed.flags.flag_specs`), except `skip`; fields in `optional` are not required."""
    skip, optional = set(skip), set(optional)

    def decorate(f: Callable) -> Callable:
        for spec in reversed([s for s in flag_specs(cls) if s.field not in skip]):
            if spec.parse is None:  # a switch; one that is on by default gets its --no- form
                flag = f"{spec.flag}/--no-{spec.flag[2:]}" if spec.default else spec.flag
                f = option(
                    flag,
                    spec.field,
                    is_flag=True,
                    default=spec.default,
                    show_default=spec.default,
                    help=spec.help,
                )(f)
                continue
            kind = click.Choice(spec.choices) if spec.choices else _TYPES[spec.parse]
            f = option(
                spec.flag,
                spec.field,
                type=kind,
                default=spec.default,
                required=spec.required and spec.field not in optional,
                show_default=spec.default is not None,
                help=spec.help,
            )(f)
        return f

    return decorate


def build(cls: type, flags: dict[str, str] | None = None, **values: Any) -> Any:
    """`cls(**values)`, with a validation error reworded to name the flags (`--batch-size`),
    not the fields (`RefreshConfig.batch_size`); `flags` maps fields whose flag is named
    otherwise. A bad value is a usage error (exit 2)."""
    try:
        return cls(**values)
    except ValueError as err:
        message = str(err)
        names = sorted((f.name for f in dataclasses.fields(cls)), key=len, reverse=True)
        for name in names:
            flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
            message = message.replace(f"{cls.__name__}.{name}", flag)
        raise click.UsageError(message) from None


class BeamCommand(click.Command):
    """A command whose unknown flags are Beam pipeline options, handed to the callback as
    `ctx.args` (`--runner=DataflowRunner --project=...`). A flag that neither this command
    nor any registered Beam option takes is refused with the nearest flags suggested."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["context_settings"] = {
            **kwargs.get("context_settings", {}),
            "ignore_unknown_options": True,
            "allow_extra_args": True,
        }
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        if ctx.args:
            from pipeline.refresh.runners import beam_flags, unknown_options

            unknown = unknown_options(ctx.args)
            if unknown and unknown[0].startswith("-"):
                own = [o for p in self.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
                near = difflib.get_close_matches(unknown[0].split("=")[0], own + beam_flags(), n=3)
                raise click.NoSuchOption(unknown[0], possibilities=near, ctx=ctx)
            if unknown:
                raise click.UsageError(f"Got unexpected extra argument ({unknown[0]})", ctx)
        return rest


def examples(*lines: str) -> str:
    """An epilog of example command lines (Click keeps a paragraph after \\b as written)."""
    return "\b\nexamples:\n" + "\n".join(f"  {line}" for line in lines)


def _verbose(ctx: click.Context, _: click.Parameter, on: bool) -> None:
    if on:
        from meta_embed.logs import LogConfig, configure

        ctx.find_root().ensure_object(dict)["verbose"] = True
        configure(LogConfig(verbose=True))


def verbose(ctx: click.Context) -> bool:
    """Whether `--verbose` was given on the command line (before or after the command)."""
    return bool((ctx.find_root().obj or {}).get("verbose"))


def add_verbose(command: click.Command) -> None:
    """Give `command` and its subcommands a `--verbose` flag: Beam's worker INFO lines and
    other third-party logs, which `meta_embed.logs` drops by default, are shown."""
    command.params.append(
        click.Option(
            ["--verbose", "-v"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_verbose,
            help="show third-party logs too (Beam's workers, ...)",
        )
    )
    for sub in getattr(command, "commands", {}).values():
        add_verbose(sub)
