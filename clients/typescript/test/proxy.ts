/**
 * A real HTTP proxy in front of the service that injects faults: answers 503 or 429 itself,
 * drops the connection before or after forwarding, or never answers. It records what it saw.
 */

import { type IncomingMessage, type ServerResponse, createServer } from "node:http";
import type { AddressInfo } from "node:net";

export type Fault =
  | { kind: "status"; status: 429 | 503; retryAfter?: string }
  | { kind: "reset-before" } // the service never sees the request
  | { kind: "reset-after" } // the service handles it, the answer is lost
  | { kind: "hang" }; // no answer at all

export interface Seen {
  method: string;
  path: string;
  body: string;
  headers: IncomingMessage["headers"];
  /** The service's status, when the request was forwarded and answered. */
  answered?: number;
}

export interface FaultProxy {
  url: string;
  seen: Seen[];
  /** Faults for the next requests, one each, in order; afterwards requests pass through. */
  faults: Fault[];
  close(): Promise<void>;
}

export async function startProxy(target: string): Promise<FaultProxy> {
  const seen: Seen[] = [];
  const faults: Fault[] = [];
  const server = createServer((request, response) => {
    void handle(request, response);
  });

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const record: Seen = {
      method: request.method ?? "GET",
      path: request.url ?? "/",
      body,
      headers: request.headers,
    };
    seen.push(record);
    const fault = faults.shift();
    if (fault?.kind === "hang") return;
    if (fault?.kind === "reset-before") {
      request.socket.destroy();
      return;
    }
    if (fault?.kind === "status") {
      const headers: Record<string, string> = { "content-type": "application/problem+json" };
      if (fault.retryAfter !== undefined) headers["retry-after"] = fault.retryAfter;
      response.writeHead(fault.status, headers);
      response.end(
        JSON.stringify({
          type: `urn:billing-service:problem:${fault.status === 429 ? "rate-limited" : "service-unavailable"}`,
          title: fault.status === 429 ? "Too many requests" : "Service unavailable",
          status: fault.status,
          detail: "Injected by the test proxy.",
          instance: request.url,
          request_id: "proxy-request",
        }),
      );
      return;
    }
    const forwarded: Record<string, string> = {};
    for (const [name, value] of Object.entries(request.headers)) {
      if (typeof value === "string" && !["host", "connection", "content-length"].includes(name)) {
        forwarded[name] = value;
      }
    }
    const init: RequestInit = { method: request.method ?? "GET", headers: forwarded };
    if (body !== "") init.body = body;
    const answer = await fetch(target + (request.url ?? "/"), init);
    const text = await answer.text();
    record.answered = answer.status;
    if (fault?.kind === "reset-after") {
      request.socket.destroy();
      return;
    }
    const headers: Record<string, string> = {};
    answer.headers.forEach((value, name) => {
      if (
        !["content-length", "content-encoding", "transfer-encoding", "connection"].includes(name)
      ) {
        headers[name] = value;
      }
    });
    response.writeHead(answer.status, headers);
    response.end(text);
  }

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    faults,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
