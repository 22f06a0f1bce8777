import { mkdir, stat, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { dirname } from "node:path";
import { checkLegal, VmError, type AgentEvent, type Vm, type VmDriver, type VmExit, type VmSpec, type VmState } from "../../src/drivers/driver.js";

/**
 * A VmDriver without VMs, for the engine's unit tests. It keeps to the Vm state
 * machine of src/drivers/driver.ts (an action out of order is a
 * VmActionNotLegal), records every call, writes the files a real driver would
 * (a snapshot's state file; a run's disk overlay), and lets a test make a
 * restore or a snapshot fail or wait until released, crash a VM, and say which
 * VMs a previous run of the server left (survived, or alive but not adoptable).
 * Hooks reach a small HTTP server of the test's (`hooks`).
 */

export type DriverCall =
  | { op: "start"; name: string; spec: VmSpec }
  | { op: "restore"; name: string; spec: VmSpec; statePath: string; memoryInState: boolean }
  | { op: "snapshot"; name: string; statePath: string; withMemory: boolean }
  | { op: "stop"; name: string; state: VmState }
  | { op: "detach"; name: string }
  | { op: "adopt"; name: string; runDir: string; adopted: boolean }
  | { op: "killLeftover"; runDir: string; killed: boolean };

/** A hook the guest received. */
export interface HookCall {
  vm: string;
  path: string;
  body: string;
}

/** What a VM left by a previous run of the server is: adoptable, or a QEMU that lives but cannot be taken over. */
export type Leftover = "alive" | "unadoptable";

/** Holds an operation until the test opens (or fails) it. */
export class Gate {
  private open_!: () => void;
  private fail_!: (error: Error) => void;
  private reach!: () => void;
  /** Settles once the operation waits at the gate. */
  readonly reached = new Promise<void>((resolve) => (this.reach = resolve));
  private readonly released = new Promise<void>((resolve, reject) => {
    this.open_ = resolve;
    this.fail_ = reject;
  });

  constructor() {
    this.released.catch(() => undefined);
  }

  open(): void {
    this.open_();
  }

  fail(error: Error): void {
    this.fail_(error);
  }

  /** @internal the driver's side */
  async pass(): Promise<void> {
    this.reach();
    await this.released;
  }
}

type Op = "restore" | "snapshot";

/** Hooks answered by the test: each POST is recorded, and answered with `status[hook]` (204 unless set). */
export class HookServer {
  readonly calls: HookCall[] = [];
  readonly status: Partial<Record<string, number>> = {};
  /** Runs before a hook is answered (e.g. to look at the store while the hook is under way). */
  onCall: ((call: HookCall) => void | Promise<void>) | undefined;
  private readonly servers = new Map<string, Promise<Server>>();

  /** The loopback port where `vm`'s hooks are answered (one listener per VM, so calls name their VM). */
  async portFor(vm: string): Promise<number> {
    let server = this.servers.get(vm);
    if (!server) {
      server = listen((req, res) => this.answer(vm, req, res));
      this.servers.set(vm, server);
    }
    return ((await server).address() as AddressInfo).port;
  }

  /** The hook paths `vm` received (every VM's when undefined), in order. */
  paths(vm?: string): string[] {
    return this.calls.filter((c) => vm === undefined || c.vm === vm).map((c) => c.path);
  }

  async close(): Promise<void> {
    for (const pending of this.servers.values()) {
      const server = await pending;
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    this.servers.clear();
  }

  private answer(vm: string, req: IncomingMessage, res: ServerResponse): void {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (chunk: string) => (body += chunk));
    req.on("end", () => {
      const call = { vm, path: req.url ?? "", body };
      this.calls.push(call);
      void Promise.resolve(this.onCall?.(call)).finally(() => {
        const status = this.status[call.path.replace(/^\//, "")] ?? 204;
        res.writeHead(status, { "content-type": "text/plain" }).end(status >= 300 ? "the application said no" : "");
      });
    });
  }
}

function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Server> {
  const server = createServer(handler);
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

/** A loopback port nothing listens on: hooks sent there fail to connect. */
async function closedPort(): Promise<number> {
  const server = await listen(() => undefined);
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

let nextPid = 40_000;

export class FakeVm implements Vm {
  state: VmState = "running";
  readonly pid = nextPid++;
  readonly exited: Promise<VmExit>;
  /** The guest ports forwarded, in order of first use. */
  readonly forwarded: number[] = [];
  private end!: (exit: VmExit) => void;
  private exit: VmExit | undefined;
  private readonly listeners: ((event: AgentEvent) => void)[] = [];

  constructor(
    readonly name: string,
    readonly runDir: string,
    readonly origin: "start" | "restore" | "adopt",
    private readonly driver: FakeDriver,
  ) {
    this.exited = new Promise((resolve) => (this.end = resolve));
  }

  async whenReady(_timeoutMs: number): Promise<void> {
    checkLegal(this.name, "whenReady", this.state);
  }

  onAgentEvent(listener: (event: AgentEvent) => void): void {
    this.listeners.push(listener);
  }

  /** The agent reports `event` (e.g. a line of the application's output). */
  agentEvent(event: AgentEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  async forward(guestPort: number): Promise<number> {
    checkLegal(this.name, "forward", this.state);
    if (!this.forwarded.includes(guestPort)) this.forwarded.push(guestPort);
    return this.driver.hooksReachable ? this.driver.hooks.portFor(this.name) : this.driver.closedPort;
  }

  async snapshot(statePath: string, options: { withMemory?: boolean } = {}): Promise<void> {
    checkLegal(this.name, "snapshot", this.state);
    this.driver.calls.push({ op: "snapshot", name: this.name, statePath, withMemory: options.withMemory ?? false });
    await this.driver.pass("snapshot", this.name);
    checkLegal(this.name, "snapshot", this.state); // it may have ended meanwhile
    await writeFile(statePath, `device state and memory of ${this.name}\n`);
    this.state = "saved";
  }

  detach(): void {
    checkLegal(this.name, "detach", this.state);
    this.driver.calls.push({ op: "detach", name: this.name });
    this.state = "detached";
  }

  async stop(_graceMs?: number): Promise<VmExit> {
    checkLegal(this.name, "stop", this.state);
    this.driver.calls.push({ op: "stop", name: this.name, state: this.state });
    if (this.exit) return this.exit;
    return this.ended({ code: 0, signal: null, reason: "The VM was stopped." });
  }

  /** The VM ends on its own (the application exited, QEMU died). */
  crash(reason: string, code = 1): void {
    if (this.state === "stopped" || this.state === "detached") throw new Error(`VM ${this.name} is ${this.state}: it cannot crash`);
    this.ended({ code, signal: null, reason });
  }

  private ended(exit: VmExit): VmExit {
    this.state = "stopped";
    this.exit = exit;
    this.end(exit);
    return exit;
  }
}

export class FakeDriver implements VmDriver {
  readonly description = "fake VMs (unit tests)";
  readonly calls: DriverCall[] = [];
  readonly vms: FakeVm[] = [];
  /** False: hooks are sent to a port nothing listens on. */
  hooksReachable = true;
  private readonly holds: { op: Op; name?: string; gate: Gate }[] = [];
  private readonly failures: { op: Op; name?: string; error: Error }[] = [];
  private readonly leftovers = new Map<string, Leftover>();
  private readonly gates: Gate[] = [];

  private constructor(
    readonly hooks: HookServer,
    readonly closedPort: number,
  ) {}

  static async create(): Promise<FakeDriver> {
    return new FakeDriver(new HookServer(), await closedPort());
  }

  /** Opens every gate still held, so that nothing waits forever once a test is over. */
  openAll(): void {
    for (const gate of this.gates) gate.open();
  }

  async close(): Promise<void> {
    this.openAll();
    await this.hooks.close();
  }

  // ── what a test controls ──────────────────────────────────────────

  /** The next `op` (of VM `name`, or of any) waits until the gate is opened or failed. */
  hold(op: Op, name?: string): Gate {
    const gate = new Gate();
    this.gates.push(gate);
    this.holds.push({ op, name, gate });
    return gate;
  }

  /** The next `op` (of VM `name`, or of any) fails with `error`. */
  fail(op: Op, error: Error, name?: string): void {
    this.failures.push({ op, name, error });
  }

  /** Says what a previous run of the server left running in `runDir`. */
  leftBehind(runDir: string, what: Leftover): void {
    this.leftovers.set(runDir, what);
  }

  /** Run directories where a VM of a previous run still lives (neither adopted nor killed). */
  remainingLeftovers(): string[] {
    return [...this.leftovers.keys()];
  }

  /** The newest VM of `name`. */
  vm(name: string): FakeVm {
    const vm = this.vms.filter((v) => v.name === name).at(-1);
    if (!vm) throw new Error(`no VM named ${name}`);
    return vm;
  }

  /** VMs this driver has that still run (or are saved, paused): none should outlive their MicroVM. */
  running(): FakeVm[] {
    return this.vms.filter((v) => v.state === "running" || v.state === "saved");
  }

  /** The calls concerning `name` (a VM name or a run directory containing it), as "op" strings. */
  ops(name?: string): string[] {
    return this.calls
      .filter((c) => name === undefined || ("name" in c ? c.name === name : c.runDir.includes(name)))
      .map((c) => c.op);
  }

  callsOf<K extends DriverCall["op"]>(op: K, name?: string): Extract<DriverCall, { op: K }>[] {
    return this.calls.filter(
      (c): c is Extract<DriverCall, { op: K }> => c.op === op && (name === undefined || ("name" in c ? c.name === name : c.runDir.includes(name))),
    );
  }

  // ── VmDriver ──────────────────────────────────────────────────────

  async start(spec: VmSpec): Promise<Vm> {
    this.calls.push({ op: "start", name: spec.name, spec });
    await this.prepare(spec);
    return this.created(new FakeVm(spec.name, spec.runDir, "start", this));
  }

  async restore(spec: VmSpec & { memory: { path: string; share: false } }, statePath: string, options: { memoryInState?: boolean } = {}): Promise<Vm> {
    this.calls.push({ op: "restore", name: spec.name, spec, statePath, memoryInState: options.memoryInState ?? false });
    await this.pass("restore", spec.name);
    if (!(await exists(statePath))) throw new VmError(`cannot restore ${spec.name}: no state file at ${statePath}`);
    if (!(await exists(spec.memory.path))) throw new VmError(`cannot restore ${spec.name}: no memory file at ${spec.memory.path}`);
    await this.prepare(spec);
    return this.created(new FakeVm(spec.name, spec.runDir, "restore", this));
  }

  async adopt(name: string, runDir: string): Promise<Vm | undefined> {
    const adopted = this.leftovers.get(runDir) === "alive";
    this.calls.push({ op: "adopt", name, runDir, adopted });
    if (!adopted) return undefined;
    this.leftovers.delete(runDir);
    return this.created(new FakeVm(name, runDir, "adopt", this));
  }

  async killLeftover(runDir: string): Promise<boolean> {
    const killed = this.leftovers.delete(runDir);
    this.calls.push({ op: "killLeftover", runDir, killed });
    return killed;
  }

  /** @internal waits at a gate, or fails, as the test asked for the next `op` of `name`. */
  async pass(op: Op, name: string): Promise<void> {
    const matches = (e: { op: Op; name?: string }) => e.op === op && (e.name === undefined || e.name === name);
    const hold = this.holds.findIndex(matches);
    if (hold >= 0) await this.holds.splice(hold, 1)[0]!.gate.pass();
    const failure = this.failures.findIndex(matches);
    if (failure >= 0) throw this.failures.splice(failure, 1)[0]!.error;
  }

  /** What QEMU needs before it runs: a free run directory, the kernel, and the disk (a fresh overlay over `backing`, or the one made before). */
  private async prepare(spec: VmSpec): Promise<void> {
    if (this.leftovers.has(spec.runDir)) throw new VmError(`a VM of a previous run still runs in ${spec.runDir}`);
    for (const file of [spec.kernel, spec.initrd]) if (!(await exists(file))) throw new VmError(`no such file: ${file}`);
    const disk = spec.disk;
    if (disk.format === "qcow2" && disk.backing !== undefined) {
      if (!(await exists(disk.backing))) throw new VmError(`no backing disk at ${disk.backing}`);
      await mkdir(dirname(disk.path), { recursive: true });
      await writeFile(disk.path, `qcow2 overlay over ${disk.backing}\n`);
    } else if (!(await exists(disk.path))) throw new VmError(`no disk at ${disk.path}`);
    await mkdir(spec.runDir, { recursive: true });
  }

  private created(vm: FakeVm): FakeVm {
    this.vms.push(vm);
    return vm;
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
