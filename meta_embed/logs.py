"""Log set-up for the command line and the server processes.

One handler on the root logger, on stderr, configured before Apache Beam is imported
(Beam's import logs a warning through the root logger, which would otherwise install
its own handler first and swallow every later configuration). The project's loggers
(`meta_embed`, `pipeline`, `serving`) and uvicorn's log at `level`; everything else at
WARNING; `verbose` lowers them to INFO. Unless `verbose`, two Beam warnings that ask
nothing of the user are dropped: "apitools not found" (the BigQuery client it names is not
used here) and a worker's "No semi_persistent_directory found". The local runner's worker
processes configure their logging the same way (`pipeline.refresh.beam_worker`), so their
start-up and shut-down INFO lines (36 for one refresh) show only with `verbose`.

`fmt="json"` writes one JSON object per line: ts (UTC, ISO 8601), level, logger, message,
and for uvicorn's access log also client, method, path and status.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sys
from typing import Any

OWN = ("meta_embed", "meta_embed_cli", "pipeline", "serving", "uvicorn", "uvicorn.error", "uvicorn.access")
FORMATS = ("text", "json")
NOISE = ("apitools not found", "No semi_persistent_directory found")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # the project's and uvicorn's loggers; third-party ones log warnings and up
    format: str = "text"  # text | json
    verbose: bool = False  # keep the third-party noise this module drops by default

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"LogConfig.format must be one of {FORMATS}, got {self.format!r}")
        if self.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"LogConfig.level must be debug, info, warning or error, got {self.level!r}")


class QuietThirdParty(logging.Filter):
    """Drops the third-party warnings in `NOISE` (see the module doc), from any logger: Beam's
    local runner relays a worker's warnings through its own logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(phrase in message for phrase in NOISE)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; uvicorn's access records also as fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            entry.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(cfg: LogConfig = LogConfig()) -> None:
    """(Re)configure logging for this process; safe to call more than once."""
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not cfg.verbose:
        handler.addFilter(QuietThirdParty())
    logging.basicConfig(
        level=logging.INFO if cfg.verbose else logging.WARNING, handlers=[handler], force=True
    )
    for name in OWN:
        logger = logging.getLogger(name)
        logger.setLevel(cfg.level.upper())
        logger.handlers.clear()  # uvicorn's own handlers, if it configured itself: ours at the root
        logger.propagate = True
