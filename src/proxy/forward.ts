import { ServerResponse, type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { TLSSocket } from "node:tls";
import { createProxyServer } from "http-proxy-3";
import type { Logger } from "pino";
import type { ActivityMeter } from "./activity.js";
import { AUTH_HEADER, PORT_HEADER } from "./authorize.js";
import { ProxyError, sendRefusal, writeRefusal } from "./errors.js";

/**
 * Forwarding an admitted request to its guest, with http-proxy-3:
 *
 *   HTTP        client request ──pipe──► guest request    guest response ──pipe──► client response
 *   WebSocket   client socket ◄──pipe──► guest socket     (once the guest answered 101)
 *
 *   guest refuses, or fails before its response head / 101 ─► 502 BadGatewayException
 *   guest fails after that ─► the client's connection is cut: a truncated body must not look complete
 *   client leaves ─► the guest request is destroyed (http-proxy-3 does that)
 *
 * Nothing is buffered: bodies, server-sent events and frames move as they come, and
 * each chunk in either direction is activity (the meter throttles it).
 */

/** A request that may go to the guest, and where. */
export interface Admitted {
  microvmId: string;
  guestPort: number;
  target: { host: string; port: number };
}

export class GuestForwarder {
  // Targets are given per request. No agent: every request has its own guest
  // connection, so a guest that was suspended leaves no stale pooled sockets.
  private readonly proxy = createProxyServer({});
  private readonly admittedOf = new WeakMap<IncomingMessage, Admitted>();
  private readonly upgraded = new WeakSet<IncomingMessage>();

  constructor(
    private readonly meter: ActivityMeter,
    /** Called with each guest-side WebSocket socket, so that shutting down can end it. */
    private readonly track: (socket: Duplex) => void,
    private readonly log: Logger,
  ) {
    this.proxy.on("proxyRes", (guestRes, req, res) => {
      // A guest that dies mid-response must not leave the client waiting for the rest.
      // (Its "aborted" error needs a listener; the close below is the handling.)
      guestRes.on("error", () => undefined);
      guestRes.on("close", () => {
        if (!guestRes.complete) res.destroy();
      });
      const admitted = this.admittedOf.get(req);
      // http-proxy-3 pipes the response right after this event; watch it once it has.
      if (admitted) queueMicrotask(() => this.meter.watch(guestRes, admitted.microvmId));
    });

    this.proxy.on("proxyReqWs", (guestReq, req, socket) => {
      guestReq.once("upgrade", (_res, guestSocket) => {
        this.upgraded.add(req);
        this.track(guestSocket);
        const admitted = this.admittedOf.get(req);
        // http-proxy-3 pipes the two sockets in its own upgrade listener; watch them once it has.
        if (admitted) {
          queueMicrotask(() => {
            this.meter.watch(guestSocket, admitted.microvmId);
            this.meter.watch(socket, admitted.microvmId);
          });
        }
      });
    });

    // http-proxy-3 also reports errors of upgraded client sockets here, callback or not.
    this.proxy.on("error", (err, _req, res) => {
      this.log.debug({ err }, "proxied connection error");
      if (!(res instanceof ServerResponse)) res.destroy();
    });
  }

  web(req: IncomingMessage, res: ServerResponse, admitted: Admitted): void {
    this.admittedOf.set(req, admitted);
    rewriteHeaders(req);
    this.proxy.web(req, res, { target: admitted.target }, (err, _req, out) => {
      if (!(out instanceof ServerResponse) || out.headersSent || out.destroyed) {
        // Too late for an error response: cutting the connection tells the client the body is incomplete.
        this.log.info({ err, microvmId: admitted.microvmId }, "proxied request failed mid-response");
        out.destroy();
        return;
      }
      this.log.info({ err, microvmId: admitted.microvmId, port: admitted.guestPort }, "guest connection failed");
      sendRefusal(out, guestFailure(admitted, err));
    });
    // proxy.web has piped the body to the guest by now, so watching it loses nothing.
    this.meter.watch(req, admitted.microvmId);
  }

  ws(req: IncomingMessage, socket: Duplex, head: Buffer, admitted: Admitted): void {
    this.admittedOf.set(req, admitted);
    rewriteHeaders(req);
    this.proxy.ws(req, socket, head, { target: admitted.target }, (err) => {
      if (this.upgraded.has(req)) {
        this.log.info({ err, microvmId: admitted.microvmId }, "WebSocket to guest failed");
        return; // http-proxy-3 closes the client socket
      }
      this.log.info({ err, microvmId: admitted.microvmId, port: admitted.guestPort }, "guest connection failed");
      writeRefusal(socket, guestFailure(admitted, err));
    });
  }
}

/**
 * What the guest sees of the request: not the token headers (the guest has no use
 * for them, and must not be able to replay the token), and who asked, by which name
 * and scheme. X-Forwarded-For is appended to, as load balancers do.
 */
function rewriteHeaders(req: IncomingMessage): void {
  const headers = req.headers;
  delete headers[AUTH_HEADER];
  delete headers[PORT_HEADER];
  const client = req.socket.remoteAddress;
  if (client) {
    const prior = headers["x-forwarded-for"];
    headers["x-forwarded-for"] = prior ? `${prior}, ${client}` : client;
  }
  headers["x-forwarded-proto"] = req.socket instanceof TLSSocket ? "https" : "http";
  if (headers.host) headers["x-forwarded-host"] = headers.host;
}

function guestFailure(admitted: Admitted, err: Error & { code?: string }): ProxyError {
  const how = err.code === "ECONNREFUSED" ? "refused the connection" : "failed before sending a response";
  return new ProxyError("BadGatewayException", `MicroVM ${admitted.microvmId} on port ${admitted.guestPort} ${how}.`);
}
