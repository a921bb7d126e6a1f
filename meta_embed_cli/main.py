"""The `meta-embed` command: one Click group over the project's jobs.

Every command parses its flags into a config dataclass and calls a library function of
`pipeline` or `serving`; this package is the only one that imports both. Heavy imports
(torch, Beam, FAISS) happen inside the commands, so `--help` answers at once.

Exit codes: 0 ok, 1 failure (the message says what to fix), 2 usage (a bad flag, value
or `--config` entry, refused before any work).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from meta_embed import __version__
from meta_embed.logs import configure
from meta_embed_cli import config_file
from meta_embed_cli.data_commands import data
from meta_embed_cli.demo import demo
from meta_embed_cli.evaluate_commands import evaluate
from meta_embed_cli.options import add_verbose
from meta_embed_cli.refresh_commands import nightly, refresh, release, rollback, snapshots
from meta_embed_cli.serve_commands import index, serve
from meta_embed_cli.train_commands import evidence, train

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 110}


@click.group(
    context_settings=CONTEXT, epilog="Run `meta-embed COMMAND --help` for a command's flags and examples."
)
@click.version_option(__version__, "--version", prog_name="meta-embed", message="%(prog)s %(version)s")
@click.option(
    "--config",
    metavar="FILE.toml",
    expose_value=False,
    help="TOML file whose [COMMAND] tables ([refresh], [data.prepare], ...) set defaults that flags "
    "override; it may stand before or after the command",
)
def cli() -> None:
    """Meta-learned user embeddings: train, refresh nightly on Beam, serve, evaluate."""


for command in (
    data,
    train,
    evidence,
    refresh,
    nightly,
    release,
    rollback,
    snapshots,
    index,
    serve,
    evaluate,
    demo,
):
    cli.add_command(command)
add_verbose(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    configure()  # before Beam's import, which would otherwise configure the root logger itself
    try:
        args, path = config_file.pop_config(args)
        default_map = config_file.load(path, cli) if path else None
        code = cli.main(
            args,
            prog_name="meta-embed",
            standalone_mode=False,
            default_map=default_map,
            obj={"config": path, "verbose": False},
        )
        return int(code or 0)
    except click.exceptions.Exit as done:  # --help, --version
        return int(done.exit_code)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        print("meta-embed: aborted", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"meta-embed: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
