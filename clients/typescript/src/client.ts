/**
 * `BillingClient`: the server-side client, authenticated with an API key. Every method is one
 * call to the service; `track` and `checkout` carry an idempotency key made once per call, so
 * the client's own retries never count or charge twice.
 */

import {
  type CallOptions,
  type Credential,
  Transport,
  type TransportOptions,
  customerPath,
  newIdempotencyKey,
} from "./transport.js";
import type {
  CancelInput,
  CheckInput,
  CheckoutInput,
  CheckoutSession,
  CheckoutSessionStatus,
  Customer,
  CustomerInput,
  CustomerToken,
  Entitlements,
  Plan,
  PlanPage,
  PortalSession,
  Subscription,
  SubscriptionChange,
  TokenInput,
  TrackInput,
  TrackedUsage,
  UsageDecision,
  UsageQuery,
  UsageReport,
} from "./types.js";

export interface BillingClientOptions extends TransportOptions {
  /** A `bsk_…` API key (or a function returning the current one). Never ship it to a browser. */
  apiKey: Credential;
}

export interface TrackOptions extends CallOptions {
  /** Units used; negative gives units back (1). */
  amount?: number;
  /** What the call cost you, as a number or an exact decimal string. */
  cost?: TrackInput["cost"];
  /** Labels kept with the usage event. */
  metadata?: TrackInput["metadata"];
  /** Your own key, to make a retry of yours count once too; one is made when absent. */
  idempotencyKey?: string;
}

export interface CheckoutOptions extends CallOptions {
  /** Your own key, to make a retry of yours open the same session; one is made when absent. */
  idempotencyKey?: string;
}

/** Calls billing-service with an API key, from a server. */
export class BillingClient {
  readonly #http: Transport;

  /** Customers of your app, keyed by your own ids. */
  readonly customers: {
    /** Create or update the customer (idempotent). */
    upsert(customerId: string, input: CustomerInput, options?: CallOptions): Promise<Customer>;
    /** The customer, the plan they are entitled to now, and their subscription. */
    get(customerId: string, options?: CallOptions): Promise<Customer>;
  };

  /** The customer's subscription. */
  readonly subscription: {
    /** The subscription that matters (the one granting the best plan). */
    get(customerId: string, options?: CallOptions): Promise<Subscription>;
    /** Move to another recurring price (its lookup key); upgrades now, downgrades later. */
    change(customerId: string, price: string, options?: CallOptions): Promise<SubscriptionChange>;
    /** Cancel at the period end (the default) or now with `{ at_period_end: false }`. */
    cancel(customerId: string, input?: CancelInput, options?: CallOptions): Promise<Subscription>;
    /** Resume a paused subscription, or undo a pending cancellation. */
    resume(customerId: string, options?: CallOptions): Promise<Subscription>;
  };

  constructor(options: BillingClientOptions) {
    this.#http = new Transport(options, options.apiKey);
    const http = this.#http;
    this.customers = {
      async upsert(customerId, input, callOptions) {
        const path = customerPath(customerId);
        const answer = await http.send<Customer>({
          method: "PUT",
          path,
          body: input,
          retry: "safe",
          signal: callOptions?.signal,
        });
        return answer.body;
      },
      async get(customerId, callOptions) {
        const path = customerPath(customerId);
        return (
          await http.send<Customer>({
            method: "GET",
            path,
            retry: "safe",
            signal: callOptions?.signal,
          })
        ).body;
      },
    };
    // Subscription changes carry no idempotency key: only a 429 (refused before any work) is
    // retried, never a lost connection or a 503 that may have come after Stripe acted.
    this.subscription = {
      async get(customerId, callOptions) {
        const path = customerPath(customerId, "/subscription");
        return (
          await http.send<Subscription>({
            method: "GET",
            path,
            retry: "safe",
            signal: callOptions?.signal,
          })
        ).body;
      },
      async change(customerId, price, callOptions) {
        const path = customerPath(customerId, "/subscription/change");
        const answer = await http.send<SubscriptionChange>({
          method: "POST",
          path,
          body: { price },
          retry: "rate-limited",
          signal: callOptions?.signal,
        });
        return answer.body;
      },
      async cancel(customerId, input = {}, callOptions) {
        const path = customerPath(customerId, "/subscription/cancel");
        const answer = await http.send<Subscription>({
          method: "POST",
          path,
          body: input,
          retry: "rate-limited",
          signal: callOptions?.signal,
        });
        return answer.body;
      },
      async resume(customerId, callOptions) {
        const path = customerPath(customerId, "/subscription/resume");
        const answer = await http.send<Subscription>({
          method: "POST",
          path,
          retry: "rate-limited",
          signal: callOptions?.signal,
        });
        return answer.body;
      },
    };
  }

