import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, open, readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";
import { AgentChannel, type AgentFrame } from "../../agent/channel.js";
import { connectWhenListening } from "../../agent/lines.js";
import { Failure } from "../../domain/failure.js";
import { runCommand } from "../../process/run-command.js";
import { checkLegal, VmError, type AgentEvent, type Vm, type VmDriver, type VmExit, type VmSpec, type VmState } from "../driver.js";
import { forwardedHostPort, qemuArguments, qemuLayout, type Acceleration, type QemuLayout, type QemuMachine } from "./command-line.js";
import { Qmp } from "./qmp.js";

/**
 * The QEMU driver.
 *
 *   start: mkdir runDir ─► (overlay: qemu-img create over its backing disk) ─► spawn QEMU (own process group, output to qemu.log)
 *          ─► connect QMP ─► connect the agent's channel ─► Vm
 *          (any failure: kill the process group, wait for it, throw with QEMU's last words)
 *   agent: hello ─► send clock and entropy │ ready ─► whenReady() │ exit <code> ─► kept for the reason
 *   snapshot: x-ignore-shared ─► stop ─► migrate to exec:cat > state ─► completed (paused, disk flushed)
 *   restore:  spawn with -incoming defer and the memory file mapped privately ─► x-ignore-shared
 *             ─► migrate-incoming exec:cat state ─► completed ─► cont ─► clock and entropy to the agent
 *   stop:  agent poweroff ─► (grace) QMP quit ─► (1 s) SIGKILL the group ─► exited
 */
const CONNECT_TIMEOUT_MS = 15_000;
const AGENT_TIMEOUT_MS = 10_000;
const MIGRATION_TIMEOUT_MS = 120_000;

export const QEMU_BINARY = "qemu-system-x86_64";

export class QemuDriver implements VmDriver {
  constructor(
    readonly accel: Acceleration,
    private readonly version: string,
    private readonly log: Logger,
  ) {}

  get description(): string {
    return `QEMU ${this.version} (${this.accel === "kvm" ? "KVM" : "TCG software emulation"})`;
  }

  async start(spec: VmSpec): Promise<Vm> {
    await prepare(spec);
    const layout = qemuLayout(spec.runDir);
    const machine: QemuMachine = { ...spec, accel: this.accel, layout };
    return launch(machine, spec.name, this.log.child({ vm: spec.name }));
  }

  adopt(name: string, runDir: string): Promise<Vm | undefined> {
    return adopt(name, runDir, this.log.child({ vm: name }));
  }

  killLeftover(runDir: string): Promise<boolean> {
    return killLeftover(runDir);
  }

  async restore(spec: VmSpec & { memory: { path: string; share: false } }, statePath: string, options: { memoryInState?: boolean } = {}): Promise<Vm> {
    await prepare(spec);
    const layout = qemuLayout(spec.runDir);
    const vm = await launch({ ...spec, accel: this.accel, layout, incoming: true }, spec.name, this.log.child({ vm: spec.name }));
    try {
      await vm.restoreFrom(statePath, options.memoryInState === true);
      return vm;
    } catch (error) {
      const failure = new VmError(`${spec.name} could not be restored from ${statePath}`, { cause: error });
      // Cleanup never hides the first error: a failed stop joins it.
      await vm.stop(0).catch((stopError: unknown) => {
        throw new AggregateError([failure, stopError], `${failure.message}, and stopping it failed too`);
      });
      throw failure;
    }
  }
}

/** The run directory, and a fresh overlay when the disk is one over a backing image. */
async function prepare(spec: VmSpec): Promise<void> {
  await mkdir(spec.runDir, { recursive: true });
  const disk = spec.disk;
  if (disk.format === "qcow2" && disk.backing) {
    // A private copy-on-write layer: the backing disk is shared (a snapshot's, by every MicroVM of a version) and never written.
    await runCommand("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", disk.backing, disk.path], {
      what: `the disk overlay of ${spec.name}`,
      debianPackage: "qemu-utils",
    });
  }
}

