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
          "aiohttp.access": logging.WARNING}


def configure(settings: LogSettings) -> None:
    try:
        level = LEVELS[settings.level.lower()]
    except KeyError:
        raise ConfigError(f"log level {settings.level!r} is not one of {', '.join(LEVELS)}") from None
    if settings.format not in ("text", "json"):
        raise ConfigError(f"log format {settings.format!r} is not 'text' or 'json'")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
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
