import type { Server as HttpServer } from "node:http";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { Server as TlsServer, type TLSSocket } from "node:tls";
import type { Logger } from "pino";

/**
 * One port for HTTP and HTTPS. A TCP server accepts every connection and reads its first byte:
 *
 *   connection ─► first byte ─ 0x16 (a TLS handshake record) ─► tls.Server ─► handshake ─► httpServer
 *              │             └ anything else ─────────────────────────────────────────────► httpServer
 *              └─ nothing within firstByteTimeoutMs, or the client hangs up ─► closed
 *
 * The byte is put back (unshift) before the socket is handed on, so the TLS layer or the HTTP
 * parser reads the stream from its start. Both kinds end up as "connection" events of the one
 * HTTP server, so the same request and upgrade handlers serve both; a request arrived over TLS
 * when `req.socket` is a TLSSocket. Without `tls`, every connection goes to the HTTP server.
 */

export interface ListenOptions {
  host: string;
  port: number;
  /** A certificate chain and its key, in PEM; without them HTTPS is not served. */
  tls?: { certPem: string; keyPem: string };
  /** How long a new connection may stay silent before it is closed. */
  firstByteTimeoutMs: number;
  log: Logger;
}

export interface Listening {
  port: number;
  /** Stops accepting and destroys every connection, in whatever phase; resolves once all are closed. */
  close(): Promise<void>;
}

const TLS_HANDSHAKE_RECORD = 0x16;

export async function listenForHttpAndHttps(httpServer: HttpServer, opts: ListenOptions): Promise<Listening> {
  const { log } = opts;
  const connections = new Set<Socket>();

  const tlsServer = opts.tls
    ? new TlsServer({ cert: opts.tls.certPem, key: opts.tls.keyPem, ALPNProtocols: ["http/1.1"] }, (secure: TLSSocket) =>
        httpServer.emit("connection", secure),
      )
    : undefined;
  tlsServer?.on("tlsClientError", (err: Error) => log.debug({ err }, "TLS handshake failed"));

  function route(socket: Socket): void {
    connections.add(socket);
    socket.once("close", () => connections.delete(socket));
    socket.on("error", (err) => log.debug({ err }, "client connection error"));
    const silent = (): void => void socket.destroy();
    socket.setTimeout(opts.firstByteTimeoutMs, silent);
    socket.once("end", silent);

    const peek = (): void => {
      const first = socket.read(1) as Buffer | null;
      if (first === null) {
        // Nothing yet; at the end of the stream "end" follows, and closes the socket.
        socket.once("readable", peek);
        return;
      }
      socket.setTimeout(0, silent);
      socket.off("end", silent);
      socket.unshift(first);
      if (first[0] === TLS_HANDSHAKE_RECORD && tlsServer) {
        socket.allowHalfOpen = false; // as tls.Server's own sockets: TLS has its own close_notify
        tlsServer.emit("connection", socket);
      } else {
        httpServer.emit("connection", socket);
      }
    };
    socket.once("readable", peek);
  }

  // The options http.createServer gives the TCP server it would otherwise listen with.
  const front = createNetServer({ allowHalfOpen: true, noDelay: true }, route);
  await new Promise<void>((resolve, reject) => {
    front.once("error", reject);
    front.listen(opts.port, opts.host, () => {
      front.off("error", reject);
      resolve();
    });
  });
  front.on("error", (err) => log.error({ err }, "endpoint listener error"));
  // http.Server tracks its connections (for closeAllConnections, and to enforce headersTimeout)
  // from its "listening" event; this one never listens itself, the front server does.
  httpServer.emit("listening");

  return {
    port: (front.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        front.close((err) => (err ? reject(err) : resolve()));
        for (const socket of connections) socket.destroy();
      }),
  };
}
