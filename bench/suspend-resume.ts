import { Agent } from "node:http";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { qemuProcesses } from "../test/vm/support.js";
import { fileSize, type FileSize } from "./disk-usage.js";
import { firstOkThroughEndpoint, get, type HttpTarget } from "./http-load.js";
import type { MicrovmApi } from "./microvm-api.js";
import { heading, mapSpread, mib, round, spread, spreadTable, table, type Spread } from "./report.js";

/**
 * Suspend to disk and back, one MicroVM at a time, on the bench image:
 *
 *   explicit:    RunMicrovm ─► RUNNING ─► token ─► GET 200
 *                ─► SuspendMicrovm ─► SUSPENDED (GetMicrovm every pollMs) ─► suspended.state's size
 *                ─► ResumeMicrovm ─► GET every pollMs through the endpoint (503 while PENDING) ─► first byte of a 200
 *                   (the token made before the suspension)
 *   auto-resume: RunMicrovm with an idle policy (autoResumeEnabled) ─► RUNNING ─► token ─► GET 200
 *                ─► SuspendMicrovm ─► SUSPENDED ─► one GET, which waits for the resume ─► first byte of its 200
 *   each ─► TerminateMicrovm ─► TERMINATED, no QEMU left
 */

export interface SuspendBenchContext {
  microvms: MicrovmApi;
  image: string;
  guestMiB: number;
  path: string;
  /** How often GetMicrovm and the first-byte probe poll. */
  pollMs: number;
  timeoutMs: number;
}

/** The idle policy of part 9: the shortest idle period allowed, never reached (the bench suspends the MicroVM itself). */
export const AUTO_RESUME_POLICY = { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 3600, autoResumeEnabled: true };

/** A MicroVM of the bench image that has served a 200 through its endpoint, and the token it did so with. */
interface Serving {
  microvmId: string;
  target: HttpTarget;
}

async function runServing(c: SuspendBenchContext, extra: Record<string, unknown> = {}): Promise<Serving> {
  const microvmId = await c.microvms.run({ imageIdentifier: c.image, ...extra });
  try {
    await c.microvms.untilState(microvmId, "RUNNING");
    const target = c.microvms.endpointTarget(microvmId, await c.microvms.token(microvmId));
    await firstOkThroughEndpoint(target, c.path, { intervalMs: c.pollMs, timeoutMs: c.timeoutMs });
    return { microvmId, target };
  } catch (error) {
    await c.microvms.terminate(microvmId).catch(() => undefined);
    throw error;
  }
}

/** Milliseconds after SuspendMicrovm was sent. */
interface Suspension {
  /** SuspendMicrovm answered (SUSPENDING). */
  answered: number;
  /** A GetMicrovm poll first showed SUSPENDED: suspend hook done, memory and devices on disk, QEMU gone. */
  suspended: number;
  /** <dataDir>/microvms/<id>/suspended.state, bytes. */
  state: FileSize;
}

export async function suspend(c: SuspendBenchContext, microvmId: string): Promise<Suspension> {
  const sent = performance.now();
  await c.microvms.t.client.call("SuspendMicrovm", { microvmIdentifier: microvmId });
  const answered = performance.now() - sent;
  const { seenAt } = await c.microvms.untilState(microvmId, "SUSPENDED", c.pollMs);
  const left = qemuProcesses(microvmId);
  if (left.length > 0) throw new Error(`MicroVM ${microvmId} is SUSPENDED but QEMU ${left.join(", ")} still runs`);
  return { answered, suspended: seenAt - sent, state: await fileSize(join(c.microvms.dirOf(microvmId), "suspended.state")) };
}

// ── 7. and 8. SuspendMicrovm, then ResumeMicrovm → first byte ─────────────────

export interface SuspendResumeRun {
  microvmId: string;
  suspend: Suspension;
  /** Milliseconds after ResumeMicrovm was sent. */
  resume: {
    /** ResumeMicrovm answered (PENDING). */
    answered: number;
    /** A GetMicrovm poll, beside the probe, first showed RUNNING. */
    runningSeen: number;
    /** The first byte of a 200 through the endpoint. */
    firstByte: number;
    /** GETs sent until then: 503s while the MicroVM resumed, and the 200. */
    attempts: number;
  };
}

