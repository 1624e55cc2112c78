"""
Logging: structlog for podiam's own records, rendered through stdlib logging so that
aiohttp's, botocore's and lightkube's records come out in the same format (text or JSON).
"""

from __future__ import annotations

import logging
import sys

import structlog

from podiam.errors import ConfigError
from podiam.settings import LogSettings

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Libraries that are chatty at INFO about things an operator does not act on.
_QUIET = {"botocore": logging.WARNING, "aiobotocore": logging.WARNING, "httpx": logging.WARNING,
          "httpx2": logging.WARNING,  # lightkube 1.x's client logs every API call at info
          # ...and its transport traces every connection and request phase at debug, which
          # would bury podiam's own per-request lines at --log-level debug.
          "httpcore": logging.WARNING, "httpcore2": logging.WARNING,
          "aiohttp.access": logging.WARNING}


def shared_processors() -> list[structlog.types.Processor]:
    """What every record gets, podiam's and third-party ones alike, before it is rendered."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def route_through_stdlib() -> None:
    """Make podiam's structlog events stdlib records that carry their event dict.

    configure() does this before adding its handler; the test suite does it alone, so that
    pytest's caplog sees podiam's events with their fields rather than rendered strings.
    """
    structlog.configure(
        processors=[*shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure(settings: LogSettings) -> None:
    try:
        level = LEVELS[settings.level.lower()]
    except KeyError:
        raise ConfigError(f"log level {settings.level!r} is not one of {', '.join(LEVELS)}") from None
    if settings.format not in ("text", "json"):
        raise ConfigError(f"log format {settings.format!r} is not 'text' or 'json'")
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    route_through_stdlib()
    handler = logging.StreamHandler(sys.stderr)
    # Records from other libraries (aiohttp, botocore, lightkube's httpx) come in as stdlib
    # records: the pre-chain gives them the same level, logger and timestamp keys, so that
    # in JSON mode every line on stderr is one object with an event.
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quiet_level in _QUIET.items():
        logging.getLogger(name).setLevel(max(level, quiet_level))
    # Python's warnings module writes plain text to stderr: a library's DeprecationWarning
    # would be a line that is not JSON. As records of "py.warnings" they are rendered too.
    logging.captureWarnings(True)
