import { existsSync, rmSync, writeFileSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { availableParallelism, cpus, release } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { chooseAcceleration, qemuVersion } from "../src/drivers/qemu/acceleration.js";
import { QemuDriver } from "../src/drivers/qemu/qemu-driver.js";
import { guestAssets, type GuestAssets } from "../src/agent/assets.js";
import { BUILD_ROLE, BUSYBOX, eventually, startVmTestServer, testCacheDir, type TestServer } from "../test/support/server.js";
import { qemuProcesses, writeTestApp } from "../test/vm/support.js";
import { fileSize, type FileSize } from "./disk-usage.js";
import { firstByteThroughDriver, type BuildSnapshot, type DriverStartRun, type StartKind } from "./driver-start.js";
import { qemuMemory, roundMemory, type QemuMemory } from "./host-memory.js";
import { firstOkThroughEndpoint, load, type HttpTarget, type LoadResult } from "./http-load.js";
import { MicrovmApi } from "./microvm-api.js";
import { benchSuspendedDensity } from "./suspended-density.js";
import { benchAutoResume, benchSuspendResume, type SuspendBenchContext } from "./suspend-resume.js";
import { heading, mapSpread, mib, round, spread, spreadCells, spreadTable, table, type Spread } from "./report.js";

/**
 * `npm run bench`: what running a MicroVM costs on this host, measured on a real
 * server (QEMU, the tests' shared base-image cache) in this process.
 *
 *   server ─► images "bench" (256 MiB) and "bench-1024" (1024 MiB): writeTestApp() +
 *             www/index.html on the busybox base, each built (cold boot, snapshot) one after the other
 *          ─► 1. RunMicrovm (a snapshot restore) → first byte of a 200 through the endpoint, N MicroVMs one after another
 *          ─► 2. the same image's snapshot files through a QemuDriver of our own, no server:
 *                cold boot and restore alternately, N each, → first byte from the guest
 *          ─► 3. requests/s for a static file: through the endpoint proxy, then straight to
 *                QEMU's loopback forward of guest port 8080 (the baseline), same client
 *          ─► 4. host memory (RSS, PSS) of M QEMU processes running side by side
 *          ─► 5. snapshot sizes of both images against their guest memory, and each one's restore → first byte
 *          ─► 6. each build's phases (phases.json) against its time CreateMicrovmImage → SUCCESSFUL
 *          ─► 7. SuspendMicrovm → SUSPENDED and the size of suspended.state, N MicroVMs one after another,
 *             8. each then ResumeMicrovm → first byte of a 200 through the endpoint (suspend-resume.ts)
 *          ─► 9. auto-resume: a GET to a SUSPENDED MicroVM with autoResumeEnabled → first byte of its 200
 *          ─► 10. D MicroVMs running, then suspended: QEMU memory against disk, and estimates of how many
 *                this host holds either way (suspended-density.ts)
 *          ─► stop the server; exit 1 if any QEMU outlived it (ours included: they run in its data directory)
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
      density: { type: "string", default: "4" },
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
    /** MicroVMs in part 10, running and then suspended. */
    density: positiveInteger("density", flags.density),
  };
}

let options: ReturnType<typeof parseOptions>;
try {
  options = parseOptions();
} catch (error) {
  console.error(`${(error as Error).message}\nusage: npm run bench -- [--runs N] [--seconds S] [--concurrency C] [--microvms M] [--density D]`);
  process.exit(2);
}

const IMAGE = "bench";
const GUEST_MEMORY_MIB = 256;
/** The second image, the same application with more guest memory, for snapshot sizes and restore time against memory. */
const LARGE_IMAGE = "bench-1024";
const LARGE_GUEST_MEMORY_MIB = 1024;
/** Restores per image in part 5: a few hundred ms each, and on 2 busy cores 3 did not make a steady median. */
const SIZE_RUNS = 5;
/** Through a QEMU forward: a GET unanswered this long gets a fresh one beside it (see firstOk). */
const PATIENCE_MS = 250;
const GUEST_PORT = 8080;
const STATIC_PATH = "/index.html";
/** How often the first-byte probe retries a 503 (and the watcher looks at state and files). */
const POLL_MS = 20;
const WARMUP_SECONDS = 1;
/** MicroVMs auto-resumed in part 9, one at a time. */
const AUTO_RESUME_RUNS = 3;
const BUILD_TIMEOUT_MS = 180_000;
const RUN_TIMEOUT_MS = 120_000;

