import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect, type AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { WebSocket, WebSocketServer } from "ws";
import { microvmState } from "../../src/lifecycle/microvm-states.js";
import { startEndpointProxy, type RunningEndpointProxy } from "../../src/proxy/endpoint-proxy.js";
import { TargetUnavailable, type EndpointTargets } from "../../src/engine/endpoint-targets.js";
import type { MicrovmPhase, MicrovmRecord, Owner } from "../../src/store/records.js";
import { TokenAuthority, type TokenClaims } from "../../src/tokens/endpoint-token.js";
import { converse, streamedParts } from "./support.js";

/**
 * The endpoint proxy in front of a "guest": a local HTTP server with a WebSocket
 * echo, reached through a fake EndpointTargets. Every refusal also checks that
 * the guest saw no connection at all.
 */

const DOMAIN = "microvms.localhost";
const OWNER: Owner = { accountId: "000000000000", region: "us-east-1" };
const RUNNING = "mvm-00000000000000001";
const OTHER = "mvm-00000000000000002";
const REFUSING = "mvm-00000000000000003";
const UNAVAILABLE = "mvm-00000000000000004";
const UNKNOWN = "mvm-0000000000000000f";
const byState: Partial<Record<MicrovmPhase, string>> = {
  STARTING: "mvm-000000000000000a1",
  RESUMING: "mvm-000000000000000a6",
  SUSPENDING: "mvm-000000000000000a2",
  SUSPENDED: "mvm-000000000000000a3",
  TERMINATING: "mvm-000000000000000a4",
  TERMINATED: "mvm-000000000000000a5",
};

function record(microvmId: string, state: MicrovmPhase): MicrovmRecord {
  const at = new Date();
  return {
    ...OWNER,
    microvmId,
    imageId: "image-1",
    imageName: "app",
    imageVersion: 1,
    state,
    config: { maximumDurationInSeconds: 3600 },
    createdAt: at,
    updatedAt: at,
  };
}

const tokens = new TokenAuthority(randomBytes(32));
const nowSeconds = () => Math.floor(Date.now() / 1000);

function token(microvmId: string, extra: Partial<TokenClaims> = {}, authority = tokens): string {
  return authority.issue({
    kind: "endpoint",
    ...OWNER,
    microvmId,
    ports: [{ from: 8080, to: 8080 }, { from: 9000, to: 9000 }],
    issuedAt: nowSeconds(),
    expiresAt: nowSeconds() + 600,
    ...extra,
  });
}

// The guest: what it saw, and routes that exercise the proxy.
interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
}
const seen: Seen[] = [];
let guestConnections = 0;
let guest: Server;
let guestPort: number;
let closedPort: number;
let releaseStream: () => void = () => undefined;
let hungResponseClosed: Promise<void> = Promise.resolve();
let wsUpgradeHeaders: IncomingHttpHeaders | undefined;

function guestHandler(req: IncomingMessage, res: ServerResponse): void {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString();
    seen.push({ method: req.method!, url: req.url!, headers: req.headers, rawHeaders: req.rawHeaders, body });
    if (req.url === "/stream") {
      // The second event is written only once the client has the first: it cannot have been buffered.
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("data: one\n\n");
      new Promise<void>((resolve) => (releaseStream = resolve)).then(() => res.end("data: two\n\n"));
    } else if (req.url === "/hang") {
      hungResponseClosed = new Promise((resolve) => res.once("close", resolve));
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("first part");
    } else if (req.url === "/die") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("partial", () => req.socket.destroy());
    } else {
      res.writeHead(201, { "content-type": "application/json", "x-guest": "yes" });
      res.end(JSON.stringify({ method: req.method, url: req.url, body }));
    }
  });
}

const calls = { findMicrovm: 0, connect: [] as number[], activity: [] as string[] };
const microvms = new Map<string, MicrovmRecord>([
  [RUNNING, record(RUNNING, "RUNNING")],
  [OTHER, record(OTHER, "RUNNING")],
  [REFUSING, record(REFUSING, "RUNNING")],
  [UNAVAILABLE, record(UNAVAILABLE, "RUNNING")],
  ...Object.entries(byState).map(([state, id]) => [id, record(id, state as MicrovmPhase)] as const),
]);

