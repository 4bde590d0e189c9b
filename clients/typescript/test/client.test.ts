/** BillingClient against a live service: every method, and problems as typed errors. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  BillingClient,
  BillingError,
  BrowserClient,
  Conflict,
  Forbidden,
  NotFound,
  Unauthenticated,
  ValidationFailed,
  publicPlans,
} from "@billing-service/client";

import { BILLING_URL, KEY, USAGE_KEY, customerId } from "./env.js";

const billing = new BillingClient({ baseUrl: BILLING_URL, apiKey: KEY });
const usage = new BillingClient({ baseUrl: BILLING_URL, apiKey: USAGE_KEY });
const RETURN_URL = "https://app.example.com/billing";

describe("usage", () => {
  it("check answers the decision for a customer on the default plan and records nothing", async () => {
    const customer = customerId("check");
    const decision = await usage.check(customer, "ai_calls");
    assert.equal(decision.allowed, true);
    assert.equal(decision.feature, "ai_calls");
    assert.equal(decision.limit, 5);
    assert.equal(decision.used, 0);
    assert.equal((await usage.check(customer, "ai_calls", 5)).allowed, true);
    assert.equal((await usage.check(customer, "ai_calls", 6)).allowed, false);
  });

  it("track records each call once, and a repeated idempotency key counts once", async () => {
    const customer = customerId("track");
    const first = await usage.track(customer, "ai_calls", {
      amount: 2,
      cost: "0.25",
      metadata: { model: "m1" },
    });
    assert.equal(first.recorded, true);
    assert.equal(first.used, 2);
    const keyed = await usage.track(customer, "ai_calls", { idempotencyKey: "ts-one-key" });
    const again = await usage.track(customer, "ai_calls", { idempotencyKey: "ts-one-key" });
    assert.deepEqual(again, keyed);
    assert.equal(again.used, 3);
    const refused = await usage.track(customer, "ai_calls", { amount: 5 });
    assert.equal(refused.allowed, false);
    assert.equal(refused.recorded, false);
    assert.equal(refused.reason, "limit_reached");
    assert.equal(refused.upgrade?.plan, "pro");
  });

  it("the same idempotency key with another body is a Conflict", async () => {
    const customer = customerId("reuse");
    await usage.track(customer, "ai_calls", { idempotencyKey: "ts-reused" });
    await assert.rejects(
      usage.track(customer, "ai_calls", { amount: 2, idempotencyKey: "ts-reused" }),
      (error) => {
        assert.ok(error instanceof Conflict);
        assert.equal(error.status, 409);
        return true;
      },
    );
  });

  it("entitlements and the usage report reflect what was tracked", async () => {
    const customer = customerId("entitled");
    await usage.track(customer, "ai_calls", { amount: 3, cost: 1.5 });
    const entitlements = await usage.entitlements(customer);
    assert.equal(entitlements.customer_id, customer);
    assert.equal(entitlements.plan, "free");
    const ai = entitlements.features.find((feature) => feature.feature === "ai_calls");
    assert.equal(ai?.used, 3);
    assert.equal(ai?.remaining, 2);
    const report = await usage.usage(customer, { feature: "ai_calls", granularity: "day" });
    assert.equal(report.customer_id, customer);
    assert.equal(report.data.length, 1);
    assert.equal(report.data[0]?.used, 3);
    assert.equal(report.data[0]?.cost, "1.500000000000");
  });

  it("an invalid amount is a ValidationFailed naming the field", async () => {
    await assert.rejects(usage.check(customerId("bad"), "ai_calls", 0), (error) => {
      assert.ok(error instanceof ValidationFailed);
      assert.ok(error instanceof BillingError);
      assert.equal(error.slug, "validation-failed");
      assert.ok(
        error.errors.some((field) => field.field === "amount"),
        JSON.stringify(error.errors),
      );
      assert.ok(error.requestId);
      return true;
    });
  });
});

describe("credentials", () => {
  it("an unknown key is Unauthenticated, with the problem's type and request id", async () => {
    const stranger = new BillingClient({
      baseUrl: BILLING_URL,
      apiKey: "bsk_not_a_real_key_at_all_0000",
    });
    await assert.rejects(stranger.check(customerId("anon"), "ai_calls"), (error) => {
      assert.ok(error instanceof Unauthenticated);
      assert.equal(error.type, "urn:billing-service:problem:unauthenticated");
      assert.equal(error.status, 401);
      assert.ok(error.requestId);
      return true;
    });
  });

  it("a key without the route's scope is Forbidden", async () => {
    await assert.rejects(usage.customers.get(customerId("scope")), Forbidden);
  });

  it("the key may come from a function, asked before every call", async () => {
    let asked = 0;
    const client = new BillingClient({
      baseUrl: BILLING_URL,
      apiKey: () => {
        asked += 1;
        return USAGE_KEY;
      },
    });
    await client.check(customerId("fn"), "ai_calls");
    await client.check(customerId("fn"), "ai_calls");
    assert.equal(asked, 2);
  });
});

describe("customers and billing", () => {
  it("customers.upsert creates then updates, and customers.get reads it back", async () => {
    const customer = customerId("cust");
    const created = await billing.customers.upsert(customer, {
      email: "ada@example.com",
      name: "Ada",
    });
    assert.equal(created.customer_id, customer);
    assert.equal(created.plan?.key, "free");
    const updated = await billing.customers.upsert(customer, {
      email: "ada@example.com",
      name: "Ada L.",
    });
    assert.equal(updated.name, "Ada L.");
    const read = await billing.customers.get(customer);
    assert.equal(read.name, "Ada L.");
    assert.equal(read.subscription, null);
  });

  it("an unknown customer is a NotFound", async () => {
    await assert.rejects(billing.customers.get(customerId("nobody")), (error) => {
      assert.ok(error instanceof NotFound);
      assert.equal(error.slug, "not-found");
      return true;
    });
  });

  it("the subscription of a customer without one is a NotFound, and cancelling it fails typed", async () => {
    const customer = customerId("nosub");
    await billing.customers.upsert(customer, { email: "nosub@example.com" });
    await assert.rejects(billing.subscription.get(customer), NotFound);
    await assert.rejects(billing.subscription.cancel(customer), BillingError);
    await assert.rejects(billing.subscription.resume(customer), BillingError);
    await assert.rejects(billing.subscription.change(customer, "pro_yearly"), BillingError);
  });

  it("checkout opens a session, and the same idempotency key returns the same session", async () => {
    const customer = customerId("buyer");
    await billing.customers.upsert(customer, { email: "buyer@example.com" });
    const input = {
      customer_id: customer,
      price: "pro_monthly",
      success_url: `${RETURN_URL}/done`,
      cancel_url: `${RETURN_URL}/cancel`,
    };
    const session = await billing.checkout(input, { idempotencyKey: `ts-${customer}` });
    assert.equal(session.mode, "subscription");
    assert.ok(session.url?.startsWith("https://"));
    const again = await billing.checkout(input, { idempotencyKey: `ts-${customer}` });
    assert.equal(again.id, session.id);
    const status = await billing.checkoutSession(session.id);
    assert.equal(status.id, session.id);
    assert.equal(status.customer.customer_id, customer);
    const portal = await billing.portal(customer, RETURN_URL);
    assert.ok(portal.url.startsWith("https://"));
  });

  it("plans lists the live catalog in display order", async () => {
    const plans = await usage.plans();
    assert.deepEqual(
      plans.map((plan) => plan.key),
      ["free", "pro", "credits", "team"],
    );
    const pro = plans[1];
    assert.ok(
      pro?.prices.some((price) => price.lookup_key === "pro_monthly" && price.amount === 1900),
    );
  });
});

describe("public plans", () => {
  it("publicPlans reads the pricing list with no credential", async () => {
    const plans = await publicPlans({ baseUrl: BILLING_URL });
    assert.deepEqual(
      plans.map((plan) => plan.key),
      ["free", "pro", "credits", "team"],
    );
    assert.ok(plans.every((plan) => plan.public && plan.active));
  });
});

describe("customer tokens", () => {
  it("a token read through BrowserClient shows the customer's entitlements", async () => {
    const customer = customerId("token");
    await usage.track(customer, "ai_calls");
    const { token, expires_at } = await usage.customerToken(customer, { ttl_seconds: 120 });
    assert.ok(token.startsWith("bct_"));
    assert.ok(Date.parse(expires_at) > Date.now());
    const browser = new BrowserClient({ baseUrl: BILLING_URL, customerId: customer, token });
    const entitlements = await browser.entitlements();
    assert.equal(entitlements.customer_id, customer);
    assert.equal(entitlements.features.find((feature) => feature.feature === "ai_calls")?.used, 1);
  });

  it("a token cannot read another customer's entitlements", async () => {
    const { token } = await usage.customerToken(customerId("owner"));
    const browser = new BrowserClient({
      baseUrl: BILLING_URL,
      customerId: customerId("other"),
      token,
    });
    await assert.rejects(browser.entitlements(), BillingError);
  });
});
