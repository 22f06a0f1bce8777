import assert from "node:assert/strict";
import { randomBytes, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect, type AddressInfo, type Socket } from "node:net";
import { after, before, describe, test } from "node:test";
import { connect as tlsConnect } from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { WebSocket, WebSocketServer, type ClientOptions } from "ws";
import { startEndpointProxy, type RunningEndpointProxy } from "../../src/proxy/endpoint-proxy.js";
import { TargetUnavailable, type EndpointTargets } from "../../src/engine/endpoint-targets.js";
import type { MicrovmRecord, Owner } from "../../src/store/records.js";
import { endpointCertificateNames, issueServerCertificate, loadOrCreateAuthority, type CertificateAuthority } from "../../src/tls/certificate-authority.js";
import { TokenAuthority } from "../../src/tokens/endpoint-token.js";
import { converse, streamedParts } from "./support.js";

/**
 * The endpoint proxy with HTTPS: the same port answers TLS and plain HTTP, with a
 * certificate from the local CA. The guest is a local HTTP server with a WebSocket echo.
 */

const DOMAIN = "microvms.localhost";
const OWNER: Owner = { accountId: "000000000000", region: "us-east-1" };
const RUNNING = "mvm-00000000000000001";
const SERVERNAME = `${RUNNING}.${DOMAIN}`;

const tokens = new TokenAuthority(randomBytes(32));
const nowSeconds = () => Math.floor(Date.now() / 1000);
const token = (microvmId = RUNNING) =>
  tokens.issue({ kind: "endpoint", ...OWNER, microvmId, ports: [{ from: 8080, to: 8080 }], issuedAt: nowSeconds(), expiresAt: nowSeconds() + 600 });

interface Seen {
  url: string;
  headers: IncomingHttpHeaders;
}
const seen: Seen[] = [];
let guestConnections = 0;
let releaseStream: () => void = () => undefined;
let wsUpgradeHeaders: IncomingHttpHeaders | undefined;

function guestHandler(req: IncomingMessage, res: ServerResponse): void {
  seen.push({ url: req.url!, headers: req.headers });
  req.resume();
  req.on("end", () => {
    if (req.url === "/stream") {
      // The second event is written only once the client has the first: it cannot have been buffered.
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("data: one\n\n");
      new Promise<void>((resolve) => (releaseStream = resolve)).then(() => res.end("data: two\n\n"));
    } else {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ url: req.url, proto: req.headers["x-forwarded-proto"] }));
    }
  });
}

const targets: EndpointTargets = {
  async findMicrovm(owner, microvmId) {
    if (microvmId !== RUNNING || owner.accountId !== OWNER.accountId) return undefined;
    const at = new Date();
    const record: MicrovmRecord = {
      ...OWNER,
      microvmId,
      imageId: "image-1",
      imageName: "app",
      imageVersion: 1,
      state: "RUNNING",
      config: { maximumDurationInSeconds: 3600 },
      createdAt: at,
      updatedAt: at,
    };
    return record;
  },
  async connect() {
    return { host: "127.0.0.1", port: guestPort };
  },
  async wake(microvm: MicrovmRecord): Promise<MicrovmRecord> {
    throw new TargetUnavailable(microvm.microvmId, "no auto-resume in these tests");
  },
  activity() {},
};

let dir: string;
let ca: CertificateAuthority;
let serverTls: { certPem: string; keyPem: string };
let guest: Server;
let guestPort: number;
let proxy: RunningEndpointProxy;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "microvms-tls-test-"));
  ca = await loadOrCreateAuthority(dir);
  serverTls = await issueServerCertificate(ca, endpointCertificateNames(DOMAIN));

  guest = createServer(guestHandler);
  guest.on("connection", () => guestConnections++);
  const echo = new WebSocketServer({ server: guest });
  echo.on("connection", (ws, req) => {
    wsUpgradeHeaders = req.headers;
    ws.on("message", (data) => ws.send(`echo: ${data.toString()}`));
  });
  await new Promise<void>((resolve) => guest.listen(0, "127.0.0.1", resolve));
  guestPort = (guest.address() as AddressInfo).port;

  proxy = await startEndpointProxy({ host: "127.0.0.1", port: 0, tokens, targets, domain: DOMAIN, log: pino({ level: "silent" }), tls: serverTls });
});

