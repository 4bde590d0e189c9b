"""Applying the declarative catalog to the database and to Stripe."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from billing_service.catalog_spec import CatalogSpec, load_catalog_yaml
from billing_service.errors import StripeUnavailable, ValidationFailed
from billing_service.resources import example_catalog_path
from billing_service.services import catalog, catalog_sync
from billing_service.stripe_gateway import StripeGateway
from tests.stripe_fakes import FakeStripe, stripe_error


def example() -> CatalogSpec:
    return load_catalog_yaml(example_catalog_path().read_text())


def with_price_amount(spec: CatalogSpec, plan: str, lookup_key: str, amount: int) -> CatalogSpec:
    old_plan = spec.plans[plan]
    price = old_plan.prices[lookup_key].model_copy(update={"amount": amount})
    new_plan = old_plan.model_copy(update={"prices": old_plan.prices | {lookup_key: price}})
    return spec.model_copy(update={"plans": spec.plans | {plan: new_plan}})


async def apply(
    pool: asyncpg.Pool, gateway: StripeGateway | None, spec: CatalogSpec, *, dry_run: bool = False
) -> catalog.ApplyResult:
    return await catalog.apply_and_sync(pool, gateway, lambda _current: spec, dry_run=dry_run)


async def test_first_apply_creates_exactly_the_expected_products_and_prices(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Paid plans get a product each; every price carries its lookup key, metadata and terms
    (Pro's billed AI calls add a meter and two metered prices, tested in test_metered_catalog)."""
    result = await apply(pool, gateway, example())

    products = fake_stripe.calls_to("POST", "/v1/products")
    assert [call.form for call in products] == [
        {
            "name": "Pro",
            "description": "For individuals and small teams.",
            "metadata[billing_plan_key]": "pro",
            "metadata[billing_plan_id]": products[0].form["metadata[billing_plan_id]"],
        },
        {
            "name": "AI credit pack",
            "description": "1,000 extra AI calls that never expire.",
            "metadata[billing_plan_key]": "credits",
            "metadata[billing_plan_id]": products[1].form["metadata[billing_plan_id]"],
        },
        {
            "name": "Team",
            "description": "Per seat, for teams; every member gets their own share of AI calls.",
            "metadata[billing_plan_key]": "team",
            "metadata[billing_plan_id]": products[2].form["metadata[billing_plan_id]"],
        },
    ]
    pro_product, credits_product, team_product = fake_stripe.products
    price_forms = {c.form["lookup_key"]: c.form for c in fake_stripe.calls_to("POST", "/v1/prices")}
    assert set(price_forms) == {
        "pro_monthly", "pro_yearly", "ai_credits_1000", "team_monthly",
        "pro:ai_calls:overage:month", "pro:ai_calls:overage:year",
    }  # fmt: skip
    plan_of = {pro_product: "pro", credits_product: "credits", team_product: "team"}
    for lookup_key, amount, interval, product in (
        ("pro_monthly", "1900", "month", pro_product),
        ("pro_yearly", "19000", "year", pro_product),
        ("ai_credits_1000", "1000", None, credits_product),
        ("team_monthly", "2500", "month", team_product),  # per seat: a plain licensed price
    ):
        sent = price_forms[lookup_key]
        expected = {
            "product": product,
            "unit_amount": amount,
            "currency": "usd",
            "lookup_key": lookup_key,
            "transfer_lookup_key": "true",
            "metadata[billing_price_key]": lookup_key,
            "metadata[billing_price_id]": sent["metadata[billing_price_id]"],
            "metadata[billing_plan_key]": plan_of[product],
        }
        if interval is not None:
            expected["recurring[interval]"] = interval
        assert sent == expected
    mutations = [call for call in fake_stripe.calls if call.method == "POST"]
    assert all(call.idempotency_key for call in mutations)
    assert len(mutations) == 10  # no product for the free plan: it has no price
    assert result.stripe_pending == []

    stored = await pool.fetch(
        "SELECT stripe_price_id FROM prices WHERE active "
        "UNION ALL SELECT stripe_price_id FROM metered_prices WHERE active"
    )
    assert {row["stripe_price_id"] for row in stored} == set(fake_stripe.prices)


