"""Changes made to our Stripe products and prices outside the catalog are caught and undone."""

from __future__ import annotations

import asyncpg

from billing_service.catalog_spec import PriceSpec
from billing_service.services import catalog_sync
from billing_service.stripe_gateway import StripeGateway
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe, stripe_object


async def _record(pool: asyncpg.Pool, event_type: str, obj: dict[str, object]) -> list[str]:
    async with pool.acquire() as conn:
        return await catalog_sync.record_stripe_change(conn, event_type, obj)


async def _pro_product(pool: asyncpg.Pool) -> str:
    product_id: str = await pool.fetchval("SELECT stripe_product_id FROM plans WHERE key = 'pro'")
    return product_id


async def test_dashboard_rename_is_reported_by_dry_run_and_undone_by_apply(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """A product renamed in Stripe is drift: listed by a dry run, restored by the next apply."""
    await apply(pool, gateway, example())
    product_id = await _pro_product(pool)
    renamed = fake_stripe.products[product_id] | {"name": "Pro (legacy)"}

    findings = await _record(pool, "product.updated", renamed)

    assert findings == [
        "product of plan 'pro': name is 'Pro (legacy)' in Stripe, 'Pro' in the catalog"
    ]
    preview = await apply(pool, gateway, example(), dry_run=True)
    assert [d.description for d in preview.drift] == findings
    assert preview.changes == []
    assert preview.stripe_pending == ["update product for plan pro"]

    calls_before = len(fake_stripe.calls)
    result = await apply(pool, gateway, example())
    [restore] = fake_stripe.calls[calls_before:]
    assert restore.path == f"/v1/products/{product_id}"
    assert restore.form["name"] == "Pro"
    assert result.stripe_synced == ["update product for plan pro"]
    assert (await apply(pool, gateway, example(), dry_run=True)).drift == []


async def test_our_own_changes_echoed_by_stripe_are_not_drift(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Events describing exactly what the catalog holds record nothing."""
    await apply(pool, gateway, example())
    for product in fake_stripe.products.values():
        assert await _record(pool, "product.updated", product) == []
    for price in fake_stripe.prices.values():
        assert await _record(pool, "price.created", price) == []
    assert await pool.fetchval("SELECT count(*) FROM catalog_drift") == 0


async def test_creation_announced_before_we_stored_the_id_is_not_drift(
    pool: asyncpg.Pool,
) -> None:
    """Stripe may announce our own new product before the sync has recorded its id."""
    await apply(pool, None, example())
    plan_id = await pool.fetchval("SELECT id FROM plans WHERE key = 'pro'")
    product = stripe_object(
        "product",
        id="prod_new",
        metadata={"billing_plan_key": "pro", "billing_plan_id": str(plan_id)},
    )
    assert await _record(pool, "product.created", product) == []


async def test_price_archived_in_the_dashboard_is_restored_with_its_lookup_key(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """An archived live price is reactivated and given its lookup key back by the next sync."""
    await apply(pool, gateway, example())
    price_id = await pool.fetchval(
        "SELECT stripe_price_id FROM prices WHERE lookup_key = 'pro_yearly'"
    )
    archived = fake_stripe.prices[price_id] | {"active": False, "lookup_key": None}

    findings = await _record(pool, "price.updated", archived)

    assert findings == [
        "price pro_yearly: archived in Stripe, not in the catalog",
        "price pro_yearly: lookup key is None in Stripe",
    ]
    report = await catalog_sync.sync_catalog(pool, gateway)
    assert report.done == [f"update price pro_yearly ({price_id})"]
    restore = fake_stripe.calls[-1]
    assert restore.form == {
        "active": "true",
        "lookup_key": "pro_yearly",
        "transfer_lookup_key": "true",
    }


async def test_foreign_price_on_our_product_is_reported_and_foreign_products_ignored(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """A price added to our product in the dashboard is reported; others' objects are not ours."""
    await apply(pool, gateway, example())
    product_id = await _pro_product(pool)
    foreign_price = stripe_object("price", id="price_dashboard", product=product_id)
    unrelated = stripe_object("product", id="prod_someone_else")

    assert await _record(pool, "price.created", foreign_price) == [
        "price price_dashboard was created in Stripe outside the catalog"
    ]
    assert await _record(pool, "product.created", unrelated) == []
    await _record(pool, "price.updated", foreign_price)  # the same finding again
    assert await pool.fetchval("SELECT count(*) FROM catalog_drift") == 1


async def test_deleted_product_is_forgotten_and_recreated_when_needed(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """A product deleted in Stripe is forgotten; the next sync that needs it creates a new one."""
    await apply(pool, gateway, example())
    await pool.execute("UPDATE plans SET stripe_product_id = 'prod_gone' WHERE key = 'free'")
    deleted = stripe_object("deleted_product", id="prod_gone")

    findings = await _record(pool, "product.deleted", deleted)

    assert findings == ["product of plan 'free' was deleted in Stripe"]
    assert await pool.fetchval("SELECT stripe_product_id FROM plans WHERE key = 'free'") is None
    spec = example()
    free = spec.plans["free"]
    paid_free = free.model_copy(
        update={"prices": {"free_monthly": PriceSpec(amount=0, currency="usd", interval="month")}}
    )
    await apply(pool, gateway, spec.model_copy(update={"plans": spec.plans | {"free": paid_free}}))
    new_product = await pool.fetchval("SELECT stripe_product_id FROM plans WHERE key = 'free'")
    assert new_product in fake_stripe.products