/** Starts QEMU for `machine` and connects to it; shared by the driver and the acceleration probe. */
export async function launch(machine: QemuMachine, name: string, log: Logger): Promise<QemuVm> {
  const output = await open(machine.layout.qemuLog, "a");
  let child: ChildProcess;
  try {
    // detached: its own process group, so one signal reaches QEMU and anything it forks, and
    // the VM outlives this process (a restarted server adopts it).
    child = spawn(QEMU_BINARY, qemuArguments(machine), { detached: true, stdio: ["ignore", output.fd, output.fd] });
  } finally {
    await output.close();
  }
  const exit = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
    child.once("error", (error) => {
      log.error({ err: error }, "could not start QEMU");
      resolve({ code: null, signal: null });
    });
  });
  let gone = false;
  void exit.then(() => (gone = true));

  let qmp: Qmp | undefined;
  try {
    qmp = await Qmp.open(await connectWhenListening(machine.layout.qmpSocket, CONNECT_TIMEOUT_MS, () => gone));
    const agent = new AgentChannel(await connectWhenListening(machine.layout.agentSocket, CONNECT_TIMEOUT_MS, () => gone));
    if (child.pid === undefined) throw new Error("QEMU has no pid");
    log.debug({ pid: child.pid, accel: machine.accel, memoryMiB: machine.memoryMiB }, "QEMU started");
    // Once started, the VM does not keep this process alive (the server's sockets do, while it serves).
    // Not before: while we wait on a QEMU that fails to start, its exit is all there is to wait for.
    child.unref();
    // A restored guest is past its boot: its application already listens.
    return new QemuVm(name, child.pid, qmp, agent, exit, machine.layout, log, machine.incoming === true);
  } catch (error) {
    qmp?.close();
    if (child.pid !== undefined && !gone) killGroup(child.pid);
    await exit;
    const detail = await lastLines(machine.layout.qemuLog, 5);
    throw new VmError(`QEMU did not start for ${name}${detail ? `: ${detail}` : ""}`, { cause: error });
  }
}

/**
 * Takes over a VM that a previous run of the server started: the pid file
 * names it, its command line must name this run directory (a reused pid is
 * not ours), and its QMP and agent sockets accept a new client. Its exit is
 * seen as the QMP connection closing, then the process going.
 */
export async function adopt(name: string, runDir: string, log: Logger): Promise<QemuVm | undefined> {
  const layout = qemuLayout(runDir);
  const pid = await leftoverPid(runDir);
  if (pid === undefined) return undefined;
  let qmp: Qmp | undefined;
  try {
    qmp = await Qmp.open(await connectWhenListening(layout.qmpSocket, CONNECT_TIMEOUT_MS, () => false));
    const agent = new AgentChannel(await connectWhenListening(layout.agentSocket, CONNECT_TIMEOUT_MS, () => false));
    const closed = new Promise<void>((resolve) => qmp!.once("close", resolve));
    const exit = closed.then(async () => {
      // Not our child, so no exit event: watched by polling, which never holds the process open.
      while (await isQemuOf(pid, runDir)) await sleep(20, undefined, { ref: false });
      return { code: null, signal: null };
    });
    log.info({ pid }, "adopted a running VM");
    return new QemuVm(name, pid, qmp, agent, exit, layout, log, true);
  } catch (error) {
    qmp?.close();
    log.warn({ err: error, pid }, "could not adopt a VM");
    return undefined;
  }
}

/** Kills the QEMU a previous run of the server left in `runDir`, if one lives, and waits for it to go; whether there was one. */
export async function killLeftover(runDir: string): Promise<boolean> {
  const pid = await leftoverPid(runDir);
  if (pid === undefined) return false;
  killGroup(pid);
  while (await isQemuOf(pid, runDir)) await sleep(20);
  return true;
}

/** The pid of a live QEMU started for `runDir`, from its pid file; undefined when there is none (a reused pid is not ours). */
async function leftoverPid(runDir: string): Promise<number | undefined> {
  const pid = Number((await readFile(qemuLayout(runDir).pidFile, "utf8").catch(() => "")).trim());
  return Number.isInteger(pid) && pid > 0 && (await isQemuOf(pid, runDir)) ? pid : undefined;
}

/** Whether `pid` is a live (not zombie) QEMU started for `runDir`. */
async function isQemuOf(pid: number, runDir: string): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  if (!cmdline.includes("qemu-system") || !cmdline.includes(runDir)) return false;
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  return stat !== "" && !/\) Z /.test(stat);
}

