import { existsSync, rmSync, statSync, writeFileSync } from "node:fs";
import { Agent } from "node:http";
import { availableParallelism, cpus, release } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { qemuVersion } from "../src/drivers/qemu/acceleration.js";
import { BUILD_ROLE, BUSYBOX, eventually, startVmTestServer, type TestServer } from "../test/support/server.js";
import { qemuProcesses, writeTestApp } from "../test/vm/support.js";
import { qemuMemory, type QemuMemory } from "./host-memory.js";
import { get, load, type HttpTarget, type LoadResult } from "./http-load.js";
import { heading, round, spread, table, type Spread } from "./report.js";

/**
 * `npm run bench`: what running a MicroVM costs on this host, measured on a real
 * server (QEMU, the tests' shared base-image cache) in this process.
 *
 *   server ─► image "bench": writeTestApp() + www/index.html on the busybox base, 256 MiB
 *          ─► 1. RunMicrovm → first byte of a 200 through the endpoint, N MicroVMs one after another
 *          ─► 2. requests/s for a static file: through the endpoint proxy, then straight to
 *                QEMU's loopback forward of guest port 8080 (the baseline), same client
 *          ─► 3. host memory (RSS, PSS) of M QEMU processes running side by side
 *          ─► stop the server; exit 1 if any QEMU outlived it
 *
 * Prints a table per part and, last, one JSON line with every number.
 */

