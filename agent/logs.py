"""Logging set-up, in one place: structlog, readable text on a terminal, JSON under systemd.

Messages are constant phrases; values go in fields. Every string value passes through
``agent.redact.redact_text`` on its way out, so a SAS signature or an account key that reaches
a log call by mistake is masked anyway.

structlog is imported on the first message that passes the level filter, not before: importing
it pulls in rich and pygments (structlog.dev), about a tenth of the CLI's start-up, and a task
that runs cleanly logs nothing at the default level. ``get_logger`` returns a small bound logger
that checks the level itself and hands enabled messages to structlog. Before ``configure`` is
called (library use, tests) every message goes to structlog as it is configured there.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from agent.redact import redact_text

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}

_settings: dict[str, Any] = {"level": None, "json": False, "pending": False}


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact_text(value)
    return event


def configure(*, json: bool = False, level: str = "warning") -> None:
    """Configure logging to stderr (stdout stays for results); structlog itself loads on first use."""
    if level.lower() not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")
    _settings.update(level=_LEVELS[level.lower()], json=json, pending=True)
    if "structlog" in sys.modules:  # already loaded by someone: configure it now
        _structlog()


def _structlog() -> Any:
    import structlog

    if _settings["pending"]:
        _settings["pending"] = False
        processors: list[Any] = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
        ]
        renderer: Any = structlog.processors.JSONRenderer() if _settings["json"] else \
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        structlog.configure(
            processors=[*processors, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(_settings["level"]),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=False,
        )
    return structlog


class Logger:
    """A bound logger that imports structlog only when a message is enabled."""

    __slots__ = ("_bound",)

    def __init__(self, bound: dict[str, Any]) -> None:
        self._bound = bound

    def bind(self, **more: Any) -> Logger:
        return Logger({**self._bound, **more})

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        threshold = _settings["level"]
        if threshold is not None and level < threshold:
            return
        logger = _structlog().get_logger("batch-agent").bind(**self._bound)
        getattr(logger, method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "exception", event, fields)


def get_logger(**bound: Any) -> Logger:
    return Logger(bound)
