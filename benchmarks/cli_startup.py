"""How long `meta-embed --help` and every command's `--help` take, as whole processes (the
interpreter's start included): the command layer imports torch, Beam and FAISS only inside
the command that runs, so asking for help should not pay for them. Printed, not asserted.

    python benchmarks/cli_startup.py [--runs 5]

Last line: `summary slowest_help_median_s=<x> commands=<n>`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import click

from meta_embed_cli.main import cli


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the CLI, groups included (`data`, `data prepare`, ...)."""
    out = []
    for name, command in sorted(group.commands.items()):
        out.append((*path, name))
        if isinstance(command, click.Group):
            out += commands(command, (*path, name))
    return out


def timed(argv: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "meta_embed_cli", *argv], check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per command line")
    args = parser.parse_args()
    bare = timed(["--version"], args.runs)
    print(f"{'command line':<32} {'min s':>7} {'median s':>9} {'max s':>7}")
    print(f"{'meta-embed --version':<32} {min(bare):7.3f} {statistics.median(bare):9.3f} {max(bare):7.3f}")
    medians = []
    for path in [(), *commands(cli)]:
        seconds = timed([*path, "--help"], args.runs)
        medians.append(statistics.median(seconds))
        label = " ".join(["meta-embed", *path, "--help"])
        print(f"{label:<32} {min(seconds):7.3f} {medians[-1]:9.3f} {max(seconds):7.3f}")
    print(f"summary slowest_help_median_s={max(medians):.3f} commands={len(medians)}")


if __name__ == "__main__":
    main()
