/**
 * `@billing-service/client`: call billing-service from Node 20+ (or any runtime with `fetch`).
 * Browsers use `@billing-service/client/browser`, which takes a customer token only.
 */

export { BillingClient } from "./client.js";
export type { BillingClientOptions, CheckoutOptions, TrackOptions } from "./client.js";
export { BrowserClient, publicPlans } from "./browser.js";
export type { BrowserClientOptions } from "./browser.js";
export * from "./errors.js";
export type { CallOptions, Credential, RetryPolicy, TransportOptions } from "./transport.js";
export type * from "./types.js";
export type { components, operations, paths } from "./schema.js";