async def test_second_apply_changes_nothing_and_calls_stripe_for_nothing(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Applying the same catalog again is a no-op, in the database and in Stripe."""
    await apply(pool, gateway, example())
    calls_before = len(fake_stripe.calls)
    rows_before = await pool.fetch("SELECT * FROM prices ORDER BY id")

    result = await apply(pool, gateway, example())

    assert result.changes == []
    assert result.stripe_synced == []
    assert len(fake_stripe.calls) == calls_before
    assert await pool.fetch("SELECT * FROM prices ORDER BY id") == rows_before


async def test_amount_change_creates_one_new_price_and_archives_the_old(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Stripe prices are immutable: a new price takes the lookup key, the old one is archived."""
    await apply(pool, gateway, example())
    old_stripe_id = await pool.fetchval(
        "SELECT stripe_price_id FROM prices WHERE lookup_key = 'pro_monthly' AND active"
    )
    calls_before = len(fake_stripe.calls)

    result = await apply(pool, gateway, with_price_amount(example(), "pro", "pro_monthly", 2100))

    new_calls = fake_stripe.calls[calls_before:]
    assert [(c.method, c.path) for c in new_calls] == [
        ("POST", "/v1/prices"),
        ("POST", f"/v1/prices/{old_stripe_id}"),
    ]
    created, archived = new_calls
    assert created.form["unit_amount"] == "2100"
    assert created.form["lookup_key"] == "pro_monthly"
    assert created.form["transfer_lookup_key"] == "true"
    assert archived.form == {"active": "false"}
    assert any("1900 usd/month → 2100 usd/month" in change for change in result.changes)

    rows = await pool.fetch(
        "SELECT amount, active, stripe_price_id FROM prices WHERE lookup_key = 'pro_monthly' "
        "ORDER BY created_at"
    )
    assert [(r["amount"], r["active"]) for r in rows] == [(1900, False), (2100, True)]
    assert rows[0]["stripe_price_id"] == old_stripe_id
    assert fake_stripe.prices[old_stripe_id]["lookup_key"] is None  # transferred away


async def test_malformed_catalog_is_rejected_naming_the_field_and_changes_nothing(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """A bad file fails validation with the path of the bad field; the database is untouched."""
    await apply(pool, gateway, example())
    before = await catalog.current_catalog(pool)
    text = example_catalog_path().read_text().replace("amount: 1900,", "amount: nineteen,")

    with pytest.raises(ValidationFailed) as raised:
        load_catalog_yaml(text)

    assert [e.field for e in raised.value.errors] == ["plans.pro.prices.pro_monthly.amount"]
    assert await catalog.current_catalog(pool) == before


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (("export_csv: false", "export_csv: {limit: 3}"), "plans.free.features.export_csv",
         "boolean feature"),
        (("projects: {limit: 3, reset: never}", "storage: {limit: 3}"),
         "plans.free.features.storage", "unknown feature"),
        (("default: true", "default: false"), "plans", "exactly one plan"),
        (("interval: month}", "interval: fortnight}"), "plans.pro.prices.pro_monthly.interval",
         "'month' or 'year'"),
        (("soft_limit: 100", "soft_limit: 900"), "plans.pro.features.ai_calls.soft_limit",
         "must not exceed limit"),
        (("grants: {ai_calls: 1000}", "grants: {export_csv: 1}"),
         "plans.credits.prices.ai_credits_1000.grants.export_csv", "metered feature"),
        (("    name: Free\n", "    name: Free\n    colour: blue\n"), "plans.free.colour",
         "Extra inputs"),
    ],
)  # fmt: skip
def test_invalid_catalogs_name_the_bad_field(
    edit: tuple[str, str], field: str, message: str
) -> None:
    """Each kind of mistake is reported at its path in the file."""
    text = example_catalog_path().read_text()
    assert edit[0] in text
    with pytest.raises(ValidationFailed) as raised:
        load_catalog_yaml(text.replace(edit[0], edit[1], 1))
    matching = [e for e in raised.value.errors if e.field == field]
    assert matching, raised.value.errors
    assert message in matching[0].message


def test_invalid_yaml_says_where() -> None:
    """Unparsable YAML is reported with its line."""
    with pytest.raises(ValidationFailed) as raised:
        load_catalog_yaml("plans:\n  pro: [unclosed\n")
    assert "not valid YAML at line" in raised.value.errors[0].message


async def test_database_allows_at_most_one_default_plan(pool: asyncpg.Pool) -> None:
    """A second default plan violates a unique index, whatever the code does."""
    await apply(pool, None, example())
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute("UPDATE plans SET is_default = true WHERE key = 'pro'")


async def test_database_requires_a_default_plan_at_commit(pool: asyncpg.Pool) -> None:
    """Removing the only default fails at commit; moving it inside one transaction succeeds."""
    await apply(pool, None, example())
    with pytest.raises(asyncpg.CheckViolationError, match="exactly one plan"):
        await pool.execute("UPDATE plans SET is_default = false WHERE key = 'free'")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE plans SET is_default = false WHERE key = 'free'")
        await conn.execute("UPDATE plans SET is_default = true WHERE key = 'pro'")
    assert await pool.fetchval("SELECT key FROM plans WHERE is_default") == "pro"