after(async () => {
  await proxy.close();
  guest.closeAllConnections();
  await new Promise<void>((resolve) => guest.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

interface HttpsOptions {
  port?: number;
  path?: string;
  headers?: Record<string, string>;
  /** The CA to verify with; none means the system's. */
  ca?: string;
  /** The TLS server name (SNI and the name verified); "" connects by address. */
  servername?: string;
}

function get(viaTls: boolean, options: HttpsOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const common = {
      host: "127.0.0.1",
      port: options.port ?? proxy.port,
      path: options.path ?? "/",
      agent: false,
      headers: { host: `${SERVERNAME}:${proxy.port}`, ...options.headers },
    };
    const onResponse = (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    };
    const req = viaTls
      ? httpsRequest({ ...common, ca: "ca" in options ? options.ca : ca.caCertPem, servername: options.servername ?? SERVERNAME }, onResponse)
      : httpRequest(common, onResponse);
    req.on("error", reject);
    req.end();
  });
}

const auth = () => ({ "X-aws-proxy-auth": token() });

/** A wss:// client that verifies the endpoint's name against the CA. */
function wss(port: number, headers: Record<string, string>): WebSocket {
  // ws hands TLS options on to https.request; its types leave out `servername`.
  const options: ClientOptions = Object.assign({ ca: ca.caCertPem, headers: { host: SERVERNAME, ...headers } }, { servername: SERVERNAME });
  return new WebSocket(`wss://127.0.0.1:${port}/chat`, options);
}

describe("HTTPS on the endpoint port", () => {
  test("an HTTPS GET reaches the guest, which learns the scheme from X-Forwarded-Proto", async () => {
    const answer = await get(true, { path: "/hello?x=1", headers: auth() });
    assert.equal(answer.status, 200, answer.body);
    assert.deepEqual(JSON.parse(answer.body), { url: "/hello?x=1", proto: "https" });
    const got = seen.at(-1)!;
    assert.equal(got.headers["x-aws-proxy-auth"], undefined);
    assert.equal(got.headers["x-forwarded-host"], `${SERVERNAME}:${proxy.port}`);
  });

  test("plain HTTP still works on the same port", async () => {
    const answer = await get(false, { path: "/plain", headers: auth() });
    assert.equal(answer.status, 200, answer.body);
    assert.deepEqual(JSON.parse(answer.body), { url: "/plain", proto: "http" });
  });

  test("a request without a token is refused over HTTPS too, and the guest sees nothing", async () => {
    const before = { connections: guestConnections, seen: seen.length };
    const answer = await get(true, { path: "/secret" });
    assert.equal(answer.status, 401);
    assert.equal(answer.headers["x-amzn-errortype"], "UnauthorizedException");
    assert.match(JSON.parse(answer.body).message, /X-aws-proxy-auth header is missing/);
    assert.deepEqual({ connections: guestConnections, seen: seen.length }, before);
  });

  test("a streamed response arrives over HTTPS in parts, the first before the guest has written the rest", async () => {
    const parts = await streamedParts(
      (onResponse) =>
        httpsRequest(
          { host: "127.0.0.1", port: proxy.port, path: "/stream", agent: false, ca: ca.caCertPem, servername: SERVERNAME, headers: { host: SERVERNAME, ...auth() } },
          onResponse,
        ),
      () => releaseStream(),
    );
    assert.equal(parts[0], "data: one\n\n");
    assert.equal(parts.join(""), "data: one\n\ndata: two\n\n");
  });

  test("a WebSocket over wss:// echoes through the proxy", async () => {
    const ws = wss(proxy.port, auth());
    assert.deepEqual(await converse(ws, ["hello", "again"]), ["echo: hello", "echo: again"]);
    assert.equal(wsUpgradeHeaders?.["x-forwarded-proto"], "https");
    assert.equal(wsUpgradeHeaders?.["x-aws-proxy-auth"], undefined);
  });

  test("a refused wss:// upgrade gets its HTTP error", async () => {
    const ws = wss(proxy.port, {});
    ws.on("error", () => undefined); // terminating a handshake is reported as an error
    const status = await new Promise<number | undefined>((resolve, reject) => {
      ws.once("unexpected-response", (_req, res) => resolve(res.statusCode));
      ws.once("open", () => reject(new Error("the upgrade was accepted")));
    });
    ws.terminate();
    assert.equal(status, 401);
  });
});

describe("the certificate", () => {
  test("verifies against the generated CA for an endpoint name, localhost and 127.0.0.1", async () => {
    for (const servername of [SERVERNAME, "mvm-0123456789abcdef0.microvms.localhost", DOMAIN, "localhost"]) {
      assert.equal((await get(true, { servername, headers: auth() })).status, 200, servername);
    }
    // By address: Node checks the IP SAN when no server name is sent.
    assert.equal((await get(true, { servername: "", headers: auth() })).status, 200);
  });

  test("does not verify without the CA, nor for a name it does not carry", async () => {
    await assert.rejects(get(true, { ca: undefined, headers: auth() }), { code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE" });
    for (const servername of ["example.com", `a.b.${DOMAIN}`]) {
      await assert.rejects(get(true, { servername, headers: auth() }), { code: "ERR_TLS_CERT_ALTNAME_INVALID" }, servername);
    }
  });

  test("is the one the proxy was given", async () => {
    const served = await new Promise<Buffer>((resolve, reject) => {
      const socket = tlsConnect({ host: "127.0.0.1", port: proxy.port, ca: ca.caCertPem, servername: SERVERNAME }, () => {
        resolve(socket.getPeerCertificate().raw);
        socket.end();
      });
      socket.on("error", reject);
    });
    assert.deepEqual(served, new X509Certificate(serverTls.certPem).raw);
  });
});

describe("connections that say nothing, and close()", () => {
  /** Resolves when the server has closed the connection: the client sees its end. */
  const closedByServer = (socket: Socket) =>
    new Promise<void>((resolve) => {
      socket.on("error", () => undefined);
      socket.once("close", () => resolve());
      socket.resume();
    });

  const connected = (port: number) =>
    new Promise<Socket>((resolve, reject) => {
      const socket = connect(port, "127.0.0.1", () => resolve(socket));
      socket.once("error", reject);
    });

  test("a client that connects and sends nothing is closed", async () => {
    const quiet = await startEndpointProxy({ host: "127.0.0.1", port: 0, tokens, targets, domain: DOMAIN, log: pino({ level: "silent" }), tls: serverTls, firstByteTimeoutMs: 50 });
    try {
      const socket = await connected(quiet.port);
      await closedByServer(socket);
      // Still serving.
      assert.equal((await get(true, { port: quiet.port, headers: auth() })).status, 200);
    } finally {
      await quiet.close();
    }
  });

  test("a client that hangs up before sending anything is let go", async () => {
    const socket = await connected(proxy.port);
    const closed = closedByServer(socket);
    socket.end();
    await closed;
  });

  test("close() ends connections in every phase: silent, mid-handshake, idle HTTPS keep-alive, open wss://", async () => {
    const doomed = await startEndpointProxy({ host: "127.0.0.1", port: 0, tokens, targets, domain: DOMAIN, log: pino({ level: "silent" }), tls: serverTls });
    const silent = await connected(doomed.port);
    const midHandshake = await connected(doomed.port);
    midHandshake.write(Buffer.from([0x16, 0x03, 0x01])); // the start of a TLS record, and no more
    const keptAlive = await new Promise<Socket>((resolve, reject) => {
      const socket = tlsConnect({ host: "127.0.0.1", port: doomed.port, ca: ca.caCertPem, servername: SERVERNAME }, () => {
        // Refused by the proxy itself, which keeps the connection open for the next request.
        socket.write(`GET / HTTP/1.1\r\nHost: ${SERVERNAME}\r\n\r\n`);
        socket.once("data", () => resolve(socket));
      });
      socket.on("error", reject);
    });
    const ws = wss(doomed.port, auth());
    await new Promise((resolve, reject) => (ws.once("open", resolve), ws.once("error", reject)));
    ws.on("error", () => undefined);
    const wsClosed = new Promise<void>((resolve) => ws.once("close", () => resolve()));

    for (const socket of [silent, midHandshake, keptAlive]) assert.ok(!socket.destroyed);
    assert.equal(ws.readyState, WebSocket.OPEN);
    const allClosed = Promise.all([closedByServer(silent), closedByServer(midHandshake), closedByServer(keptAlive), wsClosed]);
    await doomed.close();
    await allClosed;
  });
});