/** QEMU runs exec: migration URIs through /bin/sh. */
function shellQuote(path: string): string {
  return `'${path.replaceAll("'", `'\\''`)}'`;
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // already gone
  }
}

async function lastLines(path: string, count: number): Promise<string> {
  try {
    return (await readFile(path, "utf8")).trim().split("\n").slice(-count).join(" | ");
  } catch {
    return "";
  }
}

export class QemuVm implements Vm {
  readonly exited: Promise<VmExit>;
  private current: VmState = "running";
  private readonly listeners: ((event: AgentEvent) => void)[] = [];
  private readonly forwards = new Map<number, Promise<number>>();
  private ready = false;
  private readonly readyWaiters: (() => void)[] = [];
  private applicationExitCode: number | undefined;
  private stopping = false;
  private hasExited = false;

  constructor(
    readonly name: string,
    readonly pid: number,
    private readonly qmp: Qmp,
    readonly agent: AgentChannel,
    processExit: Promise<{ code: number | null; signal: string | null }>,
    readonly layout: QemuLayout,
    private readonly log: Logger,
    restoring: boolean,
  ) {
    this.ready = restoring;
    agent.on("frame", (frame) => this.receive(frame));
    this.exited = processExit.then(async ({ code, signal }) => {
      this.hasExited = true;
      this.current = "stopped";
      qmp.close();
      agent.close();
      return { code, signal, applicationExitCode: this.applicationExitCode, reason: await this.exitReason(code, signal) };
    });
  }

  get state(): VmState {
    return this.current;
  }

  private async exitReason(code: number | null, signal: string | null): Promise<string> {
    if (this.stopping) return "The VM was stopped.";
    if (this.applicationExitCode !== undefined) {
      const status = this.applicationExitCode;
      return status > 128 ? `The application was killed by signal ${status - 128}.` : `The application exited with code ${status}.`;
    }
    const how = signal ? `signal ${signal}` : `code ${code}`;
    // QEMU's last words name host paths: they go to the log, the reason (a client's stateReason) says what happened.
    this.log.warn({ code, signal, qemu: await lastLines(this.layout.qemuLog, 5) }, "the VM stopped unexpectedly");
    return `The VM stopped unexpectedly (QEMU exited with ${how}).`;
  }

  private receive(frame: AgentFrame): void {
    switch (frame.kind) {
      case "hello":
        // A fresh boot: the guest has no clock source synced to ours and, under TCG, little entropy.
        this.agent.resync(AGENT_TIMEOUT_MS).catch((error: unknown) => this.log.warn({ err: error }, "could not resync the guest"));
        return;
      case "ready":
        this.ready = true;
        for (const resolve of this.readyWaiters.splice(0)) resolve();
        return this.emit({ kind: "ready" });
      case "exit":
        this.applicationExitCode = Number(frame.payload);
        return this.emit({ kind: "exit", code: this.applicationExitCode });
      case "stdout":
      case "stderr":
        return this.emit({ kind: frame.kind, line: frame.payload });
      case "log":
      case "error":
        this.log.debug({ agent: frame.kind, text: frame.payload }, "agent");
        return this.emit({ kind: frame.kind, text: frame.payload });
      case "dropped":
        this.log.warn({ frames: frame.payload }, "the guest dropped output while the host was not reading");
        return;
    }
  }

  private emit(event: AgentEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  onAgentEvent(listener: (event: AgentEvent) => void): void {
    this.listeners.push(listener);
  }

  whenReady(timeoutMs: number): Promise<void> {
    checkLegal(this.name, "whenReady", this.current);
    if (this.ready) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      // Both ways of failing are told in the user's terms (Failure): an exit reason is written for a stateReason.
      const timer = setTimeout(() => reject(new Failure(`the application did not become ready within ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
      this.readyWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
      void this.exited.then((exit) => {
        clearTimeout(timer);
        reject(new Failure(exit.reason.replace(/\.$/, "")));
      });
    });
  }

  forward(guestPort: number): Promise<number> {
    checkLegal(this.name, "forward", this.current);
    let port = this.forwards.get(guestPort);
    if (!port) {
      port = this.addForward(guestPort);
      this.forwards.set(guestPort, port);
      port.catch(() => this.forwards.delete(guestPort));
    }
    return port;
  }

  private async addForward(guestPort: number): Promise<number> {
    // A forward this VM already has (an adopted VM keeps those of the previous server) is reused.
    const existing = forwardedHostPort(await this.qmp.hmp("info usernet"), guestPort);
    if (existing !== undefined) return existing;
    // Port 0: QEMU binds a free loopback port, which `info usernet` then shows.
    const answer = await this.qmp.hmp(`hostfwd_add net0 tcp:127.0.0.1:0-:${guestPort}`);
    if (answer.trim()) throw new VmError(`QEMU refused a forward to guest port ${guestPort}: ${answer.trim()}`);
    const port = forwardedHostPort(await this.qmp.hmp("info usernet"), guestPort);
    if (port === undefined) throw new VmError(`QEMU did not report the forward to guest port ${guestPort}`);
    return port;
  }

  async snapshot(statePath: string, options: { withMemory?: boolean } = {}): Promise<void> {
    checkLegal(this.name, "snapshot", this.current);
    await this.ignoreSharedMemory(options.withMemory !== true);
    // QEMU limits migration to 128 MiB/s by default, for live migration over a network; a file takes it as fast as it can.
    await this.qmp.execute("migrate-set-parameters", { "max-bandwidth": 16 * 1024 ** 3 });
    // From here the guest is paused mid-save: whatever happens, it must not run on as if nothing did.
    this.current = "saved";
    await this.qmp.execute("stop");
    await this.qmp.execute("migrate", { uri: `exec:cat > ${shellQuote(statePath)}` });
    await this.migrationCompleted();
  }

  /** Loads a snapshot into this VM (started with -incoming defer) and runs it. */
  async restoreFrom(statePath: string, memoryInState: boolean): Promise<void> {
    await this.ignoreSharedMemory(!memoryInState);
    await this.qmp.execute("migrate-incoming", { uri: `exec:cat ${shellQuote(statePath)}` });
    await this.migrationCompleted();
    await this.qmp.execute("cont");
    await this.agent.resync(AGENT_TIMEOUT_MS);
  }

  /**
   * x-ignore-shared: the migration stream leaves out RAM in shared memory files
   * (a build's snapshot, whose RAM is the file). Off, it carries all RAM, zero
   * pages compressed to a marker (a suspension).
   */
  private async ignoreSharedMemory(ignore: boolean): Promise<void> {
    await this.qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: ignore }] });
  }

  private async migrationCompleted(): Promise<void> {
    const deadline = Date.now() + MIGRATION_TIMEOUT_MS;
    for (;;) {
      const state = await this.qmp.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
      if (state.status === "completed") return;
      if (state.status === "failed" || state.status === "cancelled") {
        throw new VmError(`the snapshot ${state.status === "failed" ? "failed" : "was cancelled"}${state["error-desc"] ? `: ${state["error-desc"]}` : ""}`);
      }
      if (Date.now() > deadline) throw new VmError(`the snapshot did not complete within ${MIGRATION_TIMEOUT_MS / 1000} s`);
      await sleep(5);
    }
  }

  detach(): void {
    checkLegal(this.name, "detach", this.current);
    this.current = "detached";
    this.qmp.close();
    this.agent.close();
  }

  async stop(graceMs = 5_000): Promise<VmExit> {
    checkLegal(this.name, "stop", this.current);
    if (!this.hasExited) {
      this.stopping = true;
      // A saved guest is paused and its state belongs to the snapshot: it quits without running on.
      if (this.current === "saved") graceMs = 0;
      else this.agent.powerOff();
      if (!(await settlesWithin(this.exited, graceMs))) {
        await this.qmp.execute("quit").catch(() => {});
        if (!(await settlesWithin(this.exited, 1_000))) killGroup(this.pid);
      }
    }
    return this.exited;
  }
}

async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  const timeout = new AbortController();
  const result = await Promise.race([promise.then(() => true), sleep(ms, false, { signal: timeout.signal }).catch(() => false)]);
  timeout.abort();
  return result;
}
