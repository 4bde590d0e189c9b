/**
 * The browser entry: `BrowserClient` reads one customer's entitlements with a short-lived
 * customer token (`bct_…`), the only credential a page may hold. It never takes an API key.
 */

import { type CallOptions, type Credential, Transport, type TransportOptions, customerPath } from "./transport.js";
import type { Entitlements } from "./types.js";

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

  /** Every feature as the customer may use it now. */
  async entitlements(options: CallOptions = {}): Promise<Entitlements> {
    const path = customerPath(this.customerId, "/entitlements");
    const answer = await this.#http.send<Entitlements>({
      method: "GET", path, retry: "safe", signal: options.signal,
    });
    return answer.body;
  }
}

export * from "./errors.js";
export type { CallOptions, Credential, TransportOptions } from "./transport.js";
export type { Entitlement, Entitlements } from "./types.js";
