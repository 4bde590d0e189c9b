"""structlog set-up: JSON in production, console in development, secrets redacted everywhere.

Our own loggers and the standard-library ones (uvicorn, asyncpg) share one processor chain, so the
redaction applies to every line the process writes. Personal data (customer emails, names,
metadata, request bodies) is kept out at the source: our lines never carry it, and the HTTP and
Stripe client libraries, whose debug output holds whole requests and responses, are held at
warnings whatever the level.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import orjson
import structlog
from structlog.contextvars import STRUCTLOG_KEY_PREFIX
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"

# Fields that hold a secret whatever their value.
_SECRET_KEY_NAMES = re.compile(
    r"authorization|api[_-]?key|secret|password|passwd|signature|cookie|credential",
    re.IGNORECASE,
)
# Fields named after tokens hold one only when their value is text (`customer_tokens=3` is a count).
_TOKEN_KEY_NAMES = re.compile(r"token", re.IGNORECASE)
_SECRET_VALUES = re.compile(
    r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]+"  # Stripe API keys
    r"|whsec_[A-Za-z0-9+/=]+"  # Stripe webhook signing secrets
    r"|bsk_[A-Za-z0-9_-]+"  # our API keys
    r"|bct_[A-Za-z0-9_-]+"  # our customer tokens
    r"|\b(?:pi|seti|src|cs)_[A-Za-z0-9_]+?_secret_[A-Za-z0-9]+"  # Stripe client secrets
    r"|(?i:bearer)\s+[^\s\"',]+"  # any bearer credential
    r"|postgres(?:ql)?://[^\s\"']*:[^\s\"'@]*@",  # database URLs with a password
)


# Libraries whose info and debug lines carry request and response bodies, headers or URLs with
# customer data (the Stripe SDK logs every parameter it sends and every response at debug;
# uvicorn's ASGI message log holds request bodies). They only ever log warnings and errors.
QUIET_LOGGERS = ("stripe", "httpx", "httpcore", "hpack", "h2", "h11", "uvicorn.asgi")


# Every secret pattern above contains one of these; most strings contain none, and skip the regex.
_SECRET_MARKERS = ("_live_", "_test_", "whsec_", "bsk_", "bct_", "_secret_", "bearer", "://")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.lower()
        for marker in _SECRET_MARKERS:  # a plain loop: a generator costs more than the tests
            if marker in lowered:
                return _SECRET_VALUES.sub(REDACTED, value)
        return value
    if isinstance(value, Mapping):
        return {key: _redact_item(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


_SECRET_NAME, _TOKEN_NAME, _PLAIN_NAME = range(3)


@functools.lru_cache(maxsize=1024)
def _name_kind(key: str) -> int:
    """What a field's name says about its value (cached: the same names recur on every line)."""
    if _SECRET_KEY_NAMES.search(key):
        return _SECRET_NAME
    if _TOKEN_KEY_NAMES.search(key):
        return _TOKEN_NAME
    return _PLAIN_NAME


def _redact_item(key: str, value: Any) -> Any:
    if value is None:
        return value
    kind = _name_kind(key)
    if kind == _SECRET_NAME:
        return REDACTED
    if kind == _TOKEN_NAME and isinstance(value, str | bytes):
        return REDACTED
    return _redact_value(value)


def redact(value: Any) -> Any:
    """`value` (text, or JSON-like data at any depth) masked as log lines are: for showing
    stored data to an operator, such as a Stripe event's payload in the console."""
    return _redact_value(value)


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask secret fields, text under token fields, and secret-looking strings anywhere in a
    line; numbers and flags under token-like names (counts of tokens) stay readable."""
    return {key: _redact_item(key, value) for key, value in event_dict.items()}


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


def _json_line(event_dict: EventDict, **_kwargs: Any) -> str:
    return orjson.dumps(event_dict, default=str).decode()


_http_logger = structlog.get_logger("billing_service.http")


def _request_line_through_structlog(
    method: str, path: str, route: str, status: int, seconds: float
) -> None:
    _http_logger.info(
        "http.request",
        method=method,
        path=path,
        route=route,
        status=status,
        duration_ms=round(seconds * 1000, 2),
    )


_PREFIX_LENGTH = len(STRUCTLOG_KEY_PREFIX)
_second: list[object] = [None, ""]  # the last whole second formatted, and its text


def _timestamp() -> str:
    """Now, as structlog's `TimeStamper(fmt="iso", utc=True)` writes it, formatting the date and
    time of day once a second rather than on every line."""
    now = time.time()
    second = int(now)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    micros = int((now - second) * 1_000_000)
    return f"{_second[1]}.{micros:06d}Z" if micros else f"{_second[1]}Z"


def _direct_request_line(stream: TextIO) -> Callable[[str, str, str, int, float], None]:
    """The summary line as JSON, written straight to `stream`: the same fields, order and
    redaction the processor chain gives it, at a fraction of the cost (it is on every request).

    Only the request's own fields are known to be safe (the method, our route template, numbers):
    the path and whatever is bound to the context are redacted like any other value."""
    write, flush = stream.write, stream.flush

    def request_line(method: str, path: str, route: str, status: int, seconds: float) -> None:
        line: dict[str, Any] = {
            "event": "http.request",
            "method": method,
            "path": _redact_value(path),
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        for var, value in contextvars.copy_context().items():  # as merge_contextvars reads it
            if value is not Ellipsis and var.name.startswith(STRUCTLOG_KEY_PREFIX):
                key = var.name[_PREFIX_LENGTH:]
                if key not in line:
                    line[key] = _redact_item(key, value)
        line["level"] = "info"
        line["timestamp"] = _timestamp()
        write(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE).decode())
        flush()

    return request_line


def _no_request_line(method: str, path: str, route: str, status: int, seconds: float) -> None:
    """The level drops info lines: nothing to format."""


class _RequestLines:
    """Where summary lines go, chosen by `configure_logging`."""

    write: Callable[[str, str, str, int, float], None] = _request_line_through_structlog


_request_lines = _RequestLines()


def request_line(method: str, path: str, route: str, status: int, seconds: float) -> None:
    """Log the one `http.request` summary line of a request (the middleware calls this)."""
    _request_lines.write(method, path, route, status, seconds)


def configure_logging(
    level: str = "info",
    log_format: str = "console",
    stream: TextIO | None = None,
    *,
    cache_loggers: bool = False,
) -> None:
    """Our loggers write straight to `stream` (stdout); standard logging (uvicorn, asyncpg)
    is formatted by the same processors, so every line has one shape and one redaction.

    Our own lines skip the standard library entirely: the per-request summary line is on the
    hot path. Serving processes cache their loggers (`cache_loggers`); tests, which reconfigure
    logging to capture it, do not.
    """
    renderer: Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    output = stream or sys.stdout
    numeric_level = logging.getLevelName(level.upper())
    if numeric_level > logging.INFO:
        _request_lines.write = _no_request_line
    elif log_format == "json":
        _request_lines.write = _direct_request_line(output)
    else:
        _request_lines.write = _request_line_through_structlog
    structlog.configure(
        processors=[*_shared_processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(file=output),
        cache_logger_on_first_use=cache_loggers,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    # One summary line per request comes from our middleware; uvicorn's own would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))
