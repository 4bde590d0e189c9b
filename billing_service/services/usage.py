"""Entitlements and usage quotas: may this customer use this feature, and record that they did.

Limits add up from the plan's allowance (or the customer's own override of it) plus credits,
bought or granted (until they expire), the allowance spent first.
`track` checks and records in one statement (`usage_track`, migration 0016), its own
transaction: the counter moves with one conditional upsert when the allowance covers the call,
and under row locks on the counter and the credit balance when credits (or overage) come into
play, so concurrent calls can never overspend. `check` and `entitlements` read the same context
and decide in Python (`resolve`), by the same rules.

Per-seat allowances count once per seat of the subscription granting them. A call for a member
of a team also counts against the member's own limit, in the same statement (migration 0025):
the member's counter first, then the team's, the member's put back when the team refuses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from billing_service.db import members as members_db
from billing_service.db import usage as db
from billing_service.db.pool import Connection
from billing_service.db.usage import FeatureContext
from billing_service.errors import IdempotencyKeyReused, NotFound
from billing_service.history_window import HistoryWindow
from billing_service.periods import Period, period_for
from billing_service.services.access import grants_plan_status

if TYPE_CHECKING:
    from billing_service.services.entitlement_cache import EntitlementCache


@dataclass(frozen=True, slots=True)
class Entitlement:
    """A feature as one customer may use it now."""

    context: FeatureContext
    plan_key: str | None
    enabled: bool
    limit: int | None
    soft_limit: int | None
    reset: str | None
    overage: str
    period: Period | None
    used: int
    cost: Decimal
    member_limit: int | None = None  # each member's own limit (per-seat plans)

    @property
    def source(self) -> str:
        """Where the limit comes from: the customer's `override`, else their `plan`."""
        return "override" if self.context.overridden else "plan"

    @property
    def metered(self) -> bool:
        return self.context.kind == "metered"

    @property
    def credits(self) -> int:
        return self.context.credits

    @property
    def remaining(self) -> int | None:
        """Units left this period: what the allowance has left plus unspent credits."""
        if not self.enabled or not self.metered:
            return None
        if self.limit is None:
            return None
        return max(0, self.limit - self.used) + self.credits


def resolve(context: FeatureContext, *, now: datetime, grace: timedelta) -> Entitlement:
    """Apply the access policy and find the period's counter for one feature."""
    subscribed = grants_plan_status(
        context.status, context.subscribed_plan_id, context.past_due_since, now=now, grace=grace
    )
    allowance = context.subscribed_allowance if subscribed else context.default_allowance
    plan_key = context.subscribed_plan_key if subscribed else context.default_plan_key
    if context.overridden:  # enabled whatever the plan says, with the customer's own limit
        allowance = {
            "reset": None,
            "soft_limit": None,
            "overage": "deny",
            **(allowance or {}),
            "enabled": True,
            "limit": context.override_limit,
        }
    enabled = bool(allowance and allowance["enabled"])
    if not enabled or allowance is None:
        return Entitlement(context, plan_key, False, None, None, None, "deny", None, 0, Decimal(0))
    reset = allowance["reset"]
    period = None
    used, cost = 0, Decimal(0)
    if context.kind == "metered":
        billing_period = (
            (context.current_period_start, context.current_period_end)
            if subscribed and context.current_period_start and context.current_period_end
            else None
        )
        period = period_for(
            reset or "month",
            now,
            billing_period=billing_period,
            interval=context.billing_interval if subscribed else None,
        )
        counter = (
            (context.counter_period_start, context.counter_used, context.counter_cost)
            if subscribed
            else (
                context.default_counter_period_start,
                context.default_counter_used,
                context.default_counter_cost,
            )
        )
        if counter[0] == period.start:  # the SQL found the same window's counter
            used = counter[1] or 0
            cost = counter[2] or Decimal(0)
    # A per-seat allowance counts once per seat of the subscription that grants it.
    seats = context.seats if subscribed and allowance.get("per_seat") else 1
    return Entitlement(
        context=context,
        plan_key=plan_key,
        enabled=True,
        limit=allowance["limit"] if context.overridden else _times(allowance["limit"], seats),
        soft_limit=_times(allowance["soft_limit"], seats),
        reset=reset,
        overage=allowance["overage"],
        period=period,
        used=used,
        cost=cost,
        member_limit=allowance.get("member_limit"),
    )


