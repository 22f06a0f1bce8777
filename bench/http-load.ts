import { readFileSync } from "node:fs";
import { Agent, request } from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

/**
 * The HTTP client of the benchmarks: one code path for every target, so that
 * the proxy and the guest port reached directly are measured the same way.
 */

/** Where requests go: an address, and the headers that pick the MicroVM there (Host, token). */
export interface HttpTarget {
  host: string;
  port: number;
  headers: Record<string, string>;
}

export interface Answer {
  status: number;
  /** performance.now() when the response head arrived: its first byte, for answers this small. */
  firstByteAt: number;
}

/** One GET whose body is read to the end. */
export function get(agent: Agent, target: HttpTarget, path: string, onSocket?: (socket: Socket) => void): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ agent, host: target.host, port: target.port, path, headers: target.headers }, (res) => {
      const firstByteAt = performance.now();
      res.on("data", () => undefined);
      res.on("end", () => resolve({ status: res.statusCode ?? 0, firstByteAt }));
      res.on("error", reject);
    });
    if (onSocket) req.on("socket", onSocket);
    req.on("error", reject);
    req.end();
  });
}

export interface LoadResult {
  /** Answers with status 200. */
  ok: number;
  /** Other answers and connection errors. */
  failed: number;
  elapsedMs: number;
  perSecond: number;
  /** TCP connections the client opened: 1 per worker if the server keeps them alive. */
  connections: number;
  /** Per-request time of the 200 answers, ms. */
  latenciesMs: number[];
  /**
   * SYNs the host's kernel dropped because a listen queue was full, host-wide,
   * during the load. Each costs its connection a 1 s retransmission.
   */
  listenOverflows: number;
}

/** TcpExt ListenOverflows from /proc/net/netstat: a header line of names, then one of values. */
function listenOverflows(): number {
  const lines = readFileSync("/proc/net/netstat", "utf8").split("\n").filter((line) => line.startsWith("TcpExt:"));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  return Number(values[names.indexOf("ListenOverflows")] ?? 0);
}

/** GETs `path` from `concurrency` workers, each sending its next request when the last one ended, for `seconds`. */
export async function load(target: HttpTarget, path: string, seconds: number, concurrency: number): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const sockets = new Set<Socket>();
  const latenciesMs: number[] = [];
  let failed = 0;
  const overflowsBefore = listenOverflows();
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const worker = async () => {
    while (performance.now() < deadline) {
      const sent = performance.now();
      try {
        const answer = await get(agent, target, path, (socket) => sockets.add(socket));
        if (answer.status === 200) latenciesMs.push(performance.now() - sent);
        else failed++;
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsedMs = performance.now() - started;
  agent.destroy();
  return {
    ok: latenciesMs.length,
    failed,
    elapsedMs,
    perSecond: (latenciesMs.length / elapsedMs) * 1000,
    connections: sockets.size,
    latenciesMs,
    listenOverflows: listenOverflows() - overflowsBefore,
  };
}

export interface FirstOk {
  /** performance.now() when the first 200's head arrived. */
  firstByteAt: number;
  /** Requests sent, the successful one included. */
  attempts: number;
}

/**
 * GETs `path` until a 200 and tells when its first byte came, for a guest that
 * may not listen yet. Each attempt has a connection of its own: one that fails
 * (the guest refused, the forward hung up) is followed by the next after
 * `intervalMs`; one with no answer after `patienceMs` gets the next beside it,
 * still counting if it answers first. Through QEMU's user-mode forward a
 * connection made before the guest's network is up waits for slirp to resend
 * its SYN, seconds later: waiting it out would measure slirp, not the guest.
 */
export async function firstOk(
  target: HttpTarget,
  path: string,
  timing: { intervalMs: number; patienceMs: number; timeoutMs: number },
): Promise<FirstOk> {
  const agent = new Agent({ keepAlive: false });
  const deadline = performance.now() + timing.timeoutMs;
  let attempts = 0;
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<FirstOk>((resolve, reject) => {
      let done = false;
      const attempt = () => {
        if (done) return;
        if (performance.now() > deadline) {
          done = true;
          reject(new Error(`no 200 from ${target.host}:${target.port}${path} within ${timing.timeoutMs / 1000} s (${attempts} attempts)`));
          return;
        }
        const id = ++attempts;
        // Only the newest attempt schedules the next, so attempts never fan out.
        const latest = () => !done && id === attempts;
        timer = setTimeout(() => latest() && attempt(), timing.patienceMs);
        const retry = () => {
          if (!latest()) return;
          clearTimeout(timer);
          timer = setTimeout(attempt, timing.intervalMs);
        };
        get(agent, target, path).then((answer) => {
          if (done) return;
          if (answer.status !== 200) return retry();
          done = true;
          resolve({ firstByteAt: answer.firstByteAt, attempts });
        }, retry);
      };
      attempt();
    });
  } finally {
    clearTimeout(timer);
    agent.destroy(); // and with it the attempts still waiting
  }
}

/**
 * GETs `path` through a MicroVM's endpoint until a 200, for a MicroVM that is
 * starting or resuming: the proxy answers 503 until it runs, and the next GET
 * goes `intervalMs` after one. Any other answer is an error. One kept-alive
 * connection, as a client retrying would use.
 */
export async function firstOkThroughEndpoint(
  target: HttpTarget,
  path: string,
  timing: { intervalMs: number; timeoutMs: number },
): Promise<FirstOk> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const deadline = performance.now() + timing.timeoutMs;
  try {
    for (let attempts = 1; ; attempts++) {
      const answer = await get(agent, target, path);
      if (answer.status === 200) return { firstByteAt: answer.firstByteAt, attempts };
      if (answer.status !== 503) throw new Error(`the endpoint ${target.headers.host} answered ${answer.status} to GET ${path}`);
      if (performance.now() > deadline) throw new Error(`the endpoint ${target.headers.host} still answers 503 after ${timing.timeoutMs / 1000} s`);
      await sleep(timing.intervalMs);
    }
  } finally {
    agent.destroy();
  }
}
