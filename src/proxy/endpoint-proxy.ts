import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { TokenAuthority } from "../tokens/endpoint-token.js";
import { ActivityMeter } from "./activity.js";
import { admitByState, authorize, microvmIdOfHost, wakesOnRequest } from "./authorize.js";
import { ProxyError, sendRefusal, writeRefusal } from "./errors.js";
import { GuestForwarder, type Admitted } from "./forward.js";
import { listenForHttpAndHttps } from "./listener.js";
import { TargetUnavailable, type EndpointTargets } from "../engine/endpoint-targets.js";

/**
 * The endpoint proxy: the data plane in front of every MicroVM's guest. Every
 * request, plain or WebSocket upgrade, takes the same path:
 *
 *   request ─► Host is {microvmId}.{domain}? ───────────────────────── no ─► 404
 *           ─► authorize: X-aws-proxy-auth token, X-aws-proxy-port ─────────► 401 / 403 / 400
 *           ─► targets.findMicrovm(token's owner, id) ─► admitByState ──────► 404 gone / 503 not running
 *           ─► targets.connect(microvmId, port) ── TargetUnavailable ───────► 503
 *           ─► activity ─► GuestForwarder (forward.ts) ─► guest ── fails ──► 502
 *
 * Only the last step and how a refusal is written differ between the two kinds:
 * a ServerResponse for HTTP, raw bytes on the socket for an upgrade. A refused
 * request never reaches the guest: nothing is forwarded before `admit` returns.
 *
 * With `tls`, the one port serves HTTPS as well as HTTP (listener.ts tells them apart by
 * their first byte); both reach the same handlers, and the guest learns which it was from
 * X-Forwarded-Proto.
 */

const DEFAULT_FIRST_BYTE_TIMEOUT_MS = 60_000;

/** How long a request to a suspended MicroVM with auto-resume waits for it to run. */
const WAKE_TIMEOUT_MS = 60_000;

export interface EndpointProxyOptions {
  host: string;
  port: number;
  tokens: TokenAuthority;
  targets: EndpointTargets;
  log: Logger;
  /** The clock for token expiry and for throttling activity reports; the system clock by default. */
  now?: () => Date;
  /** Endpoints are `{microvmId}.{domain}`, e.g. "microvms.localhost". */
  domain: string;
  /** The certificate (chain) and key for HTTPS on the same port; plain HTTP only without it. */
  tls?: { certPem: string; keyPem: string };
  /** How long a new connection may stay silent before it is closed; 60 s by default, as Node's headersTimeout. */
  firstByteTimeoutMs?: number;
}

export interface RunningEndpointProxy {
  /** The proxy's address as a plain-HTTP URL, e.g. http://127.0.0.1:9601; with `tls`, https:// works on the same port. */
  url: string;
  port: number;
  close(): Promise<void>;
}

