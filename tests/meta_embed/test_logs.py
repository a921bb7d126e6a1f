"""Log set-up: timestamps on every line, one JSON object per line in json format, the
project's INFO lines kept and third-party INFO and Beam's two idle warnings dropped unless
verbose."""

from __future__ import annotations

import json
import logging
import re

import pytest

from meta_embed.logs import OWN, LogConfig, configure


@pytest.fixture()
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in OWN}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def emit() -> None:
    logging.getLogger("serving.reload").info("serving snapshot s2")
    logging.getLogger("apache_beam.runners.worker.sdk_worker").info("Control channel established.")
    logging.warning("apitools not found, and bigquery client libraries are not available")
    logging.getLogger("apache_beam.runners.portability.local_job_service").warning(
        'Worker: severity: WARN message: "No semi_persistent_directory found: ..."'
    )
    logging.getLogger("apache_beam.io").warning("a real warning")


def test_text_lines_carry_a_timestamp_and_third_party_noise_is_dropped(restore_logging, capsys) -> None:
    configure()
    emit()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + " INFO serving.reload: serving snapshot s2", lines[0])
    assert re.fullmatch(stamp + " WARNING apache_beam.io: a real warning", lines[1])


def test_verbose_keeps_everything(restore_logging, capsys) -> None:
    configure(LogConfig(verbose=True))
    emit()
    assert len(capsys.readouterr().err.splitlines()) == 5


def test_json_format_is_one_object_per_line_with_access_fields(restore_logging, capsys) -> None:
    configure(LogConfig(level="info", format="json"))
    logging.getLogger("serving.reload").warning("rolled back to snapshot s1")
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/v1/score", "1.1", 200)
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first.keys() == {"ts", "level", "logger", "message"} and first["level"] == "warning"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["ts"])
    assert second["message"] == '127.0.0.1:5000 - "POST /v1/score HTTP/1.1" 200'
    assert (second["client"], second["method"], second["path"], second["status"]) == (
        "127.0.0.1:5000", "POST", "/v1/score", 200)  # fmt: skip


def test_a_bad_format_or_level_names_the_field() -> None:
    with pytest.raises(ValueError, match="LogConfig.format"):
        LogConfig(format="xml")
    with pytest.raises(ValueError, match="LogConfig.level"):
        LogConfig(level="loud")
