"""The `openapi.yaml` contract: valid OpenAPI, and exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

import yaml
from openapi_spec_validator import validate
from starlette.routing import Route

from billing_service.app import create_app
from billing_service.config import Settings
from billing_service.resources import openapi_path

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(openapi_path().read_text())
    return spec


def test_document_is_valid_openapi() -> None:
    """The contract passes the OpenAPI 3.1 validator."""
    validate(_spec())


def test_document_lists_exactly_the_apps_routes(settings: Settings) -> None:
    """Every served method and path is documented, and nothing documented is missing."""
    served = {
        (method.lower(), route.path)
        for route in create_app(settings).routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (method, path)
        for path, item in _spec()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert served == documented


def test_authenticated_operations_document_401_and_403() -> None:
    """Operations that need a key say how they fail without one."""
    for path, item in _spec()["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS and operation.get("security") != []:
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