  /** May the customer use `amount` of the feature now? Records nothing. */
  async check(
    customerId: string,
    feature: string,
    amount = 1,
    options: CallOptions = {},
  ): Promise<UsageDecision> {
    const body: CheckInput = { customer_id: customerId, feature, amount };
    const answer = await this.#http.send<UsageDecision>({
      method: "POST",
      path: "/v1/usage/check",
      body,
      retry: "safe",
      signal: options.signal,
    });
    return answer.body;
  }

  /** Check and record usage in one atomic step; counted once however often it is retried. */
  async track(
    customerId: string,
    feature: string,
    options: TrackOptions = {},
  ): Promise<TrackedUsage> {
    const body: TrackInput = { customer_id: customerId, feature, amount: options.amount ?? 1 };
    if (options.cost !== undefined) body.cost = options.cost;
    if (options.metadata !== undefined) body.metadata = options.metadata;
    const answer = await this.#http.send<TrackedUsage>({
      method: "POST",
      path: "/v1/usage/track",
      body,
      // One key per call, made before the first attempt: every retry resends it.
      headers: { "Idempotency-Key": options.idempotencyKey ?? newIdempotencyKey() },
      retry: "safe",
      signal: options.signal,
    });
    return answer.body;
  }

  /** Every feature as the customer may use it now (revalidated with its ETag when read again). */
  async entitlements(customerId: string, options: CallOptions = {}): Promise<Entitlements> {
    const path = customerPath(customerId, "/entitlements");
    const answer = await this.#http.send<Entitlements>({
      method: "GET",
      path,
      retry: "safe",
      conditional: true,
      signal: options.signal,
    });
    return answer.body;
  }

  /** Usage and cost per feature and time bucket, for reports. */
  async usage(
    customerId: string,
    query: UsageQuery = {},
    options: CallOptions = {},
  ): Promise<UsageReport> {
    const path = customerPath(customerId, "/usage");
    const answer = await this.#http.send<UsageReport>({
      method: "GET",
      path,
      query,
      retry: "safe",
      signal: options.signal,
    });
    return answer.body;
  }

  /** Open a Stripe Checkout session; send the customer to its `url`. */
  async checkout(input: CheckoutInput, options: CheckoutOptions = {}): Promise<CheckoutSession> {
    const answer = await this.#http.send<CheckoutSession>({
      method: "POST",
      path: "/v1/checkout/sessions",
      body: input,
      headers: { "Idempotency-Key": options.idempotencyKey ?? newIdempotencyKey() },
      retry: "safe",
      signal: options.signal,
    });
    return answer.body;
  }

  /** A Checkout session's status; a completed one syncs the customer from Stripe at once. */
  async checkoutSession(
    sessionId: string,
    options: CallOptions = {},
  ): Promise<CheckoutSessionStatus> {
    const path = `/v1/checkout/sessions/${encodeURIComponent(sessionId)}`;
    return (
      await this.#http.send<CheckoutSessionStatus>({
        method: "GET",
        path,
        retry: "safe",
        signal: options.signal,
      })
    ).body;
  }

  /** Open a Stripe customer portal session; send the customer to its `url`. */
  async portal(
    customerId: string,
    returnUrl: string,
    options: CallOptions = {},
  ): Promise<PortalSession> {
    const answer = await this.#http.send<PortalSession>({
      method: "POST",
      path: "/v1/portal/sessions",
      body: { customer_id: customerId, return_url: returnUrl },
      retry: "safe", // a second session is harmless: the customer uses one of them
      signal: options.signal,
    });
    return answer.body;
  }

  /** A short-lived token a browser may use to read this customer's entitlements (usage scope). */
  async customerToken(
    customerId: string,
    input: TokenInput = {},
    options: CallOptions = {},
  ): Promise<CustomerToken> {
    const path = customerPath(customerId, "/tokens");
    const answer = await this.#http.send<CustomerToken>({
      method: "POST",
      path,
      body: input,
      retry: "safe",
      signal: options.signal,
    });
    return answer.body;
  }

  /** Every active plan in display order, with prices and feature limits (all pages). */
  async plans(options: CallOptions = {}): Promise<Plan[]> {
    const plans: Plan[] = [];
    let cursor: string | undefined;
    do {
      const answer = await this.#http.send<PlanPage>({
        method: "GET",
        path: "/v1/plans",
        query: { limit: 1000, cursor },
        retry: "safe",
        conditional: true,
        signal: options.signal,
      });
      plans.push(...(answer.body.data ?? []));
      cursor = answer.body.has_more ? (answer.body.next_cursor ?? undefined) : undefined;
    } while (cursor !== undefined);
    return plans;
  }
}