def _times(limit: int | None, seats: int) -> int | None:
    return None if limit is None else min(limit * max(seats, 1), db.MAX_USED)


async def entitlements(
    pool: asyncpg.Pool, customer_key: str, *, now: datetime, grace: timedelta,
    cache: EntitlementCache | None = None,
) -> list[Entitlement]:  # fmt: skip
    """Every live feature as the customer may use it now (unknown customers: default plan)."""
    read = db.select_context if cache is None else cache.contexts
    contexts = await read(pool, customer_key, None, now=now, grace=grace)
    return [resolve(context, now=now, grace=grace) for context in contexts]


async def _one(
    conn: Connection | asyncpg.Pool, customer_key: str, feature_key: str, *, now: datetime,
    grace: timedelta, cache: EntitlementCache | None = None,
) -> Entitlement:  # fmt: skip
    read = db.select_context if cache is None else cache.contexts
    contexts = await read(conn, customer_key, feature_key, now=now, grace=grace)
    if not contexts:
        raise NotFound(f"No feature has key '{feature_key}'.")
    return resolve(contexts[0], now=now, grace=grace)


def _decision(entitlement: Entitlement, *, allowed: bool, reason: str | None) -> dict[str, Any]:
    """The answer callers see, as of the entitlement's counter."""
    limit = entitlement.limit
    soft = entitlement.soft_limit
    body: dict[str, Any] = {
        "allowed": allowed,
        "feature": entitlement.context.feature_key,
        "used": entitlement.used,
        "limit": limit,
        "remaining": entitlement.remaining,
        "soft_limit_reached": soft is not None and entitlement.used >= soft,
        "resets_at": (
            entitlement.period.end.isoformat()
            if entitlement.period and entitlement.period.end
            else None
        ),
    }
    if reason is not None:
        body["reason"] = reason
    return body


def _fits(entitlement: Entitlement, amount: int) -> bool:
    """Whether `amount` more units are allowed without recording anything."""
    if not entitlement.metered or entitlement.limit is None or amount <= 0:
        return True
    if entitlement.overage in ("allow", "bill"):
        return True
    # Units paid with credits count in `used` too: what is left is `remaining`, as track has it.
    return amount <= max(0, entitlement.limit - entitlement.used) + entitlement.credits


async def _denial(
    conn: Connection | asyncpg.Pool, entitlement: Entitlement, amount: int, reason: str
) -> dict[str, Any]:
    body = _decision(entitlement, allowed=False, reason=reason)
    needed = min(entitlement.used + max(amount, 1), db.MAX_USED)  # a saturated counter
    options = await db.select_upgrade_options(
        conn, entitlement.context.feature_id, needed, entitlement.context.customer_id
    )
    upgrade = next((o for o in options if o.plan_key != entitlement.plan_key), None)
    body["upgrade"] = (
        None if upgrade is None else {"plan": upgrade.plan_key, "price": upgrade.price_key}
    )
    return body


@dataclass(frozen=True, slots=True)
class MemberStanding:
    """One member's use of one feature in the team's current window, and their own limit."""

    member_id: str
    used: int | None  # None for features that are not counted (off, or boolean)
    limit: int | None

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - (self.used or 0))

    def as_json(self) -> dict[str, Any]:
        return {"id": self.member_id, "used": self.used, "limit": self.limit,
                "remaining": self.remaining}  # fmt: skip


async def member_standings(
    conn: Connection | asyncpg.Pool, found: list[Entitlement], member_id: str
) -> list[MemberStanding]:
    """The member's standing in each feature of `found` (one customer's entitlements); 404
    when the member holds no seat of the customer."""
    customer_id = found[0].context.customer_id if found else None
    if customer_id is None or await members_db.select_member(conn, customer_id, member_id) is None:
        raise NotFound("The customer has no such member.")
    counted = {
        e.context.feature_id: e.period.start
        for e in found
        if e.enabled and e.metered and e.period is not None
    }
    used = await members_db.select_member_usage(conn, customer_id, member_id, counted)
    return [
        MemberStanding(
            member_id,
            used.get(e.context.feature_id, 0) if e.context.feature_id in counted else None,
            e.member_limit if e.enabled and e.metered else None,
        )
        for e in found
    ]


