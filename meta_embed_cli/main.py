"""The `meta-embed` command line: parses arguments (and an optional TOML config whose
values the flags override) and dispatches to the stage functions.

Each stage module exposes `register(subparsers)`, which adds its sub-command with
`set_defaults(func=...)`; `func(args) -> int` runs it. Exit codes: 0 ok, 1 failure,
2 usage. Pipeline and serving never import each other; only this entry point
dispatches to both.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tomllib
from pathlib import Path
from typing import Any, Sequence

# Modules that contribute sub-commands, in the order `--help` lists them.
COMMAND_MODULES = (
    "meta_embed_cli.data_commands",
    "meta_embed_cli.train_commands",
    "meta_embed_cli.refresh_commands",
    "meta_embed_cli.serve_commands",
    "meta_embed_cli.evaluate_commands",
    "meta_embed_cli.ops_commands",
    "meta_embed_cli.demo",
)


class UsageError(Exception):
    """Bad arguments or config: exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meta-embed",
        description="Meta-learned user embeddings: train, refresh nightly on Beam, serve, evaluate.",
        epilog="Run `meta-embed COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--config", type=Path, help="TOML file; its [COMMAND] table sets defaults that flags override")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that stage is not part of this installation
                continue
            raise
        module.register(sub)
    return parser


def config_defaults(path: Path | None, command: Sequence[str]) -> dict[str, Any]:
    """The values for `command` (e.g. ["data", "prepare"]) from a TOML file.

    Keys use the flags' names with dashes or underscores: `[refresh] max-support = 50`,
    `[data.prepare] out = "data/ml-1m"`.
    """
    if path is None:
        return {}
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"--config {path}: cannot read it ({err})") from err
    table: Any = raw
    for part in command:
        table = table.get(part, {}) if isinstance(table, dict) else {}
    return {k.replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict)}


def _chosen(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The sub-command words in `argv` and the parser of the innermost one."""
    words: list[str] = []
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if token in subs[0].choices:
            words.append(token)
            parser = subs[0].choices[token]
    return words, parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse `argv`; with --config, the TOML table of the chosen command supplies defaults
    (so a flag required on the command line may come from the file instead)."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    config = pre.parse_known_args(argv)[0].config
    if config is not None:
        words, leaf = _chosen(parser, argv)
        defaults = config_defaults(config, words)
        actions = {a.dest: a for a in leaf._actions}
        unknown = sorted(set(defaults) - set(actions))
        if unknown:
            raise UsageError(f"--config {config}: unknown keys {unknown} for `{' '.join(words)}`")
        for dest in defaults:
            actions[dest].required = False
        leaf.set_defaults(**defaults)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"meta-embed: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    except (ValueError, OSError) as err:
        print(f"meta-embed: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
