"""Entry point of the local runner's worker processes: Beam's SDK harness
(`apache_beam.runners.worker.sdk_worker_main`) started with this project's log set-up.

Started by `runners.LocalRunner`, with `--log-level` the level of the launcher's root
logger: a worker's start-up and shut-down INFO lines (18 per worker process) reach the
output only when the launcher shows third-party INFO lines (`--verbose`). Warnings and
errors always do.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from meta_embed.logs import LogConfig, configure


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="beam_worker")
    parser.add_argument("--log-level", choices=["INFO", "WARNING"], default="WARNING")
    level = parser.parse_args(argv).log_level
    configure(LogConfig(verbose=level == "INFO"))  # before Beam's import, as in the launcher
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # the harness sets the root logger to INFO: the threshold stays here
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