type Obj = Record<string, unknown>;

let t: TestServer;

let microvms: MicrovmApi;

// ── the images ────────────────────────────────────────────────────────────

/** A built image: its build's snapshot on disk and what the API says of it. */
interface BenchImage {
  name: string;
  memoryMiB: number;
  buildId: string;
  /** CreateMicrovmImage sent → GetMicrovmImageVersion first showed SUCCESSFUL, ms. */
  buildMs: number;
  /** The build's phases.json (ms per phase), in the order written; undefined if the build left none. */
  phasesMs: Record<string, number> | undefined;
  /** GetMicrovmImageBuild's snapshotBuild. */
  snapshotBuild: { codeInstallSizeInBytes: number; diskSnapshotSizeInBytes: number; memorySnapshotSizeInBytes: number };
  files: BuildSnapshot;
  /** The snapshot's files as stat sees them, bytes: apparent size and allocated blocks. */
  sizes: { memoryRam: FileSize; stateBin: FileSize; diskExt4: FileSize };
}

async function buildImage(name: string, memoryMiB: number): Promise<BenchImage> {
  const appDir = writeTestApp();
  let buildMs: number;
  try {
    // BusyBox httpd serves a file itself; a CGI script costs a fork and a shell per request.
    writeFileSync(join(appDir, "www", "index.html"), `<!doctype html>\n<title>bench</title>\n<p>${"static ".repeat(64)}</p>\n`);
    const started = performance.now();
    await t.client.call("CreateMicrovmImage", {
      name,
      baseImageArn: BUSYBOX,
      buildRoleArn: BUILD_ROLE,
      codeArtifact: { uri: pathToFileURL(appDir).href },
      resources: [{ minimumMemoryInMiB: memoryMiB }],
    });
    const version = await eventually(
      async () => {
        const v = await t.client.call("GetMicrovmImageVersion", { imageIdentifier: name, imageVersion: "1" });
        return v.state === "SUCCESSFUL" || v.state === "FAILED" ? v : undefined;
      },
      `image ${name} to build`,
      BUILD_TIMEOUT_MS,
    );
    buildMs = performance.now() - started;
    if (version.state !== "SUCCESSFUL") throw new Error(`image ${name} failed to build: ${String(version.stateReason)}`);
  } finally {
    rmSync(appDir, { recursive: true, force: true });
  }
  const builds = (await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: name, imageVersion: "1" })).items as Obj[];
  const buildId = builds.find((b) => b.buildState === "SUCCESSFUL")?.buildId as string | undefined;
  if (!buildId) throw new Error(`image ${name} is SUCCESSFUL but lists no successful build`);
  const build = await t.client.call("GetMicrovmImageBuild", { imageIdentifier: name, imageVersion: "1", buildId });
  const dir = join(t.dataDir, "builds", buildId);
  const files: BuildSnapshot = { disk: join(dir, "disk.ext4"), memoryPath: join(dir, "memory.ram"), statePath: join(dir, "state.bin"), memoryMiB };
  const phasesMs = await readFile(join(dir, "phases.json"), "utf8").then((text) => JSON.parse(text) as Record<string, number>, () => undefined);
  return {
    name,
    memoryMiB,
    buildId,
    buildMs,
    phasesMs,
    snapshotBuild: build.snapshotBuild as BenchImage["snapshotBuild"],
    files,
    sizes: { memoryRam: await fileSize(files.memoryPath), stateBin: await fileSize(files.statePath), diskExt4: await fileSize(files.disk) },
  };
}

// ── 1. RunMicrovm (a restore) to first byte ───────────────────────────────────

/** Milliseconds after RunMicrovm was sent. */
interface StartRun {
  microvmId: string;
  /** RunMicrovm answered (PENDING). */
  answered: number;
  /** QEMU wrote its pid file: the disk overlay exists and QEMU is up, waiting for the snapshot. */
  qemuUp: number | undefined;
  /**
   * The MicroVM's startedAt, the server's own clock: the snapshot is loaded, the guest
   * runs again with its clock resynced, and the run hook (if any) answered.
   */
  running: number;
  /** When a GetMicrovm poll first showed RUNNING (an upper bound on `running`). */
  runningSeen: number | undefined;
  /** The first byte of a 200 through the endpoint. */
  firstByte: number;
  /** TerminateMicrovm sent → TERMINATED seen, ms. */
  terminateMs: number;
}