const targets: EndpointTargets = {
  async findMicrovm(owner, microvmId) {
    calls.findMicrovm++;
    const m = microvms.get(microvmId);
    return m && m.accountId === owner.accountId && m.region === owner.region ? m : undefined;
  },
  async connect(microvmId, port) {
    calls.connect.push(port);
    if (microvmId === UNAVAILABLE) throw new TargetUnavailable(microvmId, "no VM is running");
    return { host: "127.0.0.1", port: microvmId === REFUSING ? closedPort : guestPort };
  },
  async wake(microvm: MicrovmRecord): Promise<MicrovmRecord> {
    throw new TargetUnavailable(microvm.microvmId, "no auto-resume in these tests");
  },
  activity(microvmId) {
    calls.activity.push(microvmId);
  },
};

let proxy: RunningEndpointProxy;

before(async () => {
  guest = createServer(guestHandler);
  guest.on("connection", () => guestConnections++);
  const wss = new WebSocketServer({ server: guest });
  wss.on("connection", (ws, req) => {
    wsUpgradeHeaders = req.headers;
    ws.on("message", (data, isBinary) => ws.send(isBinary ? data : `echo: ${data.toString()}`));
  });
  await new Promise<void>((resolve) => guest.listen(0, "127.0.0.1", resolve));
  guestPort = (guest.address() as AddressInfo).port;
  // A port nothing listens on: the guest that refuses connections.
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
  closedPort = (closed.address() as AddressInfo).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));

  proxy = await startEndpointProxy({ host: "127.0.0.1", port: 0, tokens, targets, domain: DOMAIN, log: pino({ level: "silent" }) });
});

after(async () => {
  await proxy.close();
  guest.closeAllConnections();
  await new Promise<void>((resolve) => guest.close(() => resolve()));
});

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function send(options: { microvmId?: string; host?: string; headers?: Record<string, string>; method?: string; path?: string; body?: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port: proxy.port,
        method: options.method ?? "GET",
        path: options.path ?? "/",
        agent: false,
        headers: {
          host: options.host ?? `${options.microvmId}.${DOMAIN}:${proxy.port}`,
          // Node sends no length for a DELETE body by itself.
          ...(options.body === undefined ? {} : { "content-length": String(Buffer.byteLength(options.body)) }),
          ...options.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(options.body);
  });
}

const auth = (t: string, extra: Record<string, string> = {}) => ({ "X-aws-proxy-auth": t, ...extra });

/** Sends a request that must be refused, and checks that the guest never heard of it. */
async function refused(options: Parameters<typeof send>[0], status: number, errorType: string, message?: RegExp): Promise<Answer> {
  const before = { connections: guestConnections, seen: seen.length };
  const answer = await send(options);
  assert.equal(answer.status, status, answer.body);
  assert.equal(answer.headers["x-amzn-errortype"], errorType);
  assert.match(String(answer.headers["content-type"]), /^application\/json/);
  const { message: text } = JSON.parse(answer.body) as { message: string };
  if (message) assert.match(text, message);
  assert.deepEqual({ connections: guestConnections, seen: seen.length }, before, "the guest saw nothing of a refused request");
  return answer;
}

