/**
 * The error tree: every failure of a call is a `BillingError`, built from the service's
 * RFC 9457 problem+json body, so callers catch a family with one `instanceof`.
 *
 *     BillingError                 any problem the service answered (or none at all)
 *     ├── BadRequest               400 malformed-request, 413, 415
 *     ├── Unauthenticated          401 unauthenticated
 *     ├── PaymentFailed            402 payment-failed
 *     ├── Forbidden                403 forbidden
 *     ├── NotFound                 404 not-found
 *     ├── Conflict                 409 conflict, idempotency-key-reused, subscription-exists, …
 *     ├── ValidationFailed         422 validation-failed, currency-mismatch (with `errors`)
 *     ├── RateLimited              429 rate-limited (with `retryAfter`)
 *     ├── StripeRequestFailed      502 stripe-request-failed
 *     ├── Unavailable              503 service-unavailable, database-unavailable, … (`retryAfter`)
 *     └── ConnectionFailed         no answer: refused, reset, timed out (status 0)
 */

import type { components } from "./schema.js";

export type Problem = components["schemas"]["Problem"];
export type FieldError = components["schemas"]["ValidationProblem"]["errors"][number];

/** The URN prefix of every problem `type` the service sends. */
export const PROBLEM_TYPE_PREFIX = "urn:billing-service:problem:";

/** What a `BillingError` is built from. */
export interface BillingErrorInit {
  status: number;
  type: string;
  title: string;
  detail: string;
  instance?: string | null;
  requestId?: string | null;
  retryAfter?: number | null;
  errors?: FieldError[];
}

/** Base of every error a call raises; carries the problem's fields. */
export class BillingError extends Error {
  /** HTTP status of the answer; 0 when there was none. */
  readonly status: number;
  /** The problem's stable `type` URN, e.g. `urn:billing-service:problem:not-found`. */
  readonly type: string;
  readonly title: string;
  readonly detail: string;
  readonly instance: string | null;
  /** The service's request id, to quote when asking the operator about this call. */
  readonly requestId: string | null;
  /** Seconds the service asked to wait (`Retry-After`), when it said. */
  readonly retryAfter: number | null;
  /** Invalid fields of the request (422 only), each with its dotted path. */
  readonly errors: FieldError[];

  constructor(init: BillingErrorInit) {
    super(`${init.title}: ${init.detail}`);
    this.name = new.target.name;
    this.status = init.status;
    this.type = init.type;
    this.title = init.title;
    this.detail = init.detail;
    this.instance = init.instance ?? null;
    this.requestId = init.requestId ?? null;
    this.retryAfter = init.retryAfter ?? null;
    this.errors = init.errors ?? [];
  }

  /** The last part of `type` (`not-found`, `idempotency-key-reused`), handy in a `switch`. */
  get slug(): string {
    return this.type.startsWith(PROBLEM_TYPE_PREFIX)
      ? this.type.slice(PROBLEM_TYPE_PREFIX.length)
      : this.type;
  }
}

/** The request could not be read: not JSON, too large, or not `application/json`. */
export class BadRequest extends BillingError {}
/** The API key or customer token is missing, unknown, revoked or expired. */
export class Unauthenticated extends BillingError {}
/** Stripe declined the payment; `detail` is Stripe's message for the customer. */
export class PaymentFailed extends BillingError {}
/** The credential is valid but lacks the scope the route needs. */
export class Forbidden extends BillingError {}
/** No such customer, subscription, price or route. */
export class NotFound extends BillingError {}
/** The request conflicts with the current state; `slug` says how. */
export class Conflict extends BillingError {}
/** Invalid fields, each listed in `errors`. */
export class ValidationFailed extends BillingError {}
/** Too many requests; retried by the client, raised once the retries are spent. */
export class RateLimited extends BillingError {}
/** Stripe refused the request the service made for this call. */
export class StripeRequestFailed extends BillingError {}
/** The service or one of its dependencies is down; retried like `RateLimited`. */
export class Unavailable extends BillingError {}
/** No answer at all: connection refused or reset, or the timeout passed. */
export class ConnectionFailed extends BillingError {}

const BY_STATUS: Record<number, new (init: BillingErrorInit) => BillingError> = {
  400: BadRequest,
  401: Unauthenticated,
  402: PaymentFailed,
  403: Forbidden,
  404: NotFound,
  409: Conflict,
  413: BadRequest,
  415: BadRequest,
  422: ValidationFailed,
  429: RateLimited,
  502: StripeRequestFailed,
  503: Unavailable,
};

/** The error for an answer that is not a success; `body` is its parsed JSON, if any. */
export function errorFromResponse(
  status: number,
  body: unknown,
  headers: Headers,
  retryAfter: number | null,
): BillingError {
  const problem = isObject(body) ? body : {};
  const text = (key: string): string | null =>
    typeof problem[key] === "string" ? (problem[key] as string) : null;
  const errors = Array.isArray(problem["errors"]) ? (problem["errors"] as FieldError[]) : [];
  const Class = BY_STATUS[status] ?? BillingError;
  return new Class({
    status,
    type: text("type") ?? "about:blank",
    title: text("title") ?? `HTTP ${status}`,
    detail: text("detail") ?? `The service answered ${status} without a problem document.`,
    instance: text("instance"),
    requestId: text("request_id") ?? headers.get("x-request-id"),
    retryAfter,
    errors,
  });
}

/** The error for a call that got no answer, after its retries. */
export function connectionFailed(detail: string): ConnectionFailed {
  return new ConnectionFailed({
    status: 0,
    type: "urn:billing-service:client:connection-failed",
    title: "Connection failed",
    detail,
  });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