async function suspendThenResume(c: SuspendBenchContext): Promise<SuspendResumeRun> {
  const { microvmId, target } = await runServing(c);
  try {
    const suspension = await suspend(c, microvmId);
    const sent = performance.now();
    await c.microvms.t.client.call("ResumeMicrovm", { microvmIdentifier: microvmId });
    const answered = performance.now() - sent;
    const running = c.microvms.untilState(microvmId, "RUNNING", c.pollMs);
    running.catch(() => undefined); // awaited below; the probe may fail first
    const ok = await firstOkThroughEndpoint(target, c.path, { intervalMs: c.pollMs, timeoutMs: c.timeoutMs });
    const runningSeen = (await running).seenAt - sent;
    return { microvmId, suspend: suspension, resume: { answered, runningSeen, firstByte: ok.firstByteAt - sent, attempts: ok.attempts } };
  } finally {
    await c.microvms.terminate(microvmId);
  }
}

export interface SuspendResumeSummary {
  guestMiB: number;
  runs: SuspendResumeRun[];
  suspendMs: Spread;
  /** suspended.state, MiB. */
  stateApparentMiB: Spread;
  stateAllocatedMiB: Spread;
  resumeToRunningMs: Spread;
  resumeToFirstByteMs: Spread;
}

export async function benchSuspendResume(c: SuspendBenchContext, runs: number): Promise<SuspendResumeSummary> {
  heading(`7. SuspendMicrovm → SUSPENDED, and suspended.state against guest memory (${runs} MicroVMs of "${c.image}", ${c.guestMiB} MiB, one at a time)`);
  const results: SuspendResumeRun[] = [];
  for (let i = 0; i < runs; i++) results.push(await suspendThenResume(c));
  const percent = (bytes: number) => `${round((bytes / (c.guestMiB * 1024 * 1024)) * 100)} %`;
  console.log(
    table(
      ["run", "MicroVM", "answered ms", "SUSPENDED ms", "state apparent MiB", "state allocated MiB", "allocated / guest memory"],
      results.map((r, i) => [
        String(i + 1),
        r.microvmId,
        round(r.suspend.answered),
        round(r.suspend.suspended),
        mib(r.suspend.state.apparent),
        mib(r.suspend.state.allocated),
        percent(r.suspend.state.allocated),
      ]),
    ),
  );
  const suspendMs = spread(results.map((r) => r.suspend.suspended));
  console.log();
  console.log(spreadTable("ms", [["SuspendMicrovm → SUSPENDED", suspendMs]]));
  console.log(`ms after SuspendMicrovm was sent; SUSPENDED as a GetMicrovm poll every ${c.pollMs} ms saw it (suspend hook, memory and devices written, QEMU stopped; checked gone)`);
  console.log("suspended.state is QEMU's migration stream with all guest RAM (zero pages as markers), written whole and renamed; the disk overlay stays beside it");

  heading(`8. ResumeMicrovm → first byte of a 200 through the endpoint (the same ${runs} MicroVMs, token made before the suspension)`);
  console.log(
    table(
      ["run", "answered ms", "RUNNING (poll saw) ms", "first byte ms", "GETs"],
      results.map((r, i) => [String(i + 1), round(r.resume.answered), round(r.resume.runningSeen), round(r.resume.firstByte), r.resume.attempts]),
    ),
  );
  const resumeToRunningMs = spread(results.map((r) => r.resume.runningSeen));
  const resumeToFirstByteMs = spread(results.map((r) => r.resume.firstByte));
  console.log();
  console.log(
    spreadTable("ms", [
      ["ResumeMicrovm → first byte", resumeToFirstByteMs],
      ["ResumeMicrovm → RUNNING (poll saw)", resumeToRunningMs],
    ]),
  );
  console.log(`ms after ResumeMicrovm was sent; GETs: requests until the 200, a new one ${c.pollMs} ms after each 503 (the MicroVM still PENDING)`);
  return {
    guestMiB: c.guestMiB,
    runs: results,
    suspendMs: mapSpread(suspendMs, 0),
    stateApparentMiB: mapSpread(spread(results.map((r) => r.suspend.state.apparent / (1024 * 1024))), 1),
    stateAllocatedMiB: mapSpread(spread(results.map((r) => r.suspend.state.allocated / (1024 * 1024))), 1),
    resumeToRunningMs: mapSpread(resumeToRunningMs, 0),
    resumeToFirstByteMs: mapSpread(resumeToFirstByteMs, 0),
  };
}

