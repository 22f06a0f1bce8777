import { createWriteStream, type WriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import type { Hooks } from "../api/generated/types.js";
import { guestMemoryMiB, type ImageBuilder } from "../builder/image-builder.js";
import { callHook, HookFailure } from "../guest/hooks.js";
import type { Vm, VmDriver } from "../drivers/driver.js";
import type { GuestAssets } from "../guest/assets.js";
import { runCommand } from "../process/run-command.js";
import type { HostPlatform } from "../platform.js";
import { TargetUnavailable } from "../proxy/targets.js";
import type { BuildRecord, MicrovmRecord } from "../store/records.js";
import type { Store } from "../store/store.js";
import type { CloseOptions, Engine } from "./engine.js";
import type { MicrovmLifecycle } from "./lifecycle.js";

/**
 * The engine with real VMs. Per MicroVM:
 *
 *   run:       PENDING ─► wait for the version's build ─► disk overlay (qcow2 on the snapshot's disk)
 *              ─► driver.restore (memory mapped copy-on-write, clock and entropy resynced)
 *              ─► run hook (runHookPayload) ─► RUNNING (startedAt) ─► max-duration timer
 *   vm exits:  (not asked to) ─► TERMINATED with the reason (the application exited, QEMU died)
 *   suspend:   SUSPENDING ─► suspend hook ─► pause the VM (memory kept) ─► SUSPENDED
 *   resume:    PENDING ─► continue the VM, resync its clock ─► resume hook ─► RUNNING
 *   terminate: TERMINATING ─► abort a start under way ─► terminate hook ─► stop the VM ─► remove its files ─► TERMINATED
 *
 * Work on one MicroVM is serialized: each step runs after the previous one on
 * that MicroVM has finished, and a terminate aborts a start that is waiting.
 * Application output goes to <dataDir>/microvms/<id>/output.log.
 */
export interface VmEngineOptions {
  store: Store;
  lifecycle: MicrovmLifecycle;
  driver: VmDriver;
  builder: ImageBuilder;
  assets: () => Promise<GuestAssets>;
  platform: HostPlatform;
  dataDir: string;
  log: Logger;
  now: () => Date;
}


interface Slot {
  /** The MicroVM's work, one step after another. */
  chain: Promise<void>;
  abort: AbortController;
  vm?: Vm;
  output?: WriteStream;
  maxDurationTimer?: LongTimeout;
  /** The idle policy: when traffic was last seen at the endpoint (epoch ms), and the timers it drives. */
  lastActivity: number;
  idleTimer?: NodeJS.Timeout;
  suspendedTimer?: LongTimeout;
  /** Set when the engine itself stops the VM, so its exit is not a failure. */
  stopping: boolean;
  /** The image version's hooks (run, suspend, resume, terminate). */
  hooks?: Hooks;
}

export class VmEngine implements Engine {
  private readonly slots = new Map<string, Slot>();
  private closed = false;

  constructor(private readonly o: VmEngineOptions) {
    o.builder.on("settled", ({ build }) => this.buildSettled.forEach((wake) => wake(build)));
  }

  private readonly buildSettled = new Set<(build: BuildRecord) => void>();

  get description(): string {
    return `${this.o.driver.description}`;
  }

  // ── Engine ──────────────────────────────────────────────────────────────

  runMicrovm(microvm: MicrovmRecord): void {
    this.step(microvm.microvmId, (slot) => this.start(microvm, slot));
  }

  /**
   * Suspends to disk: the suspend hook, then the VM's memory and devices into
   * `suspended.state` beside its disk overlay, then QEMU quits. A suspended
   * MicroVM holds no memory and no process.
   */
  suspendMicrovm(microvm: MicrovmRecord): void {
    this.step(microvm.microvmId, async (slot) => {
      const current = await this.o.store.findMicrovm(microvm, microvm.microvmId);
      if (current?.state !== "SUSPENDING") return; // terminated meanwhile
      const vm = slot.vm;
      if (!vm) throw new Error(`MicroVM ${microvm.microvmId} has no VM to suspend`);
      await this.bestEffortHook(microvm, slot, "suspend");
      const statePath = this.suspendedStateOf(microvm.microvmId);
      const partial = `${statePath}.partial`;
      try {
        // Written whole, then renamed: a crash mid-way never leaves a state file that looks complete.
        await vm.snapshot(partial, { withMemory: true });
        await rename(partial, statePath);
      } catch (error) {
        // The guest is paused mid-save: it cannot go back to serving, so it ends with the reason rather than hang SUSPENDING.
        this.o.log.warn({ err: error, microvmId: microvm.microvmId }, "MicroVM failed to suspend");
        await rm(partial, { force: true });
        await this.stopAndClean(microvm.microvmId, slot);
        await this.o.lifecycle.apply(current, "failed", { stateReason: `The MicroVM could not be suspended: ${(error as Error).message}` });
        this.slots.delete(microvm.microvmId);
        return;
      }
      await this.stopAndClean(microvm.microvmId, slot, { keepDisk: true });
      slot.stopping = false;
      const { microvm: suspended } = await this.o.lifecycle.apply(current, "suspended");
      this.armSuspended(suspended, slot);
      this.o.log.info({ microvmId: microvm.microvmId }, "MicroVM suspended to disk");
    });
  }

  resumeMicrovm(microvm: MicrovmRecord): void {
    this.step(microvm.microvmId, async (slot) => {
      const current = await this.o.store.findMicrovm(microvm, microvm.microvmId);
      if (current?.state !== "PENDING") return;
      try {
        const vm = await this.bringUp(current, slot, "suspension");
        slot.abort.signal.throwIfAborted();
        await this.bestEffortHook(microvm, slot, "resume");
        // startedAt stays: maximumDurationInSeconds counts from the first start, whatever the state since.
        await this.o.lifecycle.apply(current, "started", { stateReason: undefined });
        // Only once RUNNING is recorded: until then a restart must still find the state to resume from.
        await rm(this.suspendedStateOf(microvm.microvmId), { force: true });
        slot.suspendedTimer?.cancel();
        this.armIdle(current, slot);
        this.o.log.info({ microvmId: microvm.microvmId, pid: vm.pid }, "MicroVM resumed");
      } catch (error) {
        if (slot.abort.signal.aborted) return; // a terminate (or shutdown) took over; it cleans up
        this.o.log.warn({ err: error, microvmId: microvm.microvmId }, "MicroVM failed to resume");
        await this.stopAndClean(microvm.microvmId, slot);
        await this.o.lifecycle.apply(current, "failed", { stateReason: `The MicroVM could not resume: ${(error as Error).message}` }).catch(() => {});
        this.slots.delete(microvm.microvmId);
      }
    });
  }

  terminateMicrovm(microvm: MicrovmRecord): void {
    this.slots.get(microvm.microvmId)?.abort.abort();
    this.step(microvm.microvmId, (slot) => this.terminate(microvm, slot));
  }

  startBuild(build: BuildRecord): void {
    this.o.builder.start(build);
  }

  versionsDeleted(imageId: string, versions: number[]): void {
    this.o.builder.release(imageId, versions).catch((error: unknown) =>
      this.o.log.error({ err: error, imageId, versions }, "could not free the files of deleted versions"),
    );
  }

  /**
   * Settles what a previous run of the server left. Suspended MicroVMs live on
   * disk and simply stay SUSPENDED (a suspension cut short is finished if its
   * state file was complete). VMs that ran died with the server (they are not
   * adopted yet): RUNNING ones are terminated with a reason. TERMINATING ones
   * finish; PENDING ones start, or resume if they were resuming. Deadlines are
   * armed again from the recorded startedAt. Builds: see ImageBuilder.
   */
  async reconcile(): Promise<void> {
    await this.o.builder.reconcile();
    const { store, lifecycle } = this.o;
    const suspendedOnDisk = (microvm: MicrovmRecord) => stat(this.suspendedStateOf(microvm.microvmId)).then(() => true, () => false);
    for (const microvm of await store.microvmsInState(["RUNNING", "SUSPENDING"])) await this.adopt(microvm);
    for (const microvm of await store.microvmsInState(["RUNNING", "SUSPENDING", "SUSPENDED"])) {
      if (this.slots.get(microvm.microvmId)?.vm) continue; // adopted
      await this.killLeftover(microvm.microvmId);
      if (microvm.state !== "RUNNING" && (await suspendedOnDisk(microvm))) {
        const { microvm: suspended } = await lifecycle.apply(microvm, "suspended").catch(() => ({ microvm }));
        this.armMaximumDuration(suspended, this.slotOf(microvm.microvmId));
        this.armSuspended(suspended, this.slotOf(microvm.microvmId));
        continue;
      }
      await rm(join(this.microvmDir(microvm.microvmId), "run"), { recursive: true, force: true });
      await rm(join(this.microvmDir(microvm.microvmId), "disk.qcow2"), { force: true });
      await rm(this.suspendedStateOf(microvm.microvmId), { force: true });
      await lifecycle.apply(microvm, "failed", { stateReason: "The service restarted and the MicroVM's VM did not survive it." });
    }
    for (const microvm of await store.microvmsInState(["TERMINATING"])) {
      await this.killLeftover(microvm.microvmId);
      this.terminateMicrovm(microvm);
    }
    for (const microvm of await store.microvmsInState(["PENDING"])) {
      if (!(await suspendedOnDisk(microvm))) {
        await this.killLeftover(microvm.microvmId);
        this.runMicrovm(microvm);
        continue;
      }
      // Cut short while resuming. A VM that already runs again has moved on from the state file: keep it.
      if (await this.adopt(microvm)) {
        await lifecycle.apply(microvm, "started", { stateReason: undefined });
        await rm(this.suspendedStateOf(microvm.microvmId), { force: true });
        continue;
      }
      this.armMaximumDuration(microvm, this.slotOf(microvm.microvmId));
      this.resumeMicrovm(microvm);
    }
  }

  async close(options: CloseOptions = {}): Promise<void> {
    this.closed = true;
    for (const slot of this.slots.values()) {
      slot.abort.abort();
      // Deadlines are derived again from the store at the next start (reconcile).
      clearTimeout(slot.idleTimer);
      slot.maxDurationTimer?.cancel();
      slot.suspendedTimer?.cancel();
    }
    await Promise.allSettled([...this.slots.values()].map((slot) => slot.chain));
    let detached = 0;
    await Promise.allSettled(
      [...this.slots.values()].map(async (slot) => {
        slot.stopping = true;
        if (options.stopVms) await slot.vm?.stop(2_000);
        else if (slot.vm) {
          slot.vm.detach();
          detached++;
        }
        slot.output?.end();
      }),
    );
    if (detached > 0) this.o.log.info({ vms: detached }, "VMs left running for the next start to adopt");
    await this.o.builder.close();
  }

  // ── the endpoint proxy's targets ─────────────────────────────────────────────────────

  async connect(microvmId: string, guestPort: number): Promise<{ host: string; port: number }> {
    const vm = this.slots.get(microvmId)?.vm;
    if (!vm) throw new TargetUnavailable(microvmId, `MicroVM ${microvmId} has no running VM.`);
    return { host: "127.0.0.1", port: await vm.forward(guestPort) };
  }

  activity(microvmId: string): void {
    const slot = this.slots.get(microvmId);
    if (slot) slot.lastActivity = Date.now();
  }

  async wake(microvm: MicrovmRecord, timeoutMs: number): Promise<MicrovmRecord | undefined> {
    const deadline = Date.now() + timeoutMs;
    let current: MicrovmRecord | undefined = microvm;
    for (;;) {
      // Running, or gone for good (the proxy answers that with a 404).
      if (!current || ["RUNNING", "TERMINATING", "TERMINATED"].includes(current.state)) return current;
      if (current.state === "SUSPENDED") {
        // Concurrent requests race here; the state table lets one resume and the others wait.
        const resumed = await this.o.lifecycle.apply(current, "resume").catch(() => undefined);
        if (resumed?.moved) {
          this.o.log.info({ microvmId: microvm.microvmId }, "auto-resuming for a request");
          this.resumeMicrovm(resumed.microvm);
        }
      }
      if (Date.now() > deadline) throw new TargetUnavailable(microvm.microvmId, `still ${current.state} after ${timeoutMs / 1000} s`);
      await sleep(50);
      current = await this.o.store.findMicrovm(microvm, microvm.microvmId);
    }
  }

  // ── MicroVM work ────────────────────────────────────────────────────────

  private slotOf(microvmId: string): Slot {
    let slot = this.slots.get(microvmId);
    if (!slot) {
      slot = { chain: Promise.resolve(), abort: new AbortController(), stopping: false, lastActivity: Date.now() };
      this.slots.set(microvmId, slot);
    }
    return slot;
  }

  /** Queues `work` after whatever is under way on the MicroVM. */
  private step(microvmId: string, work: (slot: Slot) => Promise<void>): void {
    const current = this.slotOf(microvmId);
    current.chain = current.chain.then(() => work(current)).catch((error: unknown) => {
      this.o.log.error({ err: error, microvmId }, "MicroVM work failed");
    });
  }

  private microvmDir(microvmId: string): string {
    return join(this.o.dataDir, "microvms", microvmId);
  }

  private async start(microvm: MicrovmRecord, slot: Slot): Promise<void> {
    const { lifecycle, log } = this.o;
    const signal = slot.abort.signal;
    const mlog = log.child({ microvmId: microvm.microvmId });
    try {
      // Never a cold boot: the application starts where the build's snapshot left it.
      const vm = await this.bringUp(microvm, slot, "snapshot");
      mlog.info({ pid: vm.pid }, "VM restored from its image's snapshot");

      await Promise.race([callHook(vm, slot.hooks, "run", microvm.config.runHookPayload ?? ""), aborted(signal)]);
      const startedAt = this.o.now();
      const { moved } = await lifecycle.apply(microvm, "started", { startedAt, stateReason: undefined });
      if (!moved) return;
      mlog.info("MicroVM running");
      this.armMaximumDuration({ ...microvm, startedAt }, slot);
      this.armIdle(microvm, slot);
    } catch (error) {
      if (signal.aborted) return; // a terminate (or shutdown) took over; it cleans up
      const reason =
        error instanceof StartFailure || error instanceof HookFailure ? error.message : `The MicroVM could not start: ${(error as Error).message}`;
      mlog.warn({ err: error }, "MicroVM failed to start");
      await this.stopAndClean(microvm.microvmId, slot);
      await lifecycle.apply(microvm, "failed", { stateReason: reason }).catch(() => {});
      this.slots.delete(microvm.microvmId);
    }
  }

  /**
   * The idle policy while RUNNING: no traffic through the endpoint for
   * maxIdleDurationSeconds suspends the MicroVM, or terminates it when
   * suspendedDurationSeconds is 0. Traffic pushes the deadline on.
   */
  private armIdle(microvm: MicrovmRecord, slot: Slot): void {
    const policy = microvm.config.idlePolicy;
    if (!policy) return;
    clearTimeout(slot.idleTimer);
    slot.lastActivity = Date.now();
    const check = () => {
      const idleFor = Date.now() - slot.lastActivity;
      const limit = policy.maxIdleDurationSeconds * 1000;
      if (idleFor < limit) {
        slot.idleTimer = setTimeout(check, limit - idleFor).unref();
        return;
      }
      void this.idleReached(microvm, policy.maxIdleDurationSeconds, policy.suspendedDurationSeconds === 0).catch((error: unknown) =>
        this.o.log.error({ err: error, microvmId: microvm.microvmId }, "could not apply the idle policy"),
      );
    };
    slot.idleTimer = setTimeout(check, policy.maxIdleDurationSeconds * 1000).unref();
  }

  private async idleReached(microvm: MicrovmRecord, seconds: number, terminate: boolean): Promise<void> {
    const current = await this.o.store.findMicrovm(microvm, microvm.microvmId);
    if (current?.state !== "RUNNING") return;
    const why = `No requests reached the MicroVM for ${seconds} seconds.`;
    if (terminate) {
      const { moved, microvm: terminating } = await this.o.lifecycle.apply(
        current,
        "terminate",
        { stateReason: `${why} Its idle policy ends it then (suspendedDurationSeconds 0).` },
        { onlyFrom: ["RUNNING"] },
      );
      if (moved) this.terminateMicrovm(terminating);
      return;
    }
    const { moved, microvm: suspending } = await this.o.lifecycle.apply(
      current,
      "suspend",
      { stateReason: `${why} Suspended by its idle policy.` },
      { onlyFrom: ["RUNNING"] },
    );
    if (moved) this.suspendMicrovm(suspending);
  }

  /** The idle policy while SUSPENDED: after suspendedDurationSeconds the MicroVM is terminated. Counted from when it was suspended. */
  private armSuspended(microvm: MicrovmRecord, slot: Slot): void {
    const policy = microvm.config.idlePolicy;
    if (!policy) return;
    slot.suspendedTimer?.cancel();
    const deadline = microvm.updatedAt.getTime() + policy.suspendedDurationSeconds * 1000;
    slot.suspendedTimer = longTimeout(() => {
      void (async () => {
        const current = await this.o.store.findMicrovm(microvm, microvm.microvmId);
        if (current?.state !== "SUSPENDED") return;
        const { moved, microvm: terminating } = await this.o.lifecycle.apply(
          current,
          "terminate",
          { stateReason: `The MicroVM stayed suspended for ${policy.suspendedDurationSeconds} seconds, as long as its idle policy allows.` },
          { onlyFrom: ["SUSPENDED"] },
        );
        if (moved) this.terminateMicrovm(terminating);
      })().catch((error: unknown) => this.o.log.error({ err: error, microvmId: microvm.microvmId }, "could not end a suspended MicroVM"));
    }, deadline - Date.now());
  }

  /** maximumDurationInSeconds counts from startedAt, whatever the state since. */
  private armMaximumDuration(microvm: MicrovmRecord, slot: Slot): void {
    slot.maxDurationTimer?.cancel();
    const deadline = (microvm.startedAt ?? microvm.createdAt).getTime() + microvm.config.maximumDurationInSeconds * 1000;
    slot.maxDurationTimer = longTimeout(() => this.maximumDurationReached(microvm), deadline - Date.now());
  }

  private suspendedStateOf(microvmId: string): string {
    return join(this.microvmDir(microvmId), "suspended.state");
  }

  /**
   * Starts the MicroVM's VM from the build's snapshot on a new disk overlay (a
   * run), or from its own suspended state on the overlay it had (a resume,
   * whose RAM is in the state file, laid over the build's memory file), and
   * wires its output and exit.
   */
  private async bringUp(microvm: MicrovmRecord, slot: Slot, from: "snapshot" | "suspension"): Promise<Vm> {
    const build = await this.waitForBuild(microvm, slot.abort.signal);
    const version = await this.o.store.findVersion(microvm.imageId, microvm.imageVersion);
    if (!version) throw new StartFailure(`Image version ${microvm.imageVersion} no longer exists.`);
    slot.abort.signal.throwIfAborted();
    const snapshot = this.o.builder.snapshotOf(build.buildId);
    const dir = this.microvmDir(microvm.microvmId);
    if (from === "snapshot") {
      await mkdir(dir, { recursive: true });
      // A private copy-on-write layer: the snapshot's disk is shared by every MicroVM of the version and never written.
      await runCommand("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", snapshot.disk, join(dir, "disk.qcow2")], {
        what: `the disk of MicroVM ${microvm.microvmId}`,
        debianPackage: "qemu-utils",
      });
      slot.abort.signal.throwIfAborted();
    }
    const assets = await this.o.assets();
    const egress = (microvm.config.egressNetworkConnectors ?? version.config.egressNetworkConnectors ?? []).includes("INTERNET_EGRESS");
    const vm = await this.o.driver.restore(
      {
        name: microvm.microvmId,
        runDir: join(dir, "run"),
        kernel: assets.kernel,
        initrd: assets.initrd,
        disk: { path: join(dir, "disk.qcow2"), format: "qcow2" },
        memoryMiB: guestMemoryMiB(version.config),
        memory: { path: snapshot.memoryPath, share: false },
        egress,
      },
      from === "snapshot" ? snapshot.statePath : this.suspendedStateOf(microvm.microvmId),
      { memoryInState: from === "suspension" },
    );
    this.wire(microvm, slot, vm, version.config.hooks);
    return vm;
  }

  /** Makes `vm` the MicroVM's: its output goes to the MicroVM's log, and its end is noticed. */
  private wire(microvm: MicrovmRecord, slot: Slot, vm: Vm, hooks: Hooks | undefined): void {
    slot.vm = vm;
    slot.stopping = false;
    slot.hooks = hooks;
    const output = createWriteStream(join(this.microvmDir(microvm.microvmId), "output.log"), { flags: "a" });
    slot.output = output;
    vm.onAgentEvent((event) => {
      if (event.kind === "stdout" || event.kind === "stderr") output.write(`${event.line}\n`);
    });
    void vm.exited.then((exit) => {
      if (!slot.stopping && !this.closed) this.step(microvm.microvmId, () => this.vmEnded(microvm, slot, exit.reason));
    });
  }

  /** The build of the MicroVM's version for this host, once it has succeeded. */
  private async waitForBuild(microvm: MicrovmRecord, signal: AbortSignal): Promise<BuildRecord> {
    for (;;) {
      // Listening before looking, so a build that settles in between is not missed; removed whatever happens.
      let wake!: () => void;
      const settled = new Promise<void>((resolve) => (wake = resolve));
      const onSettled = (build: BuildRecord) => {
        if (build.imageId === microvm.imageId && build.version === microvm.imageVersion) wake();
      };
      this.buildSettled.add(onSettled);
      signal.addEventListener("abort", wake, { once: true });
      try {
        const builds = (await this.o.store.listBuilds(microvm.imageId, microvm.imageVersion, { architecture: this.o.platform.architecture, limit: 100 })).items;
        const ready = builds.find((b) => b.buildState === "SUCCESSFUL");
        if (ready) return ready;
        if (!builds.some((b) => b.buildState === "PENDING" || b.buildState === "IN_PROGRESS")) {
          const failed = builds.find((b) => b.buildState === "FAILED");
          throw new StartFailure(
            failed
              ? `Image version ${microvm.imageVersion} failed to build: ${failed.stateReason ?? "no reason recorded"}`
              : `Image version ${microvm.imageVersion} has no build for ${this.o.platform.architecture}.`,
          );
        }
        await settled;
      } finally {
        this.buildSettled.delete(onSettled);
        signal.removeEventListener("abort", wake);
      }
      signal.throwIfAborted();
    }
  }

  private async vmEnded(microvm: MicrovmRecord, slot: Slot, reason: string): Promise<void> {
    if (slot.stopping) return;
    this.o.log.info({ microvmId: microvm.microvmId, reason }, "VM ended");
    await this.stopAndClean(microvm.microvmId, slot);
    const current = await this.o.store.findMicrovm(microvm, microvm.microvmId);
    if (current && current.state !== "TERMINATED") await this.o.lifecycle.apply(current, "failed", { stateReason: reason });
    this.slots.delete(microvm.microvmId);
  }

  private maximumDurationReached(microvm: MicrovmRecord): void {
    void (async () => {
      const current = await this.o.store.findMicrovm(microvm, microvm.microvmId);
      if (!current) return;
      const { moved, microvm: terminating } = await this.o.lifecycle.apply(current, "terminate", {
        stateReason: `The MicroVM reached its maximum duration of ${microvm.config.maximumDurationInSeconds} seconds.`,
      });
      if (moved) this.terminateMicrovm(terminating);
    })().catch((error: unknown) => this.o.log.error({ err: error, microvmId: microvm.microvmId }, "could not end the MicroVM at its maximum duration"));
  }

  private async terminate(microvm: MicrovmRecord, slot: Slot): Promise<void> {
    // A suspended MicroVM has no VM to call; it is terminated as it is.
    if (slot.vm) await this.bestEffortHook(microvm, slot, "terminate");
    await this.stopAndClean(microvm.microvmId, slot);
    const current = (await this.o.store.findMicrovm(microvm, microvm.microvmId)) ?? microvm;
    // Its VM may have ended on its own meanwhile, which already made it TERMINATED.
    if (current.state === "TERMINATING") await this.o.lifecycle.apply(current, "terminated");
    this.slots.delete(microvm.microvmId);
  }

  /**
   * Calls a hook whose failure does not change what happens next (the
   * suspension, resumption or termination goes on); its timeout bounds the wait.
   */
  private async bestEffortHook(microvm: MicrovmRecord, slot: Slot, name: "suspend" | "resume" | "terminate"): Promise<void> {
    if (!slot.vm) return;
    await callHook(slot.vm, slot.hooks, name).catch((error: unknown) =>
      this.o.log.warn({ err: error, microvmId: microvm.microvmId }, `the ${name} hook failed`),
    );
  }

  /** Stops the VM if one runs and removes the MicroVM's files (all but its disk and suspended state when suspending). */
  private async stopAndClean(microvmId: string, slot: Slot, options: { keepDisk?: boolean } = {}): Promise<void> {
    slot.stopping = true;
    // A suspended VM was saved paused and must not run on: it quits at once, and its deadline keeps counting.
    if (!options.keepDisk) slot.maxDurationTimer?.cancel();
    clearTimeout(slot.idleTimer);
    if (!options.keepDisk) slot.suspendedTimer?.cancel();
    if (slot.vm) await slot.vm.stop(options.keepDisk ? 0 : undefined);
    slot.vm = undefined;
    await new Promise<void>((resolve) => (slot.output ? slot.output.end(resolve) : resolve()));
    slot.output = undefined;
    await rm(join(this.microvmDir(microvmId), "run"), { recursive: true, force: true });
    if (options.keepDisk) return;
    await rm(join(this.microvmDir(microvmId), "disk.qcow2"), { force: true });
    await rm(this.suspendedStateOf(microvmId), { force: true });
  }

  /**
   * Takes over the VM of a MicroVM a previous run of the server left RUNNING
   * (or SUSPENDING, whose suspension is then done again): output, exit,
   * deadlines and idle timer go on from here.
   */
  private async adopt(microvm: MicrovmRecord): Promise<boolean> {
    const vm = await this.o.driver.adopt(microvm.microvmId, join(this.microvmDir(microvm.microvmId), "run"));
    if (!vm) return false;
    const version = await this.o.store.findVersion(microvm.imageId, microvm.imageVersion);
    const slot = this.slotOf(microvm.microvmId);
    this.wire(microvm, slot, vm, version?.config.hooks);
    this.armMaximumDuration(microvm, slot);
    if (microvm.state === "SUSPENDING") this.suspendMicrovm(microvm);
    else this.armIdle(microvm, slot);
    return true;
  }

  /** A QEMU a previous run of the server left behind and that could not be adopted: it is stopped. */
  private async killLeftover(microvmId: string): Promise<void> {
    if (await this.o.driver.killLeftover(join(this.microvmDir(microvmId), "run"))) {
      this.o.log.warn({ microvmId }, "stopped a VM left by a previous run of the service");
    }
  }
}

/** A start failure whose message is fit for the MicroVM's stateReason as it is. */
class StartFailure extends Error {}

function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}

/** A timer for deadlines beyond setTimeout's range (24.8 days: suspendedDurationSeconds has no maximum); never holds the process open. */
interface LongTimeout {
  cancel(): void;
}

const MAX_TIMEOUT_MS = 2 ** 31 - 1;

function longTimeout(fn: () => void, ms: number): LongTimeout {
  let timer: NodeJS.Timeout;
  const arm = (remaining: number) => {
    timer = setTimeout(() => (remaining > MAX_TIMEOUT_MS ? arm(remaining - MAX_TIMEOUT_MS) : fn()), Math.min(Math.max(0, remaining), MAX_TIMEOUT_MS)).unref();
  };
  arm(ms);
  return { cancel: () => clearTimeout(timer) };
}
