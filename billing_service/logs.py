"""structlog set-up: JSON in production, console in development, secrets redacted everywhere.

Our own loggers and the standard-library ones (uvicorn, asyncpg) share one processor chain, so the
redaction applies to every line the process writes. Personal data (customer emails, names,
metadata, request bodies) is kept out at the source: our lines never carry it, and the HTTP and
Stripe client libraries, whose debug output holds whole requests and responses, are held at
warnings whatever the level.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import orjson
import structlog
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
    r"|(?i:bearer)\s+[^\s\"',]+"  # any bearer credential
    r"|postgres(?:ql)?://[^\s\"']*:[^\s\"'@]*@",  # database URLs with a password
)


# Libraries whose info and debug lines carry request and response bodies, headers or URLs with
# customer data (the Stripe SDK logs every parameter it sends and every response at debug;
# uvicorn's ASGI message log holds request bodies). They only ever log warnings and errors.
QUIET_LOGGERS = ("stripe", "httpx", "httpcore", "hpack", "h2", "h11", "uvicorn.asgi")


# Every secret pattern above contains one of these; most strings contain none, and skip the regex.
_SECRET_MARKERS = ("_live_", "_test_", "whsec_", "bsk_", "bct_", "bearer", "://")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.lower()
        if not any(marker in lowered for marker in _SECRET_MARKERS):
            return value
        return _SECRET_VALUES.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {key: _redact_item(str(key), item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


def _redact_item(key: str, value: Any) -> Any:
    if value is None:
        return value
    if _SECRET_KEY_NAMES.search(key):
        return REDACTED
    if _TOKEN_KEY_NAMES.search(key) and isinstance(value, str | bytes):
        return REDACTED
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