function parseOptions() {
  const { values: flags } = parseArgs({
    options: {
      runs: { type: "string", default: "5" },
      seconds: { type: "string", default: "5" },
      concurrency: { type: "string", default: "4" },
      microvms: { type: "string", default: "3" },
    },
  });
  const positiveInteger = (name: string, value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, not ${JSON.stringify(value)}`);
    return n;
  };
  return {
    runs: positiveInteger("runs", flags.runs),
    seconds: positiveInteger("seconds", flags.seconds),
    concurrency: positiveInteger("concurrency", flags.concurrency),
    microvms: positiveInteger("microvms", flags.microvms),
  };
}

let options: ReturnType<typeof parseOptions>;
try {
  options = parseOptions();
} catch (error) {
  console.error(`${(error as Error).message}\nusage: npm run bench -- [--runs N] [--seconds S] [--concurrency C] [--microvms M]`);
  process.exit(2);
}

const IMAGE = "bench";
const GUEST_MEMORY_MIB = 256;
const GUEST_PORT = 8080;
const STATIC_PATH = "/index.html";
/** How often the first-byte probe retries a 503 (and the watcher looks at state and files). */
const POLL_MS = 20;
const WARMUP_SECONDS = 1;
const BUILD_TIMEOUT_MS = 180_000;
const RUN_TIMEOUT_MS = 120_000;

type Obj = Record<string, unknown>;

let t: TestServer;

async function tokenFor(microvmId: string): Promise<string> {
  const answer = await t.client.call("CreateMicrovmAuthToken", { microvmIdentifier: microvmId, allowedPorts: [{ port: GUEST_PORT }], expirationInMinutes: 60 });
  return (answer.authToken as Record<string, string>)["X-aws-proxy-auth"]!;
}

/** The endpoint as a client reaches it: the proxy's address, the MicroVM's host name, the token. */
function endpointTarget(microvmId: string, token: string): HttpTarget {
  const proxy = new URL(t.server.proxyUrl);
  return { host: proxy.hostname, port: Number(proxy.port), headers: { host: `${microvmId}.microvms.localhost:${proxy.port}`, "x-aws-proxy-auth": token } };
}

function getMicrovm(microvmId: string): Promise<Obj> {
  return t.client.call("GetMicrovm", { microvmIdentifier: microvmId });
}

function untilState(microvmId: string, state: string): Promise<Obj> {
  return eventually(
    async () => {
      const m = await getMicrovm(microvmId);
      if (m.state === state) return m;
      if (m.state === "TERMINATED") throw new Error(`MicroVM ${microvmId} ended: ${String(m.stateReason)}`);
      return undefined;
    },
    `MicroVM ${microvmId} to be ${state}`,
    RUN_TIMEOUT_MS,
  );
}

async function terminate(microvmId: string): Promise<void> {
  await t.client.call("TerminateMicrovm", { microvmIdentifier: microvmId });
  await untilState(microvmId, "TERMINATED");
  const left = qemuProcesses(microvmId);
  if (left.length > 0) throw new Error(`QEMU ${left.join(", ")} still runs for terminated MicroVM ${microvmId}`);
}

/** The one QEMU process of a running MicroVM. */
function qemuOf(microvmId: string): number {
  const pids = qemuProcesses(microvmId);
  if (pids.length !== 1) throw new Error(`expected one QEMU for ${microvmId}, found ${pids.length}`);
  return pids[0]!;
}

// ── the image ─────────────────────────────────────────────────────────────

async function buildImage(): Promise<{ seconds: number }> {
  const appDir = writeTestApp();
  try {
    // BusyBox httpd serves a file itself; a CGI script costs a fork and a shell per request.
    writeFileSync(join(appDir, "www", "index.html"), `<!doctype html>\n<title>bench</title>\n<p>${"static ".repeat(64)}</p>\n`);
    const started = performance.now();
    await t.client.call("CreateMicrovmImage", {
      name: IMAGE,
      baseImageArn: BUSYBOX,
      buildRoleArn: BUILD_ROLE,
      codeArtifact: { uri: pathToFileURL(appDir).href },
      resources: [{ minimumMemoryInMiB: GUEST_MEMORY_MIB }],
    });
    const version = await eventually(
      async () => {
        const v = await t.client.call("GetMicrovmImageVersion", { imageIdentifier: IMAGE, imageVersion: "1" });
        return v.state === "SUCCESSFUL" || v.state === "FAILED" ? v : undefined;
      },
      "the bench image to build",
      BUILD_TIMEOUT_MS,
    );
    if (version.state !== "SUCCESSFUL") throw new Error(`the bench image failed to build: ${String(version.stateReason)}`);
    return { seconds: (performance.now() - started) / 1000 };
  } finally {
    rmSync(appDir, { recursive: true, force: true });
  }
}

// ── 1. RunMicrovm to first byte ─────────────────────────────────────────────

/** Milliseconds after RunMicrovm was sent. */
interface StartRun {
  microvmId: string;
  /** RunMicrovm answered (PENDING). */
  answered: number;
  /** QEMU wrote its pid file: the disk overlay exists and QEMU is up. */
  qemuUp: number | undefined;
  /** The application's first output line reached output.log: the guest booted and ran bootstrap. */
  bootstrap: number | undefined;
  /** The MicroVM's startedAt, the server's own clock: when the agent reported the port listening. */
  running: number;
  /** When a GetMicrovm poll first showed RUNNING (an upper bound on `running`). */
  runningSeen: number | undefined;
  /** The first byte of a 200 through the endpoint. */
  firstByte: number;
  /** TerminateMicrovm sent → TERMINATED seen, ms. */
  terminateMs: number;
}

async function startToFirstByte(): Promise<StartRun> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const sent = performance.now();
  const sentEpochMs = performance.timeOrigin + sent;
  const run = await t.client.call("RunMicrovm", { imageIdentifier: IMAGE });
  const answered = performance.now() - sent;
  const microvmId = run.microvmId as string;
  try {
    const target = endpointTarget(microvmId, await tokenFor(microvmId));
    const dir = join(t.dataDir, "microvms", microvmId);
    const marks: { qemuUp?: number; bootstrap?: number; runningSeen?: number; startedAt?: number } = {};
    let answeredOk = false;

    // Watches state and files beside the probe, until RUNNING is seen and the files have told their times.
    const watcher = (async () => {
      while (!answeredOk || marks.runningSeen === undefined || marks.bootstrap === undefined) {
        const now = performance.now() - sent;
        if (marks.qemuUp === undefined && existsSync(join(dir, "run", "qemu.pid"))) marks.qemuUp = now;
        if (marks.bootstrap === undefined && (statSync(join(dir, "output.log"), { throwIfNoEntry: false })?.size ?? 0) > 0) marks.bootstrap = now;
        if (marks.runningSeen === undefined) {
          const m = await getMicrovm(microvmId);
          if (m.state === "RUNNING") {
            marks.runningSeen = performance.now() - sent;
            marks.startedAt = (m.startedAt as number) * 1000;
          } else if (m.state !== "PENDING") throw new Error(`MicroVM ${microvmId} is ${String(m.state)}: ${String(m.stateReason)}`);
        }
        if (performance.now() - sent > RUN_TIMEOUT_MS) throw new Error(`MicroVM ${microvmId} did not start within ${RUN_TIMEOUT_MS / 1000} s`);
        await sleep(POLL_MS);
      }
    })();
    watcher.catch(() => undefined); // awaited below; the probe may fail first

    let firstByte: number;
    for (;;) {
      const answer = await get(agent, target, STATIC_PATH);
      if (answer.status === 200) {
        firstByte = answer.firstByteAt - sent;
        answeredOk = true;
        break;
      }
      if (answer.status !== 503) throw new Error(`the endpoint of ${microvmId} answered ${answer.status}`);
      if (performance.now() - sent > RUN_TIMEOUT_MS) throw new Error(`the endpoint of ${microvmId} still answers 503`);
      await sleep(POLL_MS);
    }
    await watcher;

    const terminateSent = performance.now();
    await terminate(microvmId);
    return {
      microvmId,
      answered,
      qemuUp: marks.qemuUp,
      bootstrap: marks.bootstrap,
      running: marks.startedAt! - sentEpochMs,
      runningSeen: marks.runningSeen,
      firstByte,
      terminateMs: performance.now() - terminateSent,
    };
  } catch (error) {
    await terminate(microvmId).catch(() => undefined);
    throw error;
  } finally {
    agent.destroy();
  }
}

async function benchStart(): Promise<{ runs: StartRun[]; totalMs: Spread; toRunningMs: Spread; runningToFirstByteMs: Spread }> {
  heading(`1. RunMicrovm → first byte of a 200 through the endpoint (${options.runs} runs, one MicroVM at a time)`);
  const runs: StartRun[] = [];
  for (let i = 0; i < options.runs; i++) runs.push(await startToFirstByte());
  const ms = (v: number | undefined) => (v === undefined ? "-" : round(v));
  console.log("ms after RunMicrovm was sent:");
  console.log(
    table(
      ["run", "answered", "QEMU up", "bootstrap", "RUNNING", "(poll saw)", "first byte", "RUNNING→byte", "terminate"],
      runs.map((r, i) => [
        String(i + 1),
        ms(r.answered),
        ms(r.qemuUp),
        ms(r.bootstrap),
        ms(r.running),
        ms(r.runningSeen),
        ms(r.firstByte),
        ms(r.firstByte - r.running),
        ms(r.terminateMs),
      ]),
    ),
  );
  const totalMs = spread(runs.map((r) => r.firstByte));
  const toRunningMs = spread(runs.map((r) => r.running));
  const runningToFirstByteMs = spread(runs.map((r) => r.firstByte - r.running));
  console.log();
  console.log(
    table(
      ["ms", "median", "min", "max"],
      [
        ["RunMicrovm → first byte", ...spreadCells(totalMs)],
        ["RunMicrovm → RUNNING", ...spreadCells(toRunningMs)],
        ["RUNNING → first byte", ...spreadCells(runningToFirstByteMs)],
      ],
    ),
  );
  console.log("(RUNNING is the MicroVM's startedAt; QEMU up and bootstrap are when the pid file and the first output line appeared, to 20 ms.)");
  return { runs, totalMs, toRunningMs, runningToFirstByteMs };
}

const spreadCells = (s: Spread) => [round(s.median), round(s.min), round(s.max)];

// ── 2. requests per second, proxy against direct ──────────────────────────────

interface RateSummary {
  perSecond: number;
  ok: number;
  failed: number;
  connections: number;
  /** Requests that took 0.5 s or more: a SYN dropped and sent again after 1 s. */
  stalls: number;
  listenOverflows: number;
  latencyMs: Spread & { p99: number };
}

const STALL_MS = 500;

function summarize(result: LoadResult): RateSummary {
  const sorted = [...result.latenciesMs].sort((a, b) => a - b);
  return {
    perSecond: round(result.perSecond, 1),
    ok: result.ok,
    failed: result.failed,
    connections: result.connections,
    stalls: sorted.filter((ms) => ms >= STALL_MS).length,
    listenOverflows: result.listenOverflows,
    latencyMs: { ...mapSpread(spread(sorted), 2), p99: round(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))]!, 2) },
  };
}

const mapSpread = (s: Spread, digits: number): Spread => ({ median: round(s.median, digits), min: round(s.min, digits), max: round(s.max, digits) });

async function benchThroughput(): Promise<{ proxy: RateSummary; direct: RateSummary; ratio: number; qemuBefore: QemuMemory; qemuAfter: QemuMemory }> {
  heading(`2. GET ${STATIC_PATH} for ${options.seconds} s, concurrency ${options.concurrency}: through the proxy vs the guest port directly`);
  const run = await t.client.call("RunMicrovm", { imageIdentifier: IMAGE });
  const microvmId = run.microvmId as string;
  try {
    await untilState(microvmId, "RUNNING");
    const proxy = endpointTarget(microvmId, await tokenFor(microvmId));
    const forward = await t.server.engine.connect(microvmId, GUEST_PORT);
    const direct: HttpTarget = { host: forward.host, port: forward.port, headers: { host: `${forward.host}:${forward.port}` } };
    const pid = qemuOf(microvmId);
    const qemuBefore = roundMemory(qemuMemory(pid, GUEST_MEMORY_MIB));

    const measure = async (target: HttpTarget) => {
      await load(target, STATIC_PATH, WARMUP_SECONDS, options.concurrency);
      return summarize(await load(target, STATIC_PATH, options.seconds, options.concurrency));
    };
    const viaProxy = await measure(proxy);
    const viaDirect = await measure(direct);
    const qemuAfter = roundMemory(qemuMemory(pid, GUEST_MEMORY_MIB));
    const ratio = round(viaProxy.perSecond / viaDirect.perSecond, 3);

    const row = (name: string, target: HttpTarget, r: RateSummary) => [
      `${name} ${target.host}:${target.port}`,
      r.perSecond,
      r.ok,
      r.failed,
      r.connections,
      r.latencyMs.median,
      r.latencyMs.p99,
      r.latencyMs.max,
      r.stalls,
      r.listenOverflows,
    ];
    console.log(
      table(
        ["path", "req/s", "200s", "failed", "connections", "p50 ms", "p99 ms", "max ms", `≥${STALL_MS} ms`, "listen overflows"],
        [row("proxy ", proxy, viaProxy), row("direct", direct, viaDirect)],
      ),
    );
    console.log(`proxy/direct = ${ratio} (each after a ${WARMUP_SECONDS} s warm-up; client, proxy and server share this Node process)`);
    console.log("listen overflows: SYNs the host dropped on a full accept queue during the load (host-wide); each stalls a request 1 s");
    console.log(
      `QEMU ${pid} before → after the load: RSS ${qemuBefore.rssMiB} → ${qemuAfter.rssMiB} MiB, PSS ${qemuBefore.pssMiB} → ${qemuAfter.pssMiB} MiB`,
    );
    return { proxy: viaProxy, direct: viaDirect, ratio, qemuBefore, qemuAfter };
  } finally {
    await terminate(microvmId);
  }
}

const roundMemory = (m: QemuMemory): QemuMemory => ({
  rssMiB: round(m.rssMiB, 1),
  pssMiB: round(m.pssMiB, 1),
  guestRamMiB: m.guestRamMiB === undefined ? undefined : round(m.guestRamMiB, 1),
});

// ── 3. host memory per MicroVM ──────────────────────────────────────────────

/** The guest hands freed pages back (virtio-balloon free page reporting), so RSS falls for a while after boot. */
const SETTLE_SECONDS = 3;

interface VmMemory {
  microvmId: string;
  pid: number;
  atRunning: QemuMemory;
  settled: QemuMemory;
}

function meanMemory(samples: QemuMemory[]): QemuMemory {
  const mean = (pick: (m: QemuMemory) => number | undefined) => {
    const values = samples.map(pick);
    return values.some((v) => v === undefined) ? undefined : values.reduce((sum: number, v) => sum + v!, 0) / values.length;
  };
  return roundMemory({ rssMiB: mean((m) => m.rssMiB)!, pssMiB: mean((m) => m.pssMiB)!, guestRamMiB: mean((m) => m.guestRamMiB) });
}

async function benchMemory(): Promise<{ guestMiB: number; allRunningMs: number; vms: VmMemory[]; meanAtRunning: QemuMemory; meanSettled: QemuMemory }> {
  heading(`3. Host memory of ${options.microvms} running MicroVMs (guest memory ${GUEST_MEMORY_MIB} MiB each)`);
  const sent = performance.now();
  const ids = await Promise.all(
    Array.from({ length: options.microvms }, async () => (await t.client.call("RunMicrovm", { imageIdentifier: IMAGE })).microvmId as string),
  );
  try {
    await Promise.all(ids.map((id) => untilState(id, "RUNNING")));
    const allRunningMs = performance.now() - sent;
    const pids = ids.map(qemuOf);
    const atRunning = pids.map((pid) => roundMemory(qemuMemory(pid, GUEST_MEMORY_MIB)));
    await sleep(SETTLE_SECONDS * 1000);
    const settled = pids.map((pid) => roundMemory(qemuMemory(pid, GUEST_MEMORY_MIB)));
    const vms: VmMemory[] = ids.map((microvmId, i) => ({ microvmId, pid: pids[i]!, atRunning: atRunning[i]!, settled: settled[i]! }));
    const meanAtRunning = meanMemory(atRunning);
    const meanSettled = meanMemory(settled);

    const cells = (m: QemuMemory) => [m.rssMiB, m.pssMiB, m.guestRamMiB ?? "-", m.guestRamMiB === undefined ? "-" : round(m.rssMiB - m.guestRamMiB, 1)];
    const when = ["all RUNNING", `+${SETTLE_SECONDS} s`];
    console.log(
      table(
        ["MicroVM", "QEMU pid", "when", "RSS MiB", "PSS MiB", "guest RAM MiB", "rest of QEMU MiB"],
        [
          ...vms.flatMap((vm) => [
            [vm.microvmId, vm.pid, when[0]!, ...cells(vm.atRunning)],
            ["", "", when[1]!, ...cells(vm.settled)],
          ]),
          ["mean", "", when[0]!, ...cells(meanAtRunning)],
          ["", "", when[1]!, ...cells(meanSettled)],
        ],
      ),
    );
    console.log(`guest memory ${GUEST_MEMORY_MIB} MiB each; "guest RAM" is the resident part of its mapping, the rest is QEMU's own (devices, heap, libraries; under TCG also its translated-code buffer)`);
    console.log(`all ${ids.length} RUNNING ${round(allRunningMs)} ms after the RunMicrovm calls (booting side by side)`);
    return { guestMiB: GUEST_MEMORY_MIB, allRunningMs: round(allRunningMs), vms, meanAtRunning, meanSettled };
  } finally {
    await Promise.all(ids.map((id) => terminate(id)));
  }
}

