"""The `meta-embed` entry point: `--config` TOML defaults that flags override (before or after
the command, checked against the command tree), exit codes that mean something, `--version`,
errors that name flags, and help with an example on every command."""

from __future__ import annotations

import click
import pytest

from meta_embed import __version__
from meta_embed_cli.main import cli, main


@pytest.fixture()
def root(tmp_path):
    return tmp_path / "snapshots"


def test_flags_override_the_config_file_before_or_after_the_command(tmp_path, root, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[snapshots]\nout = "{root}"\n')
    assert main(["--config", str(cfg), "snapshots"]) == 0
    assert f"{root}: no published snapshots" in capsys.readouterr().out
    assert main(["snapshots", "--config", str(cfg)]) == 0  # after the command too
    assert f"{root}: no published snapshots" in capsys.readouterr().out
    assert main(["snapshots", f"--config={cfg}", "--out", str(tmp_path / "other")]) == 0
    assert f"{tmp_path / 'other'}: no published snapshots" in capsys.readouterr().out


def test_a_nested_table_reaches_its_command(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data.synth]\nusers = 30\nitems = 12\nevents-per-user = 4\nout = "{tmp_path / "s"}"\n')
    assert main(["--config", str(cfg), "data", "synth", "--items", "15"]) == 0
    assert "30 users, 15 items" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[refresh]\nkep = 1\n", "[refresh] has no key 'kep'; did you mean 'keep'?"),
        ("[refesh]\nkeep = 1\n", "unknown table [refesh]; did you mean [refresh]?"),
        ('[data.prepar]\nout = "x"\n', "unknown table [data.prepar]; did you mean [data.prepare]?"),
        (
            '[serve]\nlog-level = "loud"\nroot = "r"\nitems = "i"\n',
            "[serve] log-level = 'loud': 'loud' is not one of",
        ),
        (
            '[train]\nepochs = "many"\ndata = "d"\nout = "o"\n',
            "[train] epochs = 'many': 'many' is not a valid integer",
        ),
        ("refresh = 3\n", "refresh = 3 must be a table [refresh]"),
        ("[refresh\n", "cannot read it"),
    ],
)
def test_a_bad_config_file_is_a_usage_error_naming_the_key(tmp_path, capsys, text, says):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    command = {"[serve]": ["serve"], "[train]": ["train"]}.get(
        text.split("\n")[0], ["snapshots", "--out", "x"]
    )
    assert main(["--config", str(cfg), *command]) == 2
    err = capsys.readouterr().err
    assert says in err and str(cfg) in err


def test_exit_codes(tmp_path, capsys):
    assert main(["rollback"]) == 2  # --out missing
    assert "Missing option '--out'" in capsys.readouterr().err
    assert main(["rollback", "--out", str(tmp_path)]) == 1  # nothing to roll back to: the job's error
    assert "meta-embed: error:" in capsys.readouterr().err
    assert main(["snapshots", "--out", str(tmp_path)]) == 0
    assert main(["no-such-command"]) == 2


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"meta-embed {__version__}"
    assert main(["--help"]) == 0
    assert "refresh" in capsys.readouterr().out


def test_validation_errors_name_the_flag_not_the_field(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "c"), "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--epochs must be > 0" in err and "TrainConfig" not in err
    assert main(["data", "prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--source" in err and "neither a known dataset" in err and "PrepareConfig" not in err


def _leaves(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_command_has_help_with_an_example(capsys):
    leaves = list(_leaves(cli))
    assert {"refresh", "serve", "train", "evaluate", "snapshots"} <= {p[-1] for p, _ in leaves}
    for path, command in leaves:
        assert command.epilog and "meta-embed " + " ".join(path) in command.epilog, f"{path}: no example"
        assert main([*path, "--help"]) == 0
        assert "examples:" in capsys.readouterr().out
