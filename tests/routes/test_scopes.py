"""Every operation lets through exactly the credentials its `security` in openapi.yaml names."""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import httpx
import yaml

from billing_service.resources import openapi_path
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
CUSTOMER = "user_1"
# A plausible value for each path parameter: authorization is decided before any lookup.
PATH_VALUES = {
    "customer_id": CUSTOMER,
    "key": "pro",
    "event_id": "evt_1",
    "id": "cs_test_1",
}


def _guarded_operations() -> list[tuple[str, str, set[str]]]:
    """(method, concrete path, accepted credentials) of each operation that needs one."""
    spec: dict[str, Any] = yaml.safe_load(openapi_path().read_text())
    operations = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS or operation["security"] == []:
                continue
            accepted = {
                role if scheme == "apiKey" else scheme
                for requirement in operation["security"]
                for scheme, roles in requirement.items()
                for role in roles or [scheme]
            }
            concrete = re.sub(
                r"\{(\w+)\}", lambda m: PATH_VALUES.get(m[1], str(uuid.uuid4())), path
            )
            operations.append((method.upper(), concrete, accepted))
    return operations


def test_every_operation_names_the_credentials_it_accepts() -> None:
    """No operation leans on the document's default: each states its scopes."""
    operations = _guarded_operations()
    assert len(operations) > 25
    for method, path, accepted in operations:
        assert accepted, (method, path)
        assert accepted <= {"admin", "billing", "usage", "customerToken"}, (method, path)


async def test_each_credential_passes_exactly_where_the_contract_says(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Billing, usage and customer-token callers get 403 on every route not granted to them
    (every admin route among them); admin keys pass everywhere."""
    keys = {scope.value: await issue_key(pool, scope) for scope in Scope}
    minted = await client.post(
        f"/v1/customers/{CUSTOMER}/tokens", headers={"Authorization": f"Bearer {keys['usage']}"}
    )
    assert minted.status_code == 201
    credentials = keys | {"customerToken": minted.json()["token"]}

    admin_only = 0
    for method, path, accepted in _guarded_operations():
        admin_only += accepted == {"admin"}
        for name, secret in credentials.items():
            response = await client.request(
                method, path, headers={"Authorization": f"Bearer {secret}"}, json={}
            )
            if name in accepted or name == "admin":
                assert response.status_code not in {401, 403}, (name, method, path)
            else:
                assert response.status_code == 403, (name, method, path, response.text)
                problem = response.json()
                assert problem["type"] == "urn:billing-service:problem:forbidden"
    assert admin_only >= 14  # keys, catalog edits, events, outgoing webhooks
