/**
 * The one place that speaks HTTP: Bearer auth, a timeout per attempt, retries with backoff and
 * jitter that honour `Retry-After`, conditional reads (`ETag` → `If-None-Match` → 304), and
 * problem+json turned into `BillingError`s.
 */

import { type BillingError, connectionFailed, errorFromResponse } from "./errors.js";

/** A credential, or a function that returns the current one (called before every attempt). */
export type Credential = string | (() => string | Promise<string>);

/** Options shared by every client. */
export interface TransportOptions {
  /** The service's base URL, e.g. `https://billing.internal`. */
  baseUrl: string;
  /** Milliseconds one attempt may take before it counts as a connection failure (10 000). */
  timeoutMs?: number;
  /** Attempts after the first on a retryable failure (3); 0 turns retries off. */
  maxRetries?: number;
  /** The first backoff's upper bound; each retry doubles it, up to `maxBackoffMs` (250). */
  backoffMs?: number;
  /** The largest backoff between attempts, when the service gave no `Retry-After` (8 000). */
  maxBackoffMs?: number;
  /** A `Retry-After` longer than this is not waited for: the error is raised at once (30 000). */
  maxRetryAfterMs?: number;
  /** The `fetch` to use (the global one by default). */
  fetch?: typeof globalThis.fetch;
}

/**
 * Which failures a call may retry. `safe`: connection failures, 429 and 503, for calls that can
 * run twice without harm (reads, PUTs, and writes carrying an idempotency key). `rate-limited`:
 * only 429, which the service answers before doing any work.
 */
export type RetryPolicy = "safe" | "rate-limited";

/** One call, before it is sent. */
export interface Call {
  method: "GET" | "POST" | "PUT";
  path: string;
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
  retry: RetryPolicy;
  signal?: AbortSignal | undefined;
  /** Send no credential (public routes: a page's GET then needs no CORS preflight). */
  anonymous?: boolean;
  /** Keep the answer with its `ETag`, and revalidate it with `If-None-Match` next time. */
  conditional?: boolean;
}

/** A successful answer. */
export interface Answer<T> {
  status: number;
  body: T;
  headers: Headers;
}

/** Per-call options every method accepts. */
export interface CallOptions {
  /** Cancels the call, retries included. */
  signal?: AbortSignal;
}

/** Conditional reads kept per client (the least recently used are dropped first). */
const MAX_CACHED_READS = 1_000;

const DEFAULTS = {
  timeoutMs: 10_000,
  maxRetries: 3,
  backoffMs: 250,
  maxBackoffMs: 8_000,
  maxRetryAfterMs: 30_000,
};

/** Sends calls with a credential, retrying as each call's policy allows. */
export class Transport {
  readonly #baseUrl: string;
  readonly #credential: Credential | null;
  readonly #options: typeof DEFAULTS;
  readonly #fetch: typeof globalThis.fetch;
  readonly #cached = new Map<string, { etag: string; body: unknown }>();

