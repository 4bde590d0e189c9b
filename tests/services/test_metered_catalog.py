"""Billed overage in the catalog: validation, the Stripe meter and metered prices, drift."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest

from billing_service.catalog_spec import (
    CatalogSpec,
    MeteredLimit,
    dump_catalog_yaml,
    load_catalog_yaml,
)
from billing_service.errors import ValidationFailed
from billing_service.services import catalog, catalog_sync
from billing_service.stripe_gateway import StripeGateway
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe


def _with_ai_calls(spec: CatalogSpec, **allowance: object) -> CatalogSpec:
    pro = spec.plans["pro"]
    current = pro.features["ai_calls"]
    assert isinstance(current, MeteredLimit)
    updated = MeteredLimit.model_validate(current.model_dump() | allowance)
    plan = pro.model_copy(update={"features": pro.features | {"ai_calls": updated}})
    return spec.model_copy(update={"plans": spec.plans | {"pro": plan}})


def _errors(document: str) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as raised:
        load_catalog_yaml(document)
    return {error.field: error.message for error in raised.value.errors}


CATALOG = """
features:
  ai_calls: {{name: AI calls, kind: metered}}
  export_csv: {{name: CSV export, kind: boolean}}
plans:
  free: {{name: Free, default: true}}
  pro:
    name: Pro
    features: {{{features}}}
    prices: {{pro_monthly: {{amount: 1900, currency: usd, interval: month}}}}
"""


@pytest.mark.parametrize(
    ("features", "field", "message"),
    [
        (
            "ai_calls: {limit: 5, overage: bill, overage_price: {amount_per_unit: 2}}",
            "plans.pro.features.ai_calls.overage_price.currency",
            "Field required",
        ),
        (
            "ai_calls: {limit: 5, overage: bill}",
            "plans.pro.features.ai_calls.overage_price",
            "required with overage: bill",
        ),
        (
            "ai_calls: {limit: 5, overage: allow, overage_price: {amount_per_unit: 2, "
            "currency: usd}}",
            "plans.pro.features.ai_calls.overage_price",
            "only used with overage: bill",
        ),
        (
            "ai_calls: {limit: null, overage: bill, overage_price: {amount_per_unit: 2, "
            "currency: usd}}",
            "plans.pro.features.ai_calls.limit",
            "overage: bill needs a limit (0 bills every unit)",
        ),
        (
            "ai_calls: {limit: 5, overage: bill, overage_price: {amount_per_unit: 2, "
            "currency: eur}}",
            "plans.pro.features.ai_calls.overage_price.currency",
            "must be the currency of the plan's prices",
        ),
        (
            "ai_calls: {limit: 5, overage: bill, overage_price: {amount_per_unit: '2', "
            "currency: usd}}",
            "plans.pro.features.ai_calls.overage_price.amount_per_unit",
            "must be a number of the currency's minor units, e.g. 2 for 0.02 USD",
        ),
        (
            "export_csv: {limit: 5, overage: bill, overage_price: {amount_per_unit: 2, "
            "currency: usd}}",
            "plans.pro.features.export_csv",
            "a boolean feature takes true or false",
        ),
    ],
)
def test_billed_overage_errors_name_the_field(features: str, field: str, message: str) -> None:
    """Each mistake in a billed allowance is refused with the field's path and the rule."""
    assert _errors(CATALOG.format(features=features)).get(field) == message


async def test_apply_creates_one_meter_and_a_metered_price_per_interval(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Pro bills AI calls past 500 at 2 cents: one meter summing `value` per Stripe customer,
    and a metered price for each of Pro's intervals on Pro's product, each sent once under an
    idempotency key named after our row."""
    result = await apply(pool, gateway, example())

    assert "+ meter ai_calls" in result.changes
    [meter_call] = fake_stripe.calls_to("POST", "/v1/billing/meters")
    assert meter_call.form == {
        "display_name": "AI calls",
        "event_name": "ai_calls",
        "default_aggregation[formula]": "sum",
        "customer_mapping[type]": "by_id",
        "customer_mapping[event_payload_key]": "stripe_customer_id",
        "value_settings[event_payload_key]": "value",
    }
    assert meter_call.idempotency_key
    assert meter_call.idempotency_key.startswith("catalog:meter:")
    [meter] = fake_stripe.meters.values()
    pro_product = await pool.fetchval("SELECT stripe_product_id FROM plans WHERE key = 'pro'")
    for interval in ("month", "year"):
        lookup_key = f"pro:ai_calls:overage:{interval}"
        stripe_id = await pool.fetchval(
            "SELECT stripe_price_id FROM metered_prices WHERE lookup_key = $1 AND active",
            lookup_key,
        )
        price = fake_stripe.prices[stripe_id]
        assert price["product"] == pro_product
        assert price["lookup_key"] == lookup_key
        assert price["unit_amount_decimal"] == "2"
        assert price["recurring"]["usage_type"] == "metered"
        assert price["recurring"]["meter"] == meter["id"]
        assert price["recurring"]["interval"] == interval
    assert (await apply(pool, gateway, example())).changes == []


async def test_a_sub_cent_price_change_makes_a_new_metered_price_and_archives_the_old(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Stripe prices are immutable: 0.35 cents a call is a new metered price (as
    unit_amount_decimal) that takes the lookup key; the old one is archived in Stripe."""
    await apply(pool, gateway, example())
    old = await pool.fetchval(
        "SELECT stripe_price_id FROM metered_prices "
        "WHERE lookup_key = 'pro:ai_calls:overage:month' AND active"
    )
    spec = _with_ai_calls(example(), overage_price={"amount_per_unit": 0.35, "currency": "usd"})

    result = await apply(pool, gateway, spec)

    assert "~ metered price pro:ai_calls:overage:month: 0.35 usd/unit" in result.changes
    new = await pool.fetchval(
        "SELECT stripe_price_id FROM metered_prices "
        "WHERE lookup_key = 'pro:ai_calls:overage:month' AND active"
    )
    assert fake_stripe.prices[new]["unit_amount_decimal"] == "0.35"
    assert fake_stripe.prices[new]["unit_amount"] is None
    assert fake_stripe.prices[old]["active"] is False
    assert len(fake_stripe.meters) == 1  # the meter stays
    assert await pool.fetchval("SELECT overage_unit_amount FROM plan_features "
                               "WHERE overage = 'bill'") == Decimal("0.35")  # fmt: skip
    exported = load_catalog_yaml(dump_catalog_yaml(await catalog.current_catalog(pool)))
    assert exported == spec
    assert (await apply(pool, gateway, exported)).changes == []


async def test_a_metered_price_archived_in_the_dashboard_is_drift_and_restored(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Archiving our metered price in Stripe is reported as drift; the next sync restores it
    with its lookup key."""
    await apply(pool, gateway, example())
    stripe_id = await pool.fetchval(
        "SELECT stripe_price_id FROM metered_prices WHERE lookup_key = 'pro:ai_calls:overage:month'"
    )
    archived = fake_stripe.prices[stripe_id] | {"active": False}
    fake_stripe.prices[stripe_id] = archived
    async with pool.acquire() as conn:
        findings = await catalog_sync.record_stripe_change(conn, "price.updated", archived)
    assert findings == [
        "metered price pro:ai_calls:overage:month: archived in Stripe, not in the catalog"
    ]

    await catalog_sync.sync_catalog(pool, gateway)

    assert fake_stripe.prices[stripe_id]["active"] is True
    assert await pool.fetchval("SELECT count(*) FROM catalog_drift WHERE resolved_at IS NULL") == 0