async def member_entitlements(
    pool: asyncpg.Pool, customer_key: str, member_id: str, *, now: datetime, grace: timedelta
) -> list[tuple[Entitlement, MemberStanding]]:
    """Every live feature as the team may use it, with the member's own standing in it."""
    contexts = await db.select_context(pool, customer_key, None, now=now, grace=grace)
    found = [resolve(context, now=now, grace=grace) for context in contexts]
    return list(zip(found, await member_standings(pool, found, member_id), strict=True))


async def check(
    pool: asyncpg.Pool, customer_key: str, feature_key: str, amount: int, *, now: datetime,
    grace: timedelta, cache: EntitlementCache | None = None, member: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """May the customer use `amount` of the feature now? Records nothing; with `cache`, the
    context comes from this process's snapshot when it holds a good one (a denial still asks
    the database for upgrade options). With `member`, the member's own limit counts too."""
    entitlement = await _one(pool, customer_key, feature_key, now=now, grace=grace, cache=cache)
    if member is not None:
        [standing] = await member_standings(pool, [entitlement], member)
        return await _check_member(pool, entitlement, standing, amount)
    if not entitlement.enabled:
        return await _denial(pool, entitlement, amount, "feature_not_in_plan")
    if not _fits(entitlement, amount):
        return await _denial(pool, entitlement, amount, "limit_reached")
    return _decision(entitlement, allowed=True, reason=None)


async def _check_member(
    pool: asyncpg.Pool, entitlement: Entitlement, standing: MemberStanding, amount: int
) -> dict[str, Any]:
    if not entitlement.enabled:
        body = await _denial(pool, entitlement, amount, "feature_not_in_plan")
    elif standing.remaining is not None and entitlement.metered and amount > standing.remaining:
        body = _decision(entitlement, allowed=False, reason="member_limit_reached")
        body["upgrade"] = None  # more seats or another plan would not raise a member's limit
    elif not _fits(entitlement, amount):
        body = await _denial(pool, entitlement, amount, "limit_reached")
    else:
        body = _decision(entitlement, allowed=True, reason=None)
    return body | {"member": standing.as_json()}


@dataclass(frozen=True, slots=True)
class TrackRequest:
    customer_key: str
    feature_key: str
    amount: int
    cost: Decimal | None
    idempotency_key: str
    metadata: dict[str, Any]
    member: str | None = None

    def fingerprint(self) -> bytes:
        body = {
            "feature": self.feature_key,
            "amount": self.amount,
            "cost": None if self.cost is None else str(self.cost),
            "metadata": self.metadata,
        }
        if self.member is not None:  # calls without a member hash as they always did
            body["member"] = self.member
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()


async def track(
    pool: asyncpg.Pool, request: TrackRequest, *, now: datetime, grace: timedelta
) -> dict[str, Any]:
    """Check and record in one statement (db.track); the same idempotency key replays the
    first answer. A call racing another with its key waits for it, is undone, and is then
    answered with the first call's response by calling again."""
    for _ in range(3):
        tracked = await db.track(
            pool,
            customer_key=request.customer_key,
            feature_key=request.feature_key,
            amount=request.amount,
            cost=request.cost,
            idempotency_key=request.idempotency_key,
            request_hash=request.fingerprint(),
            metadata=request.metadata,
            now=now,
            grace=grace,
            member=request.member,
        )
        if tracked.outcome == "no_feature":
            raise NotFound(f"No feature has key '{request.feature_key}'.")
        if tracked.outcome == "no_member":
            raise NotFound(
                f"Customer '{request.customer_key}' has no member '{request.member}' holding a "
                "seat; assign one with PUT /v1/customers/{customer_id}/members/{member_id}."
            )
        if tracked.outcome == "reused":
            raise IdempotencyKeyReused(
                "This idempotency_key was already used for a different usage record."
            )
        if tracked.response is not None:
            response = tracked.response
            # Refusals stored before every answer said `recorded` replay with it too.
            response.setdefault("recorded", False)
            return response
    raise RuntimeError("usage event neither recorded nor visible")


async def usage_history(
    pool: asyncpg.Pool, customer_key: str, *, feature_key: str | None, window: HistoryWindow
) -> list[db.UsagePeriod]:
    """The customer's usage over `window`, per feature and bucket, in one query; an unknown
    customer has none."""
    return await db.select_usage_history(
        pool,
        customer_key,
        feature_key=feature_key,
        since=window.start,
        until=window.end,
        bucket=window.granularity.bucket,
    )