async def test_concurrent_applies_create_each_stripe_object_once(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Two applies racing (two operators, two replicas) leave one row and one Stripe object each."""
    await asyncio.gather(*(apply(pool, gateway, example()) for _ in range(3)))

    assert len(fake_stripe.products) == 3
    assert len(fake_stripe.prices) == 6  # with Pro's two metered prices
    assert len(fake_stripe.meters) == 1
    assert await pool.fetchval("SELECT count(*) FROM metered_prices") == 2
    assert await pool.fetchval("SELECT count(*) FROM plans") == 4
    assert await pool.fetchval("SELECT count(*) FROM prices") == 4
    assert await pool.fetchval("SELECT count(*) FROM prices WHERE stripe_price_id IS NULL") == 0


async def test_dry_run_reports_the_changes_and_keeps_nothing(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, gateway: StripeGateway
) -> None:
    """A dry run lists what an apply would do, including Stripe calls, and makes none of it."""
    result = await apply(pool, gateway, example(), dry_run=True)
    assert "+ plan free (default)" in result.changes
    assert "create price pro_monthly (plan pro)" in result.stripe_pending
    assert await pool.fetchval("SELECT count(*) FROM plans") == 0
    assert fake_stripe.calls == []


async def test_dry_run_of_an_empty_catalog_fails_like_the_apply(pool: asyncpg.Pool) -> None:
    """Once plans exist, an empty catalog is refused by the dry run as by the apply (no default)."""
    await apply(pool, None, example())

    for dry_run in (True, False):
        with pytest.raises(ValidationFailed) as raised:
            await apply(pool, None, CatalogSpec(), dry_run=dry_run)
        assert [e.field for e in raised.value.errors] == ["plans"]
        assert "default: true" in raised.value.errors[0].message
    assert await pool.fetchval("SELECT key FROM plans WHERE is_default AND active") == "free"


async def test_without_stripe_the_catalog_is_saved_and_sync_waits(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """No Stripe key: the database is updated and the Stripe work stays pending until a sync."""
    result = await apply(pool, None, example())
    assert result.changes
    assert len(result.stripe_pending) == 10  # 3 products, 4 prices, a meter, 2 metered prices
    assert fake_stripe.calls == []

    report = await catalog_sync.sync_catalog(pool, gateway)
    assert len(report.done) == 10
    assert len(fake_stripe.prices) == 6


async def test_removed_plan_is_archived_with_its_prices_never_deleted(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """Dropping a plan from the file archives it and its prices, here and in Stripe."""
    await apply(pool, gateway, example())
    spec = example()
    without_credits = spec.model_copy(
        update={"plans": {k: v for k, v in spec.plans.items() if k != "credits"}}
    )

    result = await apply(pool, gateway, without_credits)

    assert "- plan credits (archived)" in result.changes
    assert "- price ai_credits_1000 (archived)" in result.changes
    row = await pool.fetchrow("SELECT active, stripe_product_id FROM plans WHERE key = 'credits'")
    assert row is not None
    assert row["active"] is False
    assert fake_stripe.products[row["stripe_product_id"]]["active"] is False
    price = await pool.fetchrow("SELECT active, stripe_price_id FROM prices")
    assert await pool.fetchval("SELECT count(*) FROM prices") == 4
    assert price is not None
    archived = await pool.fetchval(
        "SELECT stripe_price_id FROM prices WHERE lookup_key = 'ai_credits_1000'"
    )
    assert fake_stripe.prices[archived]["active"] is False


async def test_export_reads_back_to_the_same_catalog(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """`catalog export` output applies as a no-op: it is the catalog, losslessly."""
    from billing_service.catalog_spec import dump_catalog_yaml

    await apply(pool, gateway, example())
    exported = load_catalog_yaml(dump_catalog_yaml(await catalog.current_catalog(pool)))
    assert exported == example()
    assert (await apply(pool, gateway, exported)).changes == []


async def test_stripe_outage_leaves_only_unfinished_work_pending(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """A Stripe failure mid-sync keeps what succeeded; the next sync finishes the rest once."""
    await apply(pool, None, example())
    fake_stripe.failures["/v1/prices"] = stripe_error(500, "api_error")
    with pytest.raises(StripeUnavailable):
        await catalog_sync.sync_catalog(pool, gateway)
    failed = fake_stripe.calls_to("POST", "/v1/prices")
    assert len(failed) == 3  # the SDK's two bounded retries...
    assert len({call.idempotency_key for call in failed}) == 1  # ...reuse one idempotency key
    assert len(fake_stripe.products) == 3  # products were created and recorded
    async with pool.acquire() as conn:
        assert len(await catalog_sync.pending_work(conn)) == 7  # with the meter's work

    fake_stripe.failures.clear()
    report = await catalog_sync.sync_catalog(pool, gateway)
    assert len(report.done) == 7
    assert len(fake_stripe.prices) == 6
    assert len(fake_stripe.calls_to("POST", "/v1/products")) == 3
