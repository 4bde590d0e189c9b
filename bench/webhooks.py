"""Stripe webhook events for the intake scenario: distinct `customer.updated` events in Stripe's
shape, signed the way Stripe signs them, written where `webhook.lua` reads them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from bench.processes import ROOT


def write_signed_events(
    prefix: Path, *, secret: str, threads: int, per_thread: int, run: str
) -> None:
    """`prefix.N` for each wrk thread N, one `signature<TAB>body` line per event, each with a
    `Stripe-Signature` made now (valid for Stripe's 5 minute tolerance)."""
    fixtures: dict[str, Any] = json.loads(
        (ROOT / "tests" / "fixtures" / "stripe_objects.json").read_text()
    )
    now = int(time.time())
    key = secret.encode()
    for thread in range(1, threads + 1):
        with prefix.with_name(f"{prefix.name}.{thread}").open("w") as out:
            for n in range(per_thread):
                customer = fixtures["customer"] | {"id": f"cus_bench_{n}"}
                event = fixtures["event"] | {
                    "id": f"evt_{run}_{thread}_{n}",
                    "type": "customer.updated",
                    "livemode": False,
                    "created": now,
                    "data": {"object": customer},
                }
                body = json.dumps(event, separators=(",", ":"))
                digest = hmac.new(key, f"{now}.{body}".encode(), hashlib.sha256).hexdigest()
                out.write(f"t={now},v1={digest}\t{body}\n")