  constructor(options: TransportOptions, credential: Credential | null) {
    if (!options.baseUrl) throw new TypeError("baseUrl is required");
    this.#baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#credential = credential;
    this.#options = {
      timeoutMs: options.timeoutMs ?? DEFAULTS.timeoutMs,
      maxRetries: options.maxRetries ?? DEFAULTS.maxRetries,
      backoffMs: options.backoffMs ?? DEFAULTS.backoffMs,
      maxBackoffMs: options.maxBackoffMs ?? DEFAULTS.maxBackoffMs,
      maxRetryAfterMs: options.maxRetryAfterMs ?? DEFAULTS.maxRetryAfterMs,
    };
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Send the call; the parsed JSON body of a 2xx, or a `BillingError`. */
  async send<T>(call: Call): Promise<Answer<T>> {
    if (!call.anonymous && this.#credential === null) {
      throw new TypeError(`${call.path} needs a credential`);
    }
    const url = this.#url(call);
    const cached = call.conditional ? this.#cached.get(url) : undefined;
    if (cached) call = { ...call, headers: { ...call.headers, "If-None-Match": cached.etag } };
    for (let attempt = 0; ; attempt++) {
      const canRetry = attempt < this.#options.maxRetries;
      let response: Response;
      let body: unknown;
      try {
        response = await this.#attempt(url, call);
        body = await readBody(response);
      } catch (error) {
        if (call.signal?.aborted) throw call.signal.reason ?? error;
        if (canRetry && call.retry === "safe") {
          await sleep(this.#backoff(attempt), call.signal);
          continue;
        }
        throw connectionFailed(describe(error));
      }
      if (response.status === 304 && cached) {
        this.#remember(url, cached.etag, cached.body);
        return { status: 304, body: cached.body as T, headers: response.headers };
      }
      if (response.ok) {
        const etag = response.headers.get("etag");
        if (call.conditional && etag) this.#remember(url, etag, body);
        return { status: response.status, body: body as T, headers: response.headers };
      }
      const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
      const error = errorFromResponse(response.status, body, response.headers, retryAfter);
      const delay = this.#retryDelay(error, call.retry, attempt, retryAfter);
      if (!canRetry || delay === null) throw error;
      await sleep(delay, call.signal);
    }
  }

  #remember(url: string, etag: string, body: unknown): void {
    this.#cached.delete(url);
    this.#cached.set(url, { etag, body });
    for (const oldest of this.#cached.keys()) {
      if (this.#cached.size <= MAX_CACHED_READS) break;
      this.#cached.delete(oldest);
    }
  }

  async #attempt(url: string, call: Call): Promise<Response> {
    const headers: Record<string, string> = { Accept: "application/json", ...call.headers };
    if (!call.anonymous) {
      const credential = this.#credential ?? "";
      const token = typeof credential === "function" ? await credential() : credential;
      headers["Authorization"] = `Bearer ${token}`;
    }
    const init: RequestInit = { method: call.method, headers };
    if (call.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(call.body);
    }
    const timeout = new AbortController();
    const timer = setTimeout(
      () => timeout.abort(new Error(`no answer within ${this.#options.timeoutMs} ms`)),
      this.#options.timeoutMs,
    );
    const cancel = (): void => timeout.abort(call.signal?.reason);
    call.signal?.addEventListener("abort", cancel, { once: true });
    try {
      return await this.#fetch(url, { ...init, signal: timeout.signal });
    } finally {
      clearTimeout(timer);
      call.signal?.removeEventListener("abort", cancel);
    }
  }

  /** How long to wait before retrying after `error`, or null when it is not retried. */
  #retryDelay(
    error: BillingError,
    policy: RetryPolicy,
    attempt: number,
    retryAfter: number | null,
  ): number | null {
    const retryable = error.status === 429 || (error.status === 503 && policy === "safe");
    if (!retryable) return null;
    if (retryAfter === null) return this.#backoff(attempt);
    const wait = retryAfter * 1000;
    if (wait > this.#options.maxRetryAfterMs) return null;
    // A little jitter on top, so that callers told the same second do not all come back at once.
    return wait + Math.random() * this.#options.backoffMs;
  }

  /** "Full jitter": anywhere up to the exponentially growing, capped bound. */
  #backoff(attempt: number): number {
    const bound = Math.min(this.#options.maxBackoffMs, this.#options.backoffMs * 2 ** attempt);
    return Math.random() * bound;
  }

  #url(call: Call): string {
    const url = new URL(this.#baseUrl + call.path);
    for (const [name, value] of Object.entries(call.query ?? {})) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    return url.toString();
  }
}

/** `/v1/customers/{id}…` with the id escaped as a path segment. */
export function customerPath(customerId: string, rest = ""): string {
  return `/v1/customers/${encodeURIComponent(customerId)}${rest}`;
}

/** A fresh idempotency key: 128 random bits, in hex (no secure context needed). */
export function newIdempotencyKey(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** Seconds from a `Retry-After` header (delta-seconds or an HTTP date); null if absent. */
export function parseRetryAfter(value: string | null): number | null {
  if (value === null || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

async function readBody(response: Response): Promise<unknown> {
  const text = await response.text();
  if (text === "") return undefined;
  const type = response.headers.get("content-type") ?? "";
  if (!type.includes("json")) return text;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    return cause instanceof Error ? `${error.message} (${cause.message})` : error.message;
  }
  return String(error);
}