describe("forwarding", () => {
  test("a GET reaches the guest with X-Forwarded-* and without the token headers", async () => {
    const answer = await send({ microvmId: RUNNING, path: "/echo?q=1", headers: auth(token(RUNNING), { "X-aws-proxy-port": "9000", "x-custom": "kept" }) });
    assert.equal(answer.status, 201);
    assert.equal(answer.headers["x-guest"], "yes");
    assert.deepEqual(JSON.parse(answer.body), { method: "GET", url: "/echo?q=1", body: "" });
    const got = seen.at(-1)!;
    assert.equal(got.headers["x-aws-proxy-auth"], undefined);
    assert.equal(got.headers["x-aws-proxy-port"], undefined);
    assert.ok(!got.rawHeaders.some((h) => /^x-aws-proxy-/i.test(h)), "no X-aws-proxy-* header reaches the guest");
    assert.equal(got.headers["x-custom"], "kept");
    assert.equal(got.headers.host, `${RUNNING}.${DOMAIN}:${proxy.port}`);
    assert.equal(got.headers["x-forwarded-host"], `${RUNNING}.${DOMAIN}:${proxy.port}`);
    assert.equal(got.headers["x-forwarded-proto"], "http");
    assert.equal(got.headers["x-forwarded-for"], "127.0.0.1");
    assert.equal(calls.connect.at(-1), 9000, "the port header chose the guest port");
    assert.ok(calls.activity.includes(RUNNING), "an accepted request is activity");
  });

  test("a POST body reaches the guest; the default port is 8080; header names are case-insensitive", async () => {
    const body = "x".repeat(200_000);
    const answer = await send({ microvmId: RUNNING, method: "POST", path: "/echo", body, headers: { "X-AWS-PROXY-AUTH": token(RUNNING) } });
    assert.equal(answer.status, 201);
    assert.deepEqual(JSON.parse(answer.body), { method: "POST", url: "/echo", body });
    assert.equal(calls.connect.at(-1), 8080);
  });

  test("other methods pass through: PUT, DELETE, HEAD", async () => {
    for (const method of ["PUT", "DELETE"]) {
      const answer = await send({ microvmId: RUNNING, method, path: "/echo", body: "b", headers: auth(token(RUNNING)) });
      assert.deepEqual(JSON.parse(answer.body), { method, url: "/echo", body: "b" });
    }
    const head = await send({ microvmId: RUNNING, method: "HEAD", path: "/echo", headers: auth(token(RUNNING)) });
    assert.deepEqual([head.status, head.body, seen.at(-1)!.method], [201, "", "HEAD"]);
  });

  test("a streamed response arrives in parts, the first before the guest has written the rest", async () => {
    let contentType: string | undefined;
    const parts = await streamedParts(
      (onResponse) =>
        request(
          { host: "127.0.0.1", port: proxy.port, path: "/stream", agent: false, headers: { host: `${RUNNING}.${DOMAIN}`, ...auth(token(RUNNING)) } },
          (res) => {
            contentType = res.headers["content-type"];
            onResponse(res);
          },
        ),
      () => releaseStream(),
    );
    assert.equal(contentType, "text/event-stream");
    assert.equal(parts[0], "data: one\n\n");
    assert.equal(parts.join(""), "data: one\n\ndata: two\n\n");
  });

  test("a client that leaves mid-response closes the guest's connection", async () => {
    await new Promise<void>((resolve, reject) => {
      const req = request(
        { host: "127.0.0.1", port: proxy.port, path: "/hang", agent: false, headers: { host: `${RUNNING}.${DOMAIN}`, ...auth(token(RUNNING)) } },
        (res) => res.once("data", () => (req.destroy(), resolve())),
      );
      req.on("error", () => undefined);
      req.on("error", reject);
      req.end();
    });
    await hungResponseClosed;
  });

  test("a guest that dies mid-response cuts the client's connection, and the proxy carries on", async () => {
    const complete = await new Promise<boolean>((resolve) => {
      const req = request(
        { host: "127.0.0.1", port: proxy.port, path: "/die", agent: false, headers: { host: `${RUNNING}.${DOMAIN}`, ...auth(token(RUNNING)) } },
        (res) => {
          res.on("data", () => undefined);
          res.on("error", () => undefined);
          res.on("close", () => resolve(res.complete));
        },
      );
      req.on("error", () => resolve(false));
      req.end();
    });
    assert.equal(complete, false);
    assert.equal((await send({ microvmId: RUNNING, path: "/echo", headers: auth(token(RUNNING)) })).status, 201);
  });

  test("a WebSocket echoes through the proxy, and the guest's upgrade carries no token", async () => {
    const before = calls.activity.length;
    const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/chat`, { headers: { host: `${RUNNING}.${DOMAIN}`, ...auth(token(RUNNING)) } });
    assert.deepEqual(await converse(ws, ["hello", "again"]), ["echo: hello", "echo: again"]);
    assert.equal(wsUpgradeHeaders?.["x-aws-proxy-auth"], undefined);
    assert.equal(wsUpgradeHeaders?.["x-forwarded-host"], `${RUNNING}.${DOMAIN}`);
    assert.ok(calls.activity.slice(before).includes(RUNNING));
  });

  test("Expect: 100-continue is answered only once the request is authorized", async () => {
    const refusedAnswer = await expectContinue({});
    assert.deepEqual([refusedAnswer.continued, refusedAnswer.status], [false, 401]);
    const accepted = await expectContinue(auth(token(RUNNING)));
    assert.deepEqual([accepted.continued, accepted.status, JSON.parse(accepted.body).body], [true, 201, "body"]);
    assert.equal(seen.at(-1)!.headers.expect, undefined, "the proxy answered the expectation itself");
  });

  test("data on a WebSocket or a streamed response is activity, reported at most once a second per MicroVM", async () => {
    let clock = Date.now();
    const clocked = await startEndpointProxy({ host: "127.0.0.1", port: 0, tokens, targets, domain: DOMAIN, log: pino({ level: "silent" }), now: () => new Date(clock) });
    const reports = () => calls.activity.filter((id) => id === RUNNING).length;
    try {
      const ws = new WebSocket(`ws://127.0.0.1:${clocked.port}/`, { headers: { host: `${RUNNING}.${DOMAIN}`, ...auth(token(RUNNING)) } });
      await new Promise((resolve, reject) => (ws.once("open", resolve), ws.once("error", reject)));
      const echo = (text: string) => new Promise<unknown>((resolve) => (ws.once("message", resolve), ws.send(text)));
      const afterUpgrade = reports();
      await echo("same second as the upgrade");
      assert.equal(reports(), afterUpgrade);
      clock += 1500;
      await echo("a second later");
      assert.equal(reports(), afterUpgrade + 1, "one report for both directions within the second");
      ws.close();
      await new Promise((resolve) => ws.once("close", resolve));

      const beforeStream = reports();
      await new Promise<void>((resolve, reject) => {
        const req = request(
          { host: "127.0.0.1", port: clocked.port, path: "/stream", agent: false, headers: { host: `${RUNNING}.${DOMAIN}`, ...auth(token(RUNNING)) } },
          (res) => {
            res.once("data", () => {
              clock += 1500;
              releaseStream();
            });
            res.on("data", () => undefined);
            res.on("end", resolve);
          },
        );
        req.on("error", reject);
        req.end();
      });
      assert.equal(reports(), beforeStream + 2, "the request, then the part that came a second later");
    } finally {
      await clocked.close();
    }
  });
});

