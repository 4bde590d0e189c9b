/**
 * Retries through a real proxy that injects 503s, 429s, lost connections and silence: the same
 * idempotency key is resent, usage is counted once, and what must not be retried is not.
 */

import assert from "node:assert/strict";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";

import { BillingClient, ConnectionFailed, RateLimited, Unavailable } from "@billing-service/client";

import { BILLING_URL, USAGE_KEY, KEY, customerId } from "./env.js";
import { type FaultProxy, startProxy } from "./proxy.js";

let proxy: FaultProxy;
const direct = new BillingClient({ baseUrl: BILLING_URL, apiKey: USAGE_KEY });
const fast = { backoffMs: 10, maxBackoffMs: 50 };

before(async () => {
  proxy = await startProxy(BILLING_URL);
});
after(async () => {
  await proxy.close();
});

function through(
  options: Partial<{ maxRetries: number; timeoutMs: number; maxRetryAfterMs: number }> = {},
  apiKey = USAGE_KEY,
): BillingClient {
  proxy.seen.length = 0;
  proxy.faults.length = 0;
  return new BillingClient({ baseUrl: proxy.url, apiKey, ...fast, ...options });
}

/** The Idempotency-Key of every request the proxy saw. */
function keysSent(): (string | string[] | undefined)[] {
  return proxy.seen.map((request) => request.headers["idempotency-key"]);
}