// ── main ────────────────────────────────────────────────────────────────────

async function main(): Promise<number> {
  const started = performance.now();
  t = await startVmTestServer();
  const leftovers = () => qemuProcesses(t.dataDir);
  let failure: unknown;
  const result: Obj = { bench: "run-microvm", options };
  try {
    const environment = {
      engine: t.server.engine.description,
      cpus: availableParallelism(),
      cpuModel: cpus()[0]?.model ?? "unknown",
      kernel: release(),
      qemu: await qemuVersion(),
      node: process.version,
    };
    result.environment = environment;
    heading("Environment");
    const shown = { acceleration: environment.engine, CPUs: `${environment.cpus} × ${environment.cpuModel}`, kernel: environment.kernel, QEMU: environment.qemu, Node: environment.node };
    for (const [name, value] of Object.entries(shown)) console.log(`${name.padEnd(13)}${value}`);

    const build = await buildImage();
    console.log(`image "${IMAGE}" built in ${round(build.seconds, 1)} s (base images from the shared cache)`);
    result.build = { seconds: round(build.seconds, 1) };

    const start = await benchStart();
    result.firstByte = {
      totalMs: mapSpread(start.totalMs, 0),
      toRunningMs: mapSpread(start.toRunningMs, 0),
      runningToFirstByteMs: mapSpread(start.runningToFirstByteMs, 0),
      runs: start.runs.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === "number" ? round(v) : v]))),
    };
    result.throughput = await benchThroughput();
    result.memory = await benchMemory();
  } catch (error) {
    failure = error;
  } finally {
    await t.stop();
  }
  const left = leftovers();
  result.leftoverQemu = left;
  result.seconds = round((performance.now() - started) / 1000, 1);

  heading("Done");
  if (failure) console.error(`bench failed: ${failure instanceof Error ? (failure.stack ?? failure.message) : String(failure)}`);
  if (left.length > 0) console.error(`QEMU processes outlived the server: ${left.join(", ")}`);
  else console.log("no QEMU process left");
  console.log(`total ${result.seconds} s`);
  console.log(JSON.stringify(result));
  return failure || left.length > 0 ? 1 : 0;
}

process.exitCode = await main();
