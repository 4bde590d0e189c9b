"""The catalog file as an operator writes it: amounts are whole minor units, nothing else."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from billing_service.resources import example_catalog_path
from tests.support import billing_service


@pytest.mark.parametrize(
    ("written", "kind"),
    [('"19.00"', "a string"), ("19.00", "a decimal number"), ("true", "a boolean")],
)
async def test_catalog_apply_refuses_an_amount_that_is_not_an_integer(
    cli_env: dict[str, str], pool: asyncpg.Pool, tmp_path: Path, written: str, kind: str
) -> None:
    """`amount: "19.00"` (or 19.00, or true) exits 1 naming the field, instead of 19 cents."""
    text = example_catalog_path().read_text()
    assert "{amount: 1900," in text
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(text.replace("{amount: 1900,", f"{{amount: {written},"))
    run = await billing_service(cli_env, "catalog", "apply", str(catalog))
    assert run.code == 1, run.out
    assert f"{catalog}: plans.pro.prices.pro_monthly.amount: must be an integer number" in run.err
    assert f"not {kind}" in run.err
    assert "Traceback" not in run.err
    assert await pool.fetchval("SELECT count(*) FROM prices") == 0
