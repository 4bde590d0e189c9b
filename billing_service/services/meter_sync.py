"""Pushing meters and metered prices to Stripe, after the catalog's products and prices.

The same discipline as services/catalog_sync.py: each result is recorded as soon as Stripe
confirms it, idempotency keys are named after our rows, and no transaction spans a Stripe call.
"""

from __future__ import annotations

from billing_service.db import billing_meters, features, plans
from billing_service.db.billing_meters import Meter, MeteredPrice
from billing_service.db.pool import Connection
from billing_service.services.stripe_keys import attempt_key
from billing_service.stripe_gateway import StripeGateway


async def pending_meter_work(conn: Connection) -> list[str]:
    """What a sync would send to Stripe for metered billing, described for people."""
    work = [
        f"create meter {meter.event_name}"
        for meter in await billing_meters.select_meters(conn)
        if meter.stripe_meter_id is None
    ]
    for price in await billing_meters.select_metered_prices_pending_sync(conn):
        if price.stripe_price_id is None and price.active:
            work.append(f"create metered price {price.lookup_key}")
        elif price.stripe_price_id is not None:
            state = "update" if price.active else "archive"
            work.append(f"{state} metered price {price.lookup_key} ({price.stripe_price_id})")
    return work


async def sync_meters(conn: Connection, gateway: StripeGateway) -> tuple[list[str], list[str]]:
    """Create missing meters, then create or archive metered prices. Returns what was done and
    the Stripe ids touched. The caller holds the catalog sync lock."""
    done: list[str] = []
    touched: list[str] = []
    meters = {meter.feature_id: meter for meter in await billing_meters.select_meters(conn)}
    names = {feature.id: feature.name for feature in await features.select_features(conn)}
    for feature_id, meter in list(meters.items()):
        if meter.stripe_meter_id is None:
            meters[feature_id] = await _create_meter(conn, gateway, meter, names[feature_id])
            done.append(f"create meter {meter.event_name}")
    for price in await billing_meters.select_metered_prices_pending_sync(conn):
        if price.stripe_price_id is None and not price.active:
            pass  # archived before it ever reached Stripe
        elif price.stripe_price_id is None:
            stripe_id = await _create_price(conn, gateway, price, meters[price.feature_id])
            done.append(f"create metered price {price.lookup_key}")
            touched.append(stripe_id)
        else:
            base_key = f"catalog:metered_price:{price.id}:update:{price.sync_generation}"
            async with attempt_key(conn, base_key) as key:
                await gateway.update_price(
                    price.stripe_price_id,
                    active=price.active,
                    lookup_key=price.lookup_key if price.active else None,
                    idempotency_key=key,
                )
            state = "update" if price.active else "archive"
            done.append(f"{state} metered price {price.lookup_key} ({price.stripe_price_id})")
            touched.append(price.stripe_price_id)
        await billing_meters.mark_metered_price_synced(conn, price.id, price.sync_generation)
    return done, touched


async def _create_meter(
    conn: Connection, gateway: StripeGateway, meter: Meter, feature_name: str
) -> Meter:
    async with attempt_key(conn, f"catalog:meter:{meter.id}:create") as key:
        stripe_meter_id = await gateway.create_meter(
            display_name=feature_name, event_name=meter.event_name, idempotency_key=key
        )
    await billing_meters.set_stripe_meter_id(conn, meter.id, stripe_meter_id)
    return Meter(
        id=meter.id,
        feature_id=meter.feature_id,
        event_name=meter.event_name,
        stripe_meter_id=stripe_meter_id,
        sync_generation=meter.sync_generation,
        synced_generation=meter.sync_generation,
    )


async def _create_price(
    conn: Connection, gateway: StripeGateway, price: MeteredPrice, meter: Meter
) -> str:
    plan = await plans.select_plan(conn, price.plan_id)
    assert plan.stripe_product_id is not None, "products are created before their prices"
    assert meter.stripe_meter_id is not None, "meters are created before their prices"
    async with attempt_key(conn, f"catalog:metered_price:{price.id}:create") as key:
        stripe_price_id = await gateway.create_metered_price(
            product_id=plan.stripe_product_id,
            meter_id=meter.stripe_meter_id,
            unit_amount=price.unit_amount,
            currency=price.currency,
            interval=price.recurring_interval,
            lookup_key=price.lookup_key,
            metadata={
                "billing_metered_price_id": str(price.id),
                "billing_plan_key": plan.key,
                "billing_meter_event": meter.event_name,
            },
            idempotency_key=key,
        )
    await billing_meters.set_stripe_price_id(conn, price.id, stripe_price_id)
    return stripe_price_id