/** The URL of a loopback port that was just free: nothing answers there. */
async function closedPort(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

async function used(customer: string): Promise<number | null | undefined> {
  const entitlements = await direct.entitlements(customer);
  return entitlements.features.find((feature) => feature.feature === "ai_calls")?.used;
}

describe("conditional reads", () => {
  it("a second read of entitlements revalidates with the ETag and returns the kept copy on 304", async () => {
    const client = through();
    const customer = customerId("etag");
    await direct.track(customer, "ai_calls");
    const first = await client.entitlements(customer);
    const second = await client.entitlements(customer);
    assert.deepEqual(second, first);
    assert.equal(proxy.seen[0]?.headers["if-none-match"], undefined);
    assert.ok(proxy.seen[1]?.headers["if-none-match"]);
    assert.equal(proxy.seen[1]?.answered, 304);
    await direct.track(customer, "ai_calls");
    const third = await client.entitlements(customer);
    assert.equal(proxy.seen[2]?.answered, 200);
    assert.equal(third.features.find((feature) => feature.feature === "ai_calls")?.used, 2);
  });
});

describe("retries", () => {
  it("503s with Retry-After are waited out, the key is resent, and the usage counts once", async () => {
    const client = through();
    const customer = customerId("r503");
    proxy.faults.push(
      { kind: "status", status: 503, retryAfter: "1" },
      { kind: "status", status: 503, retryAfter: "1" },
    );
    const started = Date.now();
    const tracked = await client.track(customer, "ai_calls");
    assert.ok(Date.now() - started >= 2000, "Retry-After: 1 was honoured twice");
    assert.equal(tracked.recorded, true);
    assert.equal(proxy.seen.length, 3);
    assert.equal(new Set(keysSent()).size, 1);
    assert.match(String(keysSent()[0]), /^[0-9a-f]{32}$/);
    assert.equal(await used(customer), 1);
  });

  it("429s are retried the same way", async () => {
    const client = through();
    const customer = customerId("r429");
    proxy.faults.push(
      { kind: "status", status: 429, retryAfter: "1" },
      { kind: "status", status: 429 },
    );
    const tracked = await client.track(customer, "ai_calls", { amount: 2 });
    assert.equal(tracked.used, 2);
    assert.equal(proxy.seen.length, 3);
    assert.equal(new Set(keysSent()).size, 1);
    assert.equal(await used(customer), 2);
  });

  it("an answer lost after the service recorded the usage is retried with the same key and counts once", async () => {
    const client = through();
    const customer = customerId("lost");
    proxy.faults.push({ kind: "reset-after" }, { kind: "reset-before" });
    const tracked = await client.track(customer, "ai_calls");
    assert.equal(tracked.used, 1);
    assert.equal(proxy.seen.length, 3);
    assert.equal(new Set(keysSent()).size, 1);
    assert.equal(await used(customer), 1);
  });

  it("an attempt that gets no answer within timeoutMs is retried", async () => {
    const client = through({ timeoutMs: 500 });
    const customer = customerId("hang");
    proxy.faults.push({ kind: "hang" });
    const tracked = await client.track(customer, "ai_calls");
    assert.equal(tracked.used, 1);
    assert.equal(await used(customer), 1);
  });

  it("once the retries are spent the last problem is raised, with its Retry-After", async () => {
    const client = through({ maxRetries: 2 });
    proxy.faults.push(
      ...Array.from(
        { length: 3 },
        () => ({ kind: "status", status: 503, retryAfter: "0" }) as const,
      ),
    );
    await assert.rejects(client.check(customerId("spent"), "ai_calls"), (error) => {
      assert.ok(error instanceof Unavailable);
      assert.equal(error.retryAfter, 0);
      assert.equal(error.requestId, "proxy-request");
      return true;
    });
    assert.equal(proxy.seen.length, 3);
  });

  it("a Retry-After longer than maxRetryAfterMs is raised at once", async () => {
    const client = through({ maxRetryAfterMs: 5_000 });
    proxy.faults.push({ kind: "status", status: 429, retryAfter: "120" });
    await assert.rejects(client.check(customerId("long"), "ai_calls"), (error) => {
      assert.ok(error instanceof RateLimited);
      assert.equal(error.retryAfter, 120);
      return true;
    });
    assert.equal(proxy.seen.length, 1);
  });

  it("a subscription change is not retried after a 503 or a lost connection, only after a 429", async () => {
    const client = through({}, KEY);
    const customer = customerId("nosub");
    proxy.faults.push({ kind: "status", status: 503 });
    await assert.rejects(client.subscription.cancel(customer), Unavailable);
    assert.equal(proxy.seen.length, 1);
    proxy.faults.push({ kind: "reset-before" });
    await assert.rejects(client.subscription.resume(customer), ConnectionFailed);
    assert.equal(proxy.seen.length, 2);
    proxy.faults.push({ kind: "status", status: 429, retryAfter: "0" });
    await assert.rejects(
      client.subscription.resume(customer),
      (error: Error) => error.name === "NotFound",
    );
    assert.equal(proxy.seen.length, 4);
  });

  it("checkout resends one generated Idempotency-Key on every attempt", async () => {
    const client = through({}, KEY);
    proxy.faults.push({ kind: "reset-before" }, { kind: "status", status: 503 });
    // Its answer does not matter here (the customer does not exist): the attempts do.
    await assert.rejects(
      client.checkout({
        customer_id: customerId("nobody"),
        price: "pro_monthly",
        success_url: "https://app.example.com/done",
        cancel_url: "https://app.example.com/cancel",
      }),
    );
    const keys = keysSent();
    assert.equal(keys.length, 3);
    assert.ok(keys[0]);
    assert.equal(new Set(keys).size, 1);
  });

  it("a service nobody answers for is a ConnectionFailed after the retries", async () => {
    const client = new BillingClient({
      baseUrl: await closedPort(),
      apiKey: USAGE_KEY,
      maxRetries: 2,
      ...fast,
    });
    await assert.rejects(client.check(customerId("void"), "ai_calls"), (error) => {
      assert.ok(error instanceof ConnectionFailed);
      assert.equal(error.status, 0);
      assert.match(error.detail, /ECONNREFUSED/);
      return true;
    });
  });

  it("an aborted call stops retrying", async () => {
    const client = through();
    proxy.faults.push({ kind: "status", status: 503, retryAfter: "5" });
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("caller gave up")), 200);
    await assert.rejects(
      client.check(customerId("abort"), "ai_calls", 1, { signal: controller.signal }),
      /caller gave up/,
    );
    assert.equal(proxy.seen.length, 1);
  });
});