describe("refusals", () => {
  test("a missing token is 401", async () => {
    await refused({ microvmId: RUNNING }, 401, "UnauthorizedException", /X-aws-proxy-auth header is missing/);
  });

  test("malformed, forged and expired tokens are 403", async () => {
    await refused({ microvmId: RUNNING, headers: auth("garbage") }, 403, "AccessDeniedException", /malformed/);
    await refused({ microvmId: RUNNING, headers: auth(token(RUNNING, {}, new TokenAuthority(randomBytes(32)))) }, 403, "AccessDeniedException", /signature/);
    const expired = token(RUNNING, { issuedAt: nowSeconds() - 7200, expiresAt: nowSeconds() - 3600 });
    await refused({ microvmId: RUNNING, headers: auth(expired) }, 403, "AccessDeniedException", /The X-aws-proxy-auth token has expired\./);
  });

  test("another MicroVM's token, or a shell token, is 403", async () => {
    await refused({ microvmId: RUNNING, headers: auth(token(OTHER)) }, 403, "AccessDeniedException", new RegExp(`not for MicroVM ${RUNNING}`));
    await refused({ microvmId: RUNNING, headers: auth(token(RUNNING, { kind: "shell" })) }, 403, "AccessDeniedException", /shell token/);
  });

  test("a port outside the token's scope is 403; a malformed port header is 400", async () => {
    await refused({ microvmId: RUNNING, headers: auth(token(RUNNING), { "X-aws-proxy-port": "9001" }) }, 403, "AccessDeniedException", /The token does not allow port 9001\./);
    for (const bad of ["abc", "0", "65536", "80.5", "-1", ""]) {
      await refused({ microvmId: RUNNING, headers: auth(token(RUNNING), { "X-aws-proxy-port": bad }) }, 400, "BadRequestException", /X-aws-proxy-port/);
    }
  });

  test("a host that names no MicroVM endpoint is 404, looked up nowhere", async () => {
    const lookups = calls.findMicrovm;
    for (const host of ["example.com", `${RUNNING}.example.com`, `x.${RUNNING}.${DOMAIN}`, `app.${DOMAIN}`, DOMAIN]) {
      await refused({ host, headers: auth(token(RUNNING)) }, 404, "ResourceNotFoundException", /No MicroVM endpoint/);
    }
    assert.equal(calls.findMicrovm, lookups);
  });

  test("a MicroVM that does not exist, or is terminating or terminated, is 404", async () => {
    await refused({ microvmId: UNKNOWN, headers: auth(token(UNKNOWN)) }, 404, "ResourceNotFoundException", /not found/);
    for (const state of ["TERMINATING", "TERMINATED"] as const) {
      const id = byState[state]!;
      await refused({ microvmId: id, headers: auth(token(id)) }, 404, "ResourceNotFoundException", new RegExp(`MicroVM ${id} is ${state}`));
    }
  });

  test("a MicroVM that is pending or suspended is 503 with Retry-After", async () => {
    for (const state of ["STARTING", "RESUMING", "SUSPENDING", "SUSPENDED"] as const) {
      const id = byState[state]!;
      // Starting and resuming are both PENDING to a client.
      const answer = await refused({ microvmId: id, headers: auth(token(id)) }, 503, "ServiceUnavailableException", new RegExp(`is ${microvmState(state)}`));
      assert.equal(answer.headers["retry-after"], "1");
    }
  });

  test("a MicroVM with no reachable VM is 503", async () => {
    const answer = await refused({ microvmId: UNAVAILABLE, headers: auth(token(UNAVAILABLE)) }, 503, "ServiceUnavailableException");
    assert.equal(answer.headers["retry-after"], "1");
  });

  test("a guest that refuses the connection is 502", async () => {
    await refused({ microvmId: REFUSING, headers: auth(token(REFUSING)) }, 502, "BadGatewayException", /refused the connection/);
  });

  test("a refused WebSocket upgrade gets the HTTP error, then the socket closes", async () => {
    const before = guestConnections;
    for (const [id, headers, status, errorType] of [
      [RUNNING, {}, 401, "UnauthorizedException"],
      [RUNNING, auth(token(OTHER)), 403, "AccessDeniedException"],
      [byState.SUSPENDED!, auth(token(byState.SUSPENDED!)), 503, "ServiceUnavailableException"],
      [REFUSING, auth(token(REFUSING)), 502, "BadGatewayException"],
    ] as const) {
      const answer = await rawUpgrade({ host: `${id}.${DOMAIN}`, ...headers });
      assert.match(answer, new RegExp(`^HTTP/1.1 ${status} `));
      assert.match(answer, new RegExp(`\r\nx-amzn-errortype: ${errorType}\r\n`));
      assert.ok(JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)).message);
    }
    assert.equal(guestConnections, before);
  });

  test("the ws client sees a refused upgrade as an unexpected response", async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/chat`, { headers: { host: `${RUNNING}.${DOMAIN}` } });
    ws.on("error", () => undefined); // terminating a handshake is reported as an error
    const status = await new Promise<number | undefined>((resolve, reject) => {
      ws.once("unexpected-response", (_req, res) => resolve(res.statusCode));
      ws.once("open", () => reject(new Error("the upgrade was accepted")));
    });
    ws.terminate();
    assert.equal(status, 401);
  });
});

/** A request with `Expect: 100-continue` that sends its body only if invited to. */
function expectContinue(headers: Record<string, string>): Promise<{ continued: boolean; status: number; body: string }> {
  return new Promise((resolve, reject) => {
    let continued = false;
    const req = request({
      host: "127.0.0.1",
      port: proxy.port,
      method: "POST",
      path: "/echo",
      agent: false,
      headers: { host: `${RUNNING}.${DOMAIN}`, expect: "100-continue", "content-length": "4", ...headers },
    });
    req.on("continue", () => {
      continued = true;
      req.end("body");
    });
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        req.destroy();
        resolve({ continued, status: res.statusCode!, body: Buffer.concat(chunks).toString() });
      });
    });
    req.on("error", reject);
  });
}

/** Everything the proxy writes back to a WebSocket upgrade, up to its closing the connection. */
function rawUpgrade(headers: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(proxy.port, "127.0.0.1", () => {
      const lines = ["GET /chat HTTP/1.1", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}`];
      for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
      socket.write(`${lines.join("\r\n")}\r\n\r\n`);
    });
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("end", () => resolve(Buffer.concat(chunks).toString()));
    socket.on("error", reject);
  });
}