// ── 9. auto-resume: a plain GET to a SUSPENDED MicroVM ─────────────────────────

export interface AutoResumeRun {
  microvmId: string;
  /** SuspendMicrovm sent → SUSPENDED seen, ms. */
  suspendedMs: number;
  /** Milliseconds after the GET was sent. */
  get: {
    /** A GetMicrovm poll, beside the request, first showed RUNNING. */
    runningSeen: number;
    /** The first byte of its answer, a 200. */
    firstByte: number;
  };
}

async function autoResume(c: SuspendBenchContext): Promise<AutoResumeRun> {
  const { microvmId, target } = await runServing(c, { idlePolicy: AUTO_RESUME_POLICY });
  const agent = new Agent({ keepAlive: false });
  try {
    const { suspended } = await suspend(c, microvmId);
    const sent = performance.now();
    const running = c.microvms.untilState(microvmId, "RUNNING", c.pollMs);
    running.catch(() => undefined); // awaited below; the request may fail first
    const answer = await get(agent, target, c.path);
    if (answer.status !== 200) throw new Error(`a GET to suspended MicroVM ${microvmId} (auto-resume) answered ${answer.status}`);
    return { microvmId, suspendedMs: suspended, get: { runningSeen: (await running).seenAt - sent, firstByte: answer.firstByteAt - sent } };
  } finally {
    agent.destroy();
    await c.microvms.terminate(microvmId);
  }
}

export interface AutoResumeSummary {
  idlePolicy: typeof AUTO_RESUME_POLICY;
  runs: AutoResumeRun[];
  firstByteMs: Spread;
  runningSeenMs: Spread;
}

export async function benchAutoResume(c: SuspendBenchContext, runs: number, explicit: Spread): Promise<AutoResumeSummary> {
  heading(`9. Auto-resume: one GET through the endpoint to a SUSPENDED MicroVM → first byte of its 200 (${runs} MicroVMs, one at a time)`);
  console.log(`idlePolicy ${JSON.stringify(AUTO_RESUME_POLICY)}; each suspended with SuspendMicrovm (not left idle for 60 s), then one GET`);
  const results: AutoResumeRun[] = [];
  for (let i = 0; i < runs; i++) results.push(await autoResume(c));
  console.log(
    table(
      ["run", "MicroVM", "SUSPENDED after ms", "RUNNING (poll saw) ms", "first byte ms"],
      results.map((r, i) => [String(i + 1), r.microvmId, round(r.suspendedMs), round(r.get.runningSeen), round(r.get.firstByte)]),
    ),
  );
  const firstByteMs = spread(results.map((r) => r.get.firstByte));
  const runningSeenMs = spread(results.map((r) => r.get.runningSeen));
  console.log();
  console.log(
    spreadTable("ms after the GET was sent", [
      ["GET → first byte of its 200 (auto-resume)", firstByteMs],
      ["GET → RUNNING (poll saw)", runningSeenMs],
      ["ResumeMicrovm → first byte (part 8)", explicit],
    ]),
  );
  console.log("the proxy holds the request while the MicroVM resumes (it looks at the MicroVM's state every 50 ms), then forwards it: one request, no 503 seen by the client");
  return { idlePolicy: AUTO_RESUME_POLICY, runs: results, firstByteMs: mapSpread(firstByteMs, 0), runningSeenMs: mapSpread(runningSeenMs, 0) };
}
