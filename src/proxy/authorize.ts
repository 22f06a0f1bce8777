import type { IncomingHttpHeaders } from "node:http";
import { microvmState } from "../lifecycle/microvm-states.js";
import type { MicrovmPhase, MicrovmRecord } from "../store/records.js";
import { allowsPort, type TokenAuthority, type TokenClaims } from "../tokens/endpoint-token.js";
import { ProxyError } from "./errors.js";

/**
 * The endpoint proxy's decisions, pure: which MicroVM a Host names, whether the
 * request's token lets it reach which port, and whether the MicroVM's state lets
 * the request through. Each throws a ProxyError saying why not; none does I/O.
 */

export const AUTH_HEADER = "x-aws-proxy-auth";
export const PORT_HEADER = "x-aws-proxy-port";
export const DEFAULT_GUEST_PORT = 8080;

/** One DNS label: `mvm-` and hex (ids are 17 hex digits, but existence is the store's call). */
const MICROVM_LABEL = /^mvm-[0-9a-f]{1,59}$/;

/**
 * The MicroVM id a Host header names (`{microvmId}.{domain}[:port]`, any case), or
 * undefined when it names none — such a request is refused before anything is looked up.
 */
export function microvmIdOfHost(host: string | undefined, domain: string): string | undefined {
  if (!host) return undefined;
  const name = host.replace(/:\d*$/, "").replace(/\.$/, "").toLowerCase();
  const suffix = `.${domain.toLowerCase()}`;
  if (!name.endsWith(suffix)) return undefined;
  const label = name.slice(0, -suffix.length);
  return MICROVM_LABEL.test(label) ? label : undefined;
}

export interface Grant {
  claims: TokenClaims;
  /** The guest port the request goes to. */
  port: number;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(", ") : value;
}

function parsePort(text: string | undefined): number {
  if (text === undefined) return DEFAULT_GUEST_PORT;
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port >= 1 && port <= 65535)) {
    throw new ProxyError("BadRequestException", `The X-aws-proxy-port header must be an integer from 1 to 65535, not ${JSON.stringify(text)}.`);
  }
  return port;
}

/**
 * Whether the request's `X-aws-proxy-auth` token opens MicroVM `microvmId` on the
 * port of its `X-aws-proxy-port` header (8080 without one). Checked in this order,
 * so a caller without a valid token learns nothing about the MicroVM:
 * token present (401) → genuine and unexpired (403) → for this MicroVM (403) →
 * an endpoint token (403) → port well-formed (400) → port in the token's scope (403).
 */
export function authorize(microvmId: string, headers: IncomingHttpHeaders, tokens: TokenAuthority, now: Date): Grant {
  const token = single(headers[AUTH_HEADER])?.trim();
  if (!token) throw new ProxyError("UnauthorizedException", "The X-aws-proxy-auth header is missing.");
  const check = tokens.verify(token, now);
  if (!check.ok) {
    const why = {
      malformed: "The X-aws-proxy-auth token is malformed.",
      forged: "The X-aws-proxy-auth token's signature is not valid.",
      expired: "The X-aws-proxy-auth token has expired.",
    }[check.reason];
    throw new ProxyError("AccessDeniedException", why);
  }
  const { claims } = check;
  if (claims.microvmId !== microvmId) {
    throw new ProxyError("AccessDeniedException", `The X-aws-proxy-auth token is not for MicroVM ${microvmId}.`);
  }
  if (claims.kind !== "endpoint") {
    throw new ProxyError("AccessDeniedException", "The X-aws-proxy-auth token is a shell token; it does not open the MicroVM's endpoint.");
  }
  const port = parsePort(single(headers[PORT_HEADER]));
  if (!allowsPort(claims, port)) throw new ProxyError("AccessDeniedException", `The token does not allow port ${port}.`);
  return { claims, port };
}

/**
 * Whether a request wakes the MicroVM rather than meeting its state: with
 * autoResumeEnabled, one suspended, suspending or starting (resuming) is
 * brought to RUNNING first.
 */
export function wakesOnRequest(microvm: MicrovmRecord): boolean {
  return microvm.config.idlePolicy?.autoResumeEnabled === true && ["SUSPENDED", "SUSPENDING", "STARTING", "RESUMING"].includes(microvm.state);
}

/**
 * What an authorized request meets in each state (after any wake). A table, so
 * a new state cannot be forgotten.
 */
const ON_STATE: Record<MicrovmPhase, "forward" | "retry-later" | "gone"> = {
  STARTING: "retry-later",
  RESUMING: "retry-later",
  RUNNING: "forward",
  SUSPENDING: "retry-later",
  SUSPENDED: "retry-later",
  TERMINATING: "gone",
  TERMINATED: "gone",
};

/** Lets the request on to the guest, or throws: 404 for a MicroVM that is gone, 503 for one not running yet. */
export function admitByState(microvmId: string, microvm: MicrovmRecord | undefined): void {
  if (!microvm) throw new ProxyError("ResourceNotFoundException", `MicroVM ${microvmId} not found.`);
  switch (ON_STATE[microvm.state]) {
    case "forward":
      return;
    case "gone":
      throw new ProxyError("ResourceNotFoundException", `MicroVM ${microvmId} is ${microvmState(microvm.state)}.`);
    case "retry-later":
      throw new ProxyError("ServiceUnavailableException", `MicroVM ${microvmId} is ${microvmState(microvm.state)}; it is not serving requests. ${advice(microvm.state)}`, {
        "retry-after": "1",
      });
  }
}

function advice(state: MicrovmPhase): string {
  return state === "SUSPENDED" ? "Resume it (ResumeMicrovm), or run it with an idle policy that has autoResumeEnabled." : "Retry later.";
}
