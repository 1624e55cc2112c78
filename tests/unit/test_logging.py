"""
observability.logging.configure() in a process of its own (it owns the root logger and
stderr): podiam's events, exceptions and other libraries' stdlib records all come out in
the chosen format; in JSON every line is one object with an event, a level and a timestamp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from podiam.errors import ConfigError
from podiam.observability.logging import configure
from podiam.settings import LogSettings

# One life of log records: ours with fields and a traceback, and what aiohttp, botocore,
# lightkube's httpx and the warnings module emit through stdlib logging.
PROGRAM = """
import logging, sys, warnings
import structlog
from podiam.observability.logging import configure
from podiam.settings import LogSettings

configure(LogSettings(format=sys.argv[1], level="info"))
log = structlog.stdlib.get_logger("podiam.test")
log.info("watch listed", resource="pod", objects=3)
log.debug("not shown at info", resource="pod")
try:
    raise ValueError("broken object")
except ValueError:
    log.exception("unexpected error from the assumer", role_arn="arn:aws:iam::1:role/r")
try:
    raise ConnectionResetError("peer went away")
except ConnectionResetError:
    logging.getLogger("aiohttp.server").exception("Error handling request from %s", "10.0.0.7")
logging.getLogger("botocore.credentials").warning("Refreshing temporary credentials failed: %s", "timeout")
logging.getLogger("httpx2").info("HTTP Request: GET %s", "https://api/pods")
warnings.warn("an old API", DeprecationWarning, stacklevel=1)
"""


def run(log_format: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", PROGRAM, log_format],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert done.stdout == ""  # logs go to stderr only; stdout may carry the audit log
    return done.stderr.splitlines()


def test_json_lines_are_objects_with_event_level_timestamp_and_fields() -> None:
    lines = run("json")
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]  # a line that is not JSON fails here
    assert all(isinstance(r, dict) for r in records)
    for r in records:
        assert {"event", "level", "timestamp", "logger"} <= r.keys(), r
    by_event = {r["event"]: r for r in records if r["logger"] != "py.warnings"}
    assert set(by_event) == {
        "watch listed", "unexpected error from the assumer", "Error handling request from 10.0.0.7",
        "Refreshing temporary credentials failed: timeout",
    }  # not the debug line, nor httpx2's info (quietened to warning)
    listed = by_event["watch listed"]
    assert (listed["level"], listed["logger"], listed["resource"], listed["objects"]) == ("info", "podiam.test",
                                                                                          "pod", 3)
    assert listed["timestamp"].endswith("Z")
    failed = by_event["unexpected error from the assumer"]
    assert (failed["level"], failed["role_arn"]) == ("error", "arn:aws:iam::1:role/r")
    assert "ValueError: broken object" in failed["exception"]
    aiohttp = by_event["Error handling request from 10.0.0.7"]
    assert (aiohttp["level"], aiohttp["logger"]) == ("error", "aiohttp.server")
    assert "ConnectionResetError: peer went away" in aiohttp["exception"]
    botocore = by_event["Refreshing temporary credentials failed: timeout"]
    assert (botocore["level"], botocore["logger"]) == ("warning", "botocore.credentials")
    [warned] = [r for r in records if r["logger"] == "py.warnings"]
    assert warned["level"] == "warning" and "DeprecationWarning: an old API" in warned["event"]


def test_text_lines_carry_the_event_and_its_fields_as_key_values() -> None:
    lines = run("text")
    text = "\n".join(lines)
    assert not any(line.startswith("{") for line in lines)
    [listed] = [line for line in lines if "watch listed" in line]
    assert "[info     ]" in listed and "resource=pod" in listed and "objects=3" in listed
    assert "role_arn=arn:aws:iam::1:role/r" in text and "ValueError: broken object" in text
    assert "Error handling request from 10.0.0.7" in text and "ConnectionResetError: peer went away" in text
    assert "Refreshing temporary credentials failed: timeout" in text
    assert "DeprecationWarning: an old API" in text
    assert "not shown at info" not in text and "HTTP Request" not in text


@pytest.mark.parametrize(("settings", "message"), [
    (LogSettings(format="xml"), "log format 'xml' is not 'text' or 'json'"),
    (LogSettings(level="verbose"), "log level 'verbose' is not one of debug, info, warning, error"),
])
def test_a_bad_format_or_level_is_a_configuration_error(settings: LogSettings, message: str) -> None:
    # Checked before anything is changed: this process's logging stays as it was.
    with pytest.raises(ConfigError, match=message):
        configure(settings)