async function startToFirstByte(): Promise<StartRun> {
  const sent = performance.now();
  const sentEpochMs = performance.timeOrigin + sent;
  const microvmId = await microvms.run({ imageIdentifier: IMAGE });
  const answered = performance.now() - sent;
  try {
    const target = microvms.endpointTarget(microvmId, await microvms.token(microvmId));
    const dir = join(t.dataDir, "microvms", microvmId);
    const marks: { qemuUp?: number; runningSeen?: number; startedAt?: number } = {};
    let answeredOk = false;

    // Watches state and the pid file beside the probe, until RUNNING is seen. (A restored
    // application prints nothing: its bootstrap ran once, in the build.)
    const watcher = (async () => {
      while (!answeredOk || marks.runningSeen === undefined) {
        const now = performance.now() - sent;
        if (marks.qemuUp === undefined && existsSync(join(dir, "run", "qemu.pid"))) marks.qemuUp = now;
        if (marks.runningSeen === undefined) {
          const m = await microvms.getMicrovm(microvmId);
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
    try {
      firstByte = (await firstOkThroughEndpoint(target, STATIC_PATH, { intervalMs: POLL_MS, timeoutMs: RUN_TIMEOUT_MS })).firstByteAt - sent;
    } finally {
      answeredOk = true; // the watcher may stop
    }
    await watcher;

    const terminateSent = performance.now();
    await microvms.terminate(microvmId);
    return {
      microvmId,
      answered,
      qemuUp: marks.qemuUp,
      running: marks.startedAt! - sentEpochMs,
      runningSeen: marks.runningSeen,
      firstByte,
      terminateMs: performance.now() - terminateSent,
    };
  } catch (error) {
    await microvms.terminate(microvmId).catch(() => undefined);
    throw error;
  }
}

async function benchStart(): Promise<{ runs: StartRun[]; totalMs: Spread; toRunningMs: Spread; runningToFirstByteMs: Spread }> {
  heading(`1. RunMicrovm (a snapshot restore) → first byte of a 200 through the endpoint (${options.runs} runs, one MicroVM at a time)`);
  const runs: StartRun[] = [];
  for (let i = 0; i < options.runs; i++) runs.push(await startToFirstByte());
  const ms = (v: number | undefined) => (v === undefined ? "-" : round(v));
  console.log("ms after RunMicrovm was sent:");
  console.log(
    table(
      ["run", "answered", "QEMU up", "RUNNING", "(poll saw)", "first byte", "RUNNING→byte", "terminate"],
      runs.map((r, i) => [
        String(i + 1),
        ms(r.answered),
        ms(r.qemuUp),
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
    spreadTable("ms", [
      ["RunMicrovm → first byte", totalMs],
      ["RunMicrovm → RUNNING", toRunningMs],
      ["RUNNING → first byte", runningToFirstByteMs],
    ]),
  );
  console.log("(RUNNING is the MicroVM's startedAt: snapshot loaded, guest running, clock resynced; QEMU up is when its pid file appeared, to 20 ms.)");
  return { runs, totalMs, toRunningMs, runningToFirstByteMs };
}

// ── 2. restore against cold boot, same image, through the driver ──────────────

/** Our own driver, as the server's engine built it: same QEMU, same acceleration verdict (cached), same guest assets. */
async function benchDriver(): Promise<{ driver: QemuDriver; assets: GuestAssets }> {
  const log = t.server.log.child({ part: "bench" });
  const assets = await guestAssets(testCacheDir);
  const version = await qemuVersion();
  const choice = await chooseAcceleration({ setting: "auto", kernel: assets.kernel, initrd: assets.initrd, qemuVersion: version, cacheDir: testCacheDir, log });
  const driver = new QemuDriver(choice.accel, version, log);
  if (driver.description !== t.server.engine.description) {
    throw new Error(`our driver would be ${driver.description}, the server's is ${t.server.engine.description}`);
  }
  return { driver, assets };
}

let vmCount = 0;

function driverRun(vms: { driver: QemuDriver; assets: GuestAssets }, image: BenchImage, kind: StartKind): Promise<DriverStartRun> {
  return firstByteThroughDriver({
    kind,
    ...vms,
    snapshot: image.files,
    workDir: join(t.dataDir, "bench-vms"),
    name: `bench-${kind === "cold boot" ? "cold" : "restore"}-${++vmCount}`,
    guestPort: GUEST_PORT,
    path: STATIC_PATH,
    timing: { intervalMs: POLL_MS, patienceMs: PATIENCE_MS, timeoutMs: RUN_TIMEOUT_MS },
  });
}

interface ColdAgainstRestore {
  runs: DriverStartRun[];
  coldBootMs: Spread;
  restoreMs: Spread;
  /** Median cold boot → first byte over median restore → first byte. */
  ratio: number;
}

async function benchColdAgainstRestore(
  vms: { driver: QemuDriver; assets: GuestAssets },
  image: BenchImage,
  api: Spread,
): Promise<ColdAgainstRestore> {
  heading(`2. Restore vs cold boot → first byte, image "${image.name}" (${image.memoryMiB} MiB), through the driver, no server (${options.runs} of each, alternately)`);
  const runs: DriverStartRun[] = [];
  for (let i = 0; i < options.runs; i++) {
    runs.push(await driverRun(vms, image, "cold boot"));
    runs.push(await driverRun(vms, image, "restore"));
  }
  console.log("ms after the VM was asked for (the driver makes its disk overlay first):");
  console.log(
    table(
      ["run", "how", "VM up", "forward", "first byte", "GETs", "stop"],
      runs.map((r, i) => [
        String(Math.floor(i / 2) + 1),
        r.kind,
        round(r.vmUp),
        round(r.forward),
        round(r.firstByte),
        r.attempts,
        round(r.stopMs),
      ]),
    ),
  );
  const coldBootMs = spread(runs.filter((r) => r.kind === "cold boot").map((r) => r.firstByte));
  const restoreMs = spread(runs.filter((r) => r.kind === "restore").map((r) => r.firstByte));
  const ratio = round(coldBootMs.median / restoreMs.median, 1);
  console.log();
  console.log(
    spreadTable("ms to the first byte of a 200", [
      ["cold boot (driver.start)", coldBootMs],
      ["restore (driver.restore)", restoreMs],
      ["RunMicrovm, through the API and proxy (part 1)", api],
    ]),
  );
  console.log(`cold boot / restore = ${ratio} (medians)`);
  console.log(
    `VM up: start() returns once QEMU runs, before the guest boots; restore() once the snapshot is loaded and the guest runs again. GETs: requests until the 200 (a new one ${POLL_MS} ms after a refusal, or beside one unanswered for ${PATIENCE_MS} ms).`,
  );
  return { runs, coldBootMs, restoreMs, ratio };
}

// ── 3. requests per second, proxy against direct ──────────────────────────────

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

async function benchThroughput(): Promise<{ proxy: RateSummary; direct: RateSummary; ratio: number; qemuBefore: QemuMemory; qemuAfter: QemuMemory }> {
  heading(`3. GET ${STATIC_PATH} for ${options.seconds} s, concurrency ${options.concurrency}: through the proxy vs the guest port directly`);
  const microvmId = await microvms.run({ imageIdentifier: IMAGE });
  try {
    await microvms.untilState(microvmId, "RUNNING");
    const proxy = microvms.endpointTarget(microvmId, await microvms.token(microvmId));
    const forward = await t.server.engine.targets.connect(microvmId, GUEST_PORT);
    const direct: HttpTarget = { host: forward.host, port: forward.port, headers: { host: `${forward.host}:${forward.port}` } };
    const pid = microvms.qemuOf(microvmId);
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
    await microvms.terminate(microvmId);
  }
}

// ── 4. host memory per MicroVM ──────────────────────────────────────────────

/**
 * Memory moves for a while after the start: a restored guest's RAM faults in from
 * the snapshot as the guest touches it (RSS rises), and the guest hands pages it
 * frees back (virtio-balloon free page reporting; RSS falls).
 */
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
  heading(`4. Host memory of ${options.microvms} running MicroVMs (guest memory ${GUEST_MEMORY_MIB} MiB each)`);
  const sent = performance.now();
  const ids = await Promise.all(
    Array.from({ length: options.microvms }, async () => microvms.run({ imageIdentifier: IMAGE })),
  );
  try {
    await Promise.all(ids.map((id) => microvms.untilState(id, "RUNNING")));
    const allRunningMs = performance.now() - sent;
    const pids = ids.map((id) => microvms.qemuOf(id));
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
    console.log("restored guests map the snapshot's memory.ram privately: pages only read stay shared page cache (PSS splits them), pages written are copied per VM");
    console.log(`all ${ids.length} RUNNING ${round(allRunningMs)} ms after the RunMicrovm calls (restoring side by side)`);
    return { guestMiB: GUEST_MEMORY_MIB, allRunningMs: round(allRunningMs), vms, meanAtRunning, meanSettled };
  } finally {
    await Promise.all(ids.map((id) => microvms.terminate(id)));
  }
}

// ── 5. snapshot sizes against guest memory ──────────────────────────────────

interface SnapshotSize {
  image: string;
  guestMiB: number;
  snapshotBuild: BenchImage["snapshotBuild"];
  memoryRam: FileSize;
  stateBin: FileSize;
  diskExt4: FileSize;
  restoreVmUpMs: Spread;
  restoreFirstByteMs: Spread;
}

async function benchSnapshotSizes(vms: { driver: QemuDriver; assets: GuestAssets }, images: BenchImage[]): Promise<SnapshotSize[]> {
  heading(`5. Snapshot sizes against guest memory, and restore → first byte (${SIZE_RUNS} restores per image, alternately, through the driver)`);
  // Alternately, so that whatever else the host does weighs on both images alike.
  const runs: DriverStartRun[][] = images.map(() => []);
  for (let i = 0; i < SIZE_RUNS; i++) {
    for (const [j, image] of images.entries()) runs[j]!.push(await driverRun(vms, image, "restore"));
  }
  const results: SnapshotSize[] = images.map((image, j) => ({
    image: image.name,
    guestMiB: image.memoryMiB,
    snapshotBuild: image.snapshotBuild,
    ...image.sizes,
    restoreVmUpMs: mapSpread(spread(runs[j]!.map((r) => r.vmUp)), 0),
    restoreFirstByteMs: mapSpread(spread(runs[j]!.map((r) => r.firstByte)), 0),
  }));
  console.log(
    table(
      ["image", "guest MiB", "memory snapshot MiB", "memory.ram apparent MiB", "memory.ram allocated MiB", "state.bin KiB", "disk snapshot MiB", "disk.ext4 apparent MiB", "code KiB"],
      results.map((r) => [
        r.image,
        r.guestMiB,
        mib(r.snapshotBuild.memorySnapshotSizeInBytes),
        mib(r.memoryRam.apparent),
        mib(r.memoryRam.allocated),
        round(r.stateBin.apparent / 1024, 1),
        mib(r.snapshotBuild.diskSnapshotSizeInBytes),
        mib(r.diskExt4.apparent),
        round(r.snapshotBuild.codeInstallSizeInBytes / 1024, 1),
      ]),
    ),
  );
  console.log("memory snapshot = memorySnapshotSizeInBytes (memory.ram's allocated blocks: RAM the guest had touched, + state.bin); disk snapshot = diskSnapshotSizeInBytes; code = codeInstallSizeInBytes (GetMicrovmImageBuild)");
  console.log();
  console.log(
    table(
      ["restore, ms", "guest MiB", "VM up median", "first byte median", "min", "max"],
      results.map((r) => [r.image, r.guestMiB, r.restoreVmUpMs.median, ...spreadCells(r.restoreFirstByteMs)]),
    ),
  );
  return results;
}

// ── 6. build time per phase ─────────────────────────────────────────────────

function reportBuildPhases(images: BenchImage[]): void {
  heading("6. Build time per phase (each build's phases.json), ms");
  const phases = [...new Set(images.flatMap((image) => Object.keys(image.phasesMs ?? {})))];
  const sum = (image: BenchImage) => (image.phasesMs ? Object.values(image.phasesMs).reduce((a, b) => a + b, 0) : undefined);
  const cell = (v: number | undefined) => (v === undefined ? "-" : round(v));
  console.log(
    table(
      ["phase", ...images.map((image) => `${image.name} (${image.memoryMiB} MiB)`)],
      [
        ...phases.map((phase) => [phase, ...images.map((image) => cell(image.phasesMs?.[phase]))]),
        ["sum of phases", ...images.map((image) => cell(sum(image)))],
        ["CreateMicrovmImage → SUCCESSFUL", ...images.map((image) => cell(image.buildMs))],
        ["rest", ...images.map((image) => cell(image.buildMs - (sum(image) ?? Number.NaN)))],
      ],
    ),
  );
  console.log(`CreateMicrovmImage → SUCCESSFUL: until a GetMicrovmImageVersion poll (every 50 ms) saw it; rest: the API, the build queue, the store, that polling`);
  if (images.some((image) => !image.phasesMs)) console.log("(-: the build left no phases.json)");
}

// ── main ────────────────────────────────────────────────────────────────────

function roundNumbers(record: object): Obj {
  return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, typeof v === "number" ? round(v) : v]));
}

/** roundNumbers one level down as well, for runs that group their marks. */
function roundRun(record: object): Obj {
  return Object.fromEntries(Object.entries(roundNumbers(record)).map(([k, v]) => [k, v !== null && typeof v === "object" ? roundNumbers(v) : v]));
}

async function main(): Promise<number> {
  const started = performance.now();
  t = await startVmTestServer();
  microvms = new MicrovmApi(t);
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

    const images: BenchImage[] = [];
    for (const [name, memoryMiB] of [[IMAGE, GUEST_MEMORY_MIB], [LARGE_IMAGE, LARGE_GUEST_MEMORY_MIB]] as const) {
      const image = await buildImage(name, memoryMiB);
      images.push(image);
      console.log(`image "${name}" (${memoryMiB} MiB) built in ${round(image.buildMs / 1000, 1)} s (base images from the shared cache; phases in part 6)`);
    }
    result.builds = images.map((image) => ({
      image: image.name,
      guestMiB: image.memoryMiB,
      buildId: image.buildId,
      buildMs: round(image.buildMs),
      phasesMs: image.phasesMs,
      snapshotBuild: image.snapshotBuild,
    }));
    const vms = await benchDriver();
    await mkdir(join(t.dataDir, "bench-vms"), { recursive: true });

    const start = await benchStart();
    result.firstByte = {
      totalMs: mapSpread(start.totalMs, 0),
      toRunningMs: mapSpread(start.toRunningMs, 0),
      runningToFirstByteMs: mapSpread(start.runningToFirstByteMs, 0),
      runs: start.runs.map(roundNumbers),
    };
    const coldAgainstRestore = await benchColdAgainstRestore(vms, images[0]!, start.totalMs);
    result.restoreVsColdBoot = {
      coldBootMs: mapSpread(coldAgainstRestore.coldBootMs, 0),
      restoreMs: mapSpread(coldAgainstRestore.restoreMs, 0),
      ratio: coldAgainstRestore.ratio,
      runMicrovmMs: mapSpread(start.totalMs, 0),
      runs: coldAgainstRestore.runs.map(roundNumbers),
    };
    result.throughput = await benchThroughput();
    result.memory = await benchMemory();
    result.snapshotSizes = await benchSnapshotSizes(vms, images);
    reportBuildPhases(images);

    const suspendContext: SuspendBenchContext = { microvms, image: IMAGE, guestMiB: GUEST_MEMORY_MIB, path: STATIC_PATH, pollMs: POLL_MS, timeoutMs: RUN_TIMEOUT_MS };
    const suspendResume = await benchSuspendResume(suspendContext, options.runs);
    result.suspendResume = { ...suspendResume, runs: suspendResume.runs.map(roundRun) };
    const autoResume = await benchAutoResume(suspendContext, AUTO_RESUME_RUNS, suspendResume.resumeToFirstByteMs);
    result.autoResume = { ...autoResume, runs: autoResume.runs.map(roundRun) };
    result.suspendedDensity = await benchSuspendedDensity(suspendContext, options.density, SETTLE_SECONDS);
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
