"""Files shipped beside the code: SQL migrations, the OpenAPI contract, the example catalog.

An installed wheel carries them under `_bundled/`; a source checkout reads them from the repo root.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent


def _locate(bundled_name: str, repo_relative: str) -> Path:
    bundled = _PACKAGE_DIR / "_bundled" / bundled_name
    return bundled if bundled.exists() else _REPO_ROOT / repo_relative


def migrations_dir() -> Path:
    return _locate("migrations", "db/migrations")


def openapi_path() -> Path:
    return _locate("openapi.yaml", "openapi.yaml")


def example_catalog_path() -> Path:
    return _locate("catalog.example.yaml", "catalog.example.yaml")
