/**
 * The browser entry. `BrowserClient` reads one customer's entitlements with a short-lived
 * customer token (`bct_…`), the only credential a page may hold; it never takes an API key
 * (the service refuses those cross-origin anyway). `publicPlans` needs no credential at all.
 */

import {
  type CallOptions,
  type Credential,
  Transport,
  type TransportOptions,
  customerPath,
} from "./transport.js";
import type { Entitlements, Plan, PublicPlans } from "./types.js";

export interface BrowserClientOptions extends TransportOptions {
  /** The customer the token was issued for (your own id). */
  customerId: string;
  /**
   * The customer token your back end got from `POST /v1/customers/{id}/tokens`, or a function
   * that returns a current one (called before every request, so it can renew an expiring token).
   */
  token: Credential;
}

/** Calls billing-service from a web page, with a customer token. */
export class BrowserClient {
  readonly #http: Transport;
  readonly customerId: string;

  constructor(options: BrowserClientOptions) {
    this.#http = new Transport(options, options.token);
    this.customerId = options.customerId;
  }

  /**
   * Every feature as the customer may use it now. Polling is cheap: a repeated read sends the
   * last `ETag` and, while nothing changed, gets a bodiless 304 and returns the copy it kept.
   */
  async entitlements(options: CallOptions = {}): Promise<Entitlements> {
    const path = customerPath(this.customerId, "/entitlements");
    const answer = await this.#http.send<Entitlements>({
      method: "GET",
      path,
      retry: "safe",
      conditional: true,
      signal: options.signal,
    });
    return answer.body;
  }

  /** The public pricing list (see `publicPlans`). */
  async plans(options: CallOptions = {}): Promise<Plan[]> {
    return readPublicPlans(this.#http, options);
  }
}

/**
 * The plans a pricing page shows (`GET /v1/public/plans`): active, public plans in display
 * order with their prices and limits. No credential, so any page may call it.
 */
export async function publicPlans(options: TransportOptions & CallOptions): Promise<Plan[]> {
  return readPublicPlans(new Transport(options, null), options);
}

async function readPublicPlans(http: Transport, options: CallOptions): Promise<Plan[]> {
  const answer = await http.send<PublicPlans>({
    method: "GET",
    path: "/v1/public/plans",
    retry: "safe",
    anonymous: true,
    conditional: true,
    signal: options.signal,
  });
  return answer.body.data ?? [];
}

export * from "./errors.js";
export type { CallOptions, Credential, TransportOptions } from "./transport.js";
export type { Entitlement, Entitlements, Plan } from "./types.js";