export async function startEndpointProxy(opts: EndpointProxyOptions): Promise<RunningEndpointProxy> {
  const { tokens, targets, domain } = opts;
  const log = opts.log.child({ component: "endpoint-proxy" });
  const now = opts.now ?? (() => new Date());
  const meter = new ActivityMeter(
    (microvmId) => {
      try {
        targets.activity(microvmId);
      } catch (err) {
        log.error({ err, microvmId }, "recording activity failed");
      }
    },
    () => now().getTime(),
  );
  // Upgraded sockets leave the HTTP server's bookkeeping; close() must still end them.
  const rawSockets = new Set<Duplex>();
  const track = (socket: Duplex): void => {
    rawSockets.add(socket);
    socket.once("close", () => rawSockets.delete(socket));
  };
  const forwarder = new GuestForwarder(meter, track, log);

  async function admit(req: IncomingMessage): Promise<Admitted> {
    const host = req.headers.host;
    const microvmId = microvmIdOfHost(host, domain);
    if (!microvmId) throw new ProxyError("ResourceNotFoundException", `No MicroVM endpoint is served at host ${JSON.stringify(host ?? "")}.`);
    const { claims, port } = authorize(microvmId, req.headers, tokens, now());
    let microvm = await targets.findMicrovm({ accountId: claims.accountId, region: claims.region }, microvmId);
    if (microvm && wakesOnRequest(microvm)) {
      // Auto-resume: the request waits (bounded) for the MicroVM to run, and then goes through.
      microvm = await targets.wake(microvm, WAKE_TIMEOUT_MS).catch((err: unknown) => {
        if (!(err instanceof TargetUnavailable)) throw err;
        throw new ProxyError("ServiceUnavailableException", `MicroVM ${microvmId} did not resume in time: ${err.message}`, { "retry-after": "1" });
      });
    }
    admitByState(microvmId, microvm);
    try {
      return { microvmId, guestPort: port, target: await targets.connect(microvmId, port) };
    } catch (err) {
      if (!(err instanceof TargetUnavailable)) throw err;
      log.info({ microvmId, port, reason: err.message }, "guest not reachable");
      throw new ProxyError("ServiceUnavailableException", `MicroVM ${microvmId} is not reachable right now. Retry later.`, { "retry-after": "1" });
    }
  }

  /** A refusal for the client; anything that is not one is our bug, logged here and not told. */
  function asRefusal(error: unknown, req: IncomingMessage): ProxyError {
    if (error instanceof ProxyError) {
      log.debug({ status: error.status, errorType: error.errorType, host: req.headers.host, reason: error.message }, "refused");
      return error;
    }
    log.error({ err: error, host: req.headers.host, url: req.url }, "internal error");
    return new ProxyError("InternalServerErrorException", "An internal error occurred in the endpoint proxy. Retry the request later.");
  }

  async function handleRequest(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): Promise<void> {
    let admitted: Admitted;
    try {
      admitted = await admit(req);
    } catch (error) {
      // Without "100 Continue" a client that sent Expect never sends the refused body.
      if (!res.destroyed) sendRefusal(res, asRefusal(error, req));
      return;
    }
    if (res.destroyed) return; // the client left while we looked
    meter.request(admitted.microvmId);
    if (expectsContinue) {
      // We answered the expectation; the guest gets a plain request.
      delete req.headers.expect;
      res.writeContinue();
    }
    forwarder.web(req, res, admitted);
  }

  async function handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", (err) => log.debug({ err }, "client socket error"));
    track(socket);
    let admitted: Admitted;
    try {
      if (req.method !== "GET" || req.headers.upgrade?.toLowerCase() !== "websocket") {
        throw new ProxyError("BadRequestException", "Only WebSocket upgrades (GET with Upgrade: websocket) are proxied.");
      }
      admitted = await admit(req);
    } catch (error) {
      writeRefusal(socket, asRefusal(error, req));
      return;
    }
    if (socket.destroyed) return;
    meter.request(admitted.microvmId);
    forwarder.ws(req, socket, head, admitted);
  }

  const server = createServer({
    // Bodies stream to guests for as long as they need; the default 5-minute whole-request limit would cut long uploads.
    requestTimeout: 0,
  });
  server.on("request", (req, res) => void handleRequest(req, res, false));
  // Authorize before inviting the body: a refused client never sends it.
  server.on("checkContinue", (req, res) => void handleRequest(req, res, true));
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => void handleUpgrade(req, socket, head));

  const listening = await listenForHttpAndHttps(server, {
    host: opts.host,
    port: opts.port,
    tls: opts.tls,
    firstByteTimeoutMs: opts.firstByteTimeoutMs ?? DEFAULT_FIRST_BYTE_TIMEOUT_MS,
    log,
  });
  const port = listening.port;
  const urlHost = opts.host.includes(":") ? `[${opts.host}]` : opts.host;
  log.info({ host: opts.host, port, domain, https: Boolean(opts.tls) }, "endpoint proxy listening");

  return {
    url: `http://${urlHost}:${port}`,
    port,
    close: async () => {
      server.close(); // stops its connection checks; the listener holds the port
      server.closeAllConnections();
      for (const socket of rawSockets) socket.destroy();
      await listening.close();
    },
  };
}
