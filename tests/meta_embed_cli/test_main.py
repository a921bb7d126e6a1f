"""The CLI entry point: TOML defaults that flags override, and exit codes that mean something."""

from __future__ import annotations

import argparse
import sys
import types

import pytest

from meta_embed_cli import main as cli


@pytest.fixture()
def fake_commands(monkeypatch):
    """One fake command module with a nested sub-command that records its arguments."""
    seen: dict = {}

    def run(args: argparse.Namespace) -> int:
        seen.update(vars(args))
        if args.fail == "value":
            raise ValueError("input.parquet: column 'ts' missing")
        return 0

    def register(sub) -> None:
        group = sub.add_parser("thing").add_subparsers(dest="thing_command", required=True)
        p = group.add_parser("make")
        p.add_argument("--out", required=True)
        p.add_argument("--max-support", type=int, default=50)
        p.add_argument("--fail", default="")
        p.set_defaults(func=run)

    module = types.ModuleType("fake_cli")
    module.register = register
    monkeypatch.setitem(sys.modules, "fake_cli", module)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("fake_cli",))
    return seen


def test_flags_override_config(tmp_path, fake_commands):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[thing.make]\nout = "from-file"\nmax-support = 7\n')
    assert cli.main(["--config", str(cfg), "thing", "make"]) == 0
    assert (fake_commands["out"], fake_commands["max_support"]) == ("from-file", 7)
    assert cli.main(["--config", str(cfg), "thing", "make", "--max-support", "9"]) == 0
    assert (fake_commands["out"], fake_commands["max_support"]) == ("from-file", 9)


def test_unknown_config_key_is_a_usage_error(tmp_path, fake_commands, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[thing.make]\nout = "x"\nmax_suport = 7\n')
    assert cli.main(["--config", str(cfg), "thing", "make"]) == 2
    assert "max_suport" in capsys.readouterr().err


def test_exit_codes(fake_commands, capsys):
    assert cli.main(["thing", "make"]) == 2  # --out missing
    assert cli.main(["thing", "make", "--out", "o", "--fail", "value"]) == 1
    assert "column 'ts' missing" in capsys.readouterr().err
    assert cli.main(["thing", "make", "--out", "o"]) == 0


def test_real_commands_have_help_with_examples(capsys):
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "data" in subs.choices
    for name, sub in subs.choices.items():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        leaves = list(nested[0].choices.values()) if nested else [sub]
        for leaf in leaves:
            assert leaf.epilog and "meta-embed" in leaf.epilog, f"`{leaf.prog}` --help has no example"
