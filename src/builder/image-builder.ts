import { EventEmitter } from "node:events";
import { createWriteStream } from "node:fs";
import { chmod, mkdir, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Logger } from "pino";
import type { BaseImages } from "../catalogue/base-images.js";
import type { SnapshotFiles, VmDriver } from "../drivers/driver.js";
import type { GuestAssets } from "../agent/assets.js";
import { Failure } from "../domain/failure.js";
import { callHook, hooksPort } from "../hooks/hooks.js";
import { ImageLifecycle } from "../lifecycle/image-states.js";
import { parseImageArn } from "../domain/identifiers.js";
import type { HostPlatform } from "../platform.js";
import type { BuildRecord, VersionConfig, VersionRecord } from "../store/records.js";
import type { Store } from "../store/store.js";
import type { S3Settings } from "../config/s3-settings.js";
import { fetchCodeArtifact } from "./artifact.js";
import { assembleDisk, stageBaseAndCode, type DiskPlan } from "./disk.js";
import { fetchOciImage, isOciReference } from "./oci/oci-image.js";

/**
 * Builds image versions, one build per CPU configuration, in the background.
 *
 *   PENDING ─► IN_PROGRESS: base image (built on first use) ─► code artifact
 *   laid over it ─► disk.ext4 ─► cold boot (the only one) ─► app listens
 *   ─► ready hook ─► validate hook ─► snapshot: state.bin + memory.ram + the disk
 *   ─► SUCCESSFUL (snapshotBuild sizes)
 *                                   └─ any failure ─► FAILED with a stateReason
 *   after each build: every build of the version settled? ─► version
 *   SUCCESSFUL/FAILED, image CREATED/UPDATED or CREATE_FAILED/UPDATE_FAILED
 *
 * A build cut short by a server restart is
 * failed by `reconcile`, never left IN_PROGRESS.
 */
export interface BuildSettled {
  build: BuildRecord;
}

export class ImageBuilder extends EventEmitter<{ settled: [BuildSettled] }> {
  private readonly running = new Map<string, Promise<void>>();
  /** Builds holding one of the `maxConcurrentBuilds` permits, and those waiting for one. */
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly shutdown = new AbortController();

  constructor(
    private readonly deps: {
      store: Store;
      baseImages: BaseImages;
      assets: () => Promise<GuestAssets>;
      platform: HostPlatform;
      driver: VmDriver;
      /** Where s3:// code artifacts come from. */
      s3: S3Settings;
      /** Registry credentials for OCI images (Docker's config.json format). */
      registryCredentialsFile?: string;
      dataDir: string;
      maxConcurrentBuilds: number;
      /** How long an application may take to listen when the ready hook is disabled. */
      startTimeoutMs: number;
      log: Logger;
      now: () => Date;
    },
  ) {
    super();
  }

  /** The snapshot a successful build produced: its disk, guest RAM and device state. Never modified once built. */
  snapshotOf(buildId: string): { disk: string } & SnapshotFiles {
    const dir = join(this.deps.dataDir, "builds", buildId);
    return { disk: join(dir, "disk.ext4"), memoryPath: join(dir, "memory.ram"), statePath: join(dir, "state.bin") };
  }

  start(build: BuildRecord): void {
    if (this.running.has(build.buildId)) return;
    const work = this.withPermit(() => this.build(build))
      .catch((error: unknown) => this.deps.log.error({ err: error, buildId: build.buildId }, "build crashed"))
      .finally(() => this.running.delete(build.buildId));
    this.running.set(build.buildId, work);
  }

  /** Frees the snapshots of deleted versions: every build's disk, memory and state files. */
  async release(imageId: string, versions: number[]): Promise<void> {
    for (const version of versions) {
      for (const build of (await this.deps.store.listBuilds(imageId, version, { limit: 100 })).items) {
        await rm(join(this.deps.dataDir, "builds", build.buildId), { recursive: true, force: true });
      }
    }
  }

  /**
   * Server shutdown: builds under way stop where they are and are recorded
   * FAILED (a build cannot be resumed); queued ones stay PENDING for the next start.
   */
  async close(): Promise<void> {
    this.shutdown.abort(new Failure("The build was interrupted: the service shut down."));
    for (const wake of this.waiting.splice(0)) wake();
    await this.idle();
  }

  /** Waits for every build under way. */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.running.values()]);
  }

  /** At most `maxConcurrentBuilds` at once: each holds a disk's worth of staging and, later, a VM. */
  private async withPermit(work: () => Promise<void>): Promise<void> {
    if (this.active >= this.deps.maxConcurrentBuilds) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      await work();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }

  private async build(build: BuildRecord): Promise<void> {
    const { store, log } = this.deps;
    const buildLog = log.child({ buildId: build.buildId, imageId: build.imageId, version: build.version });
    let outcome: Pick<BuildRecord, "buildState" | "stateReason" | "snapshotBuild">;
    try {
      if (this.shutdown.signal.aborted) return; // still PENDING: the next start builds it
      const version = await store.findVersion(build.imageId, build.version);
      if (!version || version.state === "DELETED" || version.state === "DELETING") return;
      await this.markInProgress(build);
      buildLog.info("build started");
      outcome = { buildState: "SUCCESSFUL", snapshotBuild: await this.assemble(build, version) };
      buildLog.info({ snapshotBuild: outcome.snapshotBuild }, "build succeeded");
    } catch (error) {
      // The reason goes to clients; what lies beneath (host paths, QEMU's words) only to the log.
      const failure = Failure.from(error, "The build failed because of an internal error of the service.");
      buildLog.warn({ err: error }, "build failed");
      outcome = { buildState: "FAILED", stateReason: failure.message };
      await rm(join(this.deps.dataDir, "builds", build.buildId), { recursive: true, force: true });
    }
    try {
      await this.settle(build, outcome);
    } catch (error) {
      buildLog.error({ err: error }, "could not record the build's outcome");
    }
    this.emit("settled", { build: { ...build, ...outcome } });
  }

  private async markInProgress(build: BuildRecord): Promise<void> {
    const now = this.deps.now();
    await this.deps.store.transaction(async (tx) => {
      const states = new ImageLifecycle(tx);
      await states.build(build, "start", { updatedAt: now });
      const version = await tx.findVersion(build.imageId, build.version);
      if (version) await states.version(version, "start", { updatedAt: now });
    });
  }

  private async assemble(build: BuildRecord, version: VersionRecord) {
    const { platform } = this.deps;
    if (build.architecture !== platform.architecture) {
      throw new Failure(`This host (${platform.architecture}) cannot build for ${build.architecture}.`);
    }
    const config = version.config;
    const uri = config.codeArtifact.uri!;
    const phases = new Phases();
    // An OCI image brings its own root filesystem; other artifacts are laid over the managed base image.
    const populate = isOciReference(uri) ? this.ociRoot(uri, config) : await this.baseAndCode(uri, config, phases);
    const assets = await this.deps.assets();
    const dir = join(this.deps.dataDir, "builds", build.buildId);
    await mkdir(dir, { recursive: true });
    const sizes = await phases.time("artifactAndDisk", () =>
      assembleDisk({ agent: assets.agent, staging: join(dir, "root"), disk: this.snapshotOf(build.buildId).disk, populate }),
    );
    const snapshot = await this.snapshot(build, config, assets, phases);
    // How long each phase took, beside the snapshot (and in the log), for whoever tunes builds.
    await writeFile(join(dir, "phases.json"), JSON.stringify(phases.milliseconds));
    this.deps.log.info({ buildId: build.buildId, phasesMs: phases.milliseconds }, "build phases");
    return { codeInstallSizeInBytes: sizes.codeSizeInBytes, ...snapshot };
  }

  /** Stages the managed base image with the code under /var/task, started from its `bootstrap`. */
  private async baseAndCode(uri: string, config: VersionConfig, phases: Phases): Promise<DiskPlan["populate"]> {
    const base = parseImageArn(config.baseImageArn);
    if (!base) throw new Failure(`The base image ${config.baseImageArn} is not a managed MicroVM image.`);
    const baseVersion = config.baseImageVersion ?? "1";
    const baseBuild = await phases.time("baseImage", () =>
      this.deps.baseImages.ensure(base.name, baseVersion).catch((error: Error) => {
        throw new Failure(`The base image ${base.name} could not be prepared on this host.`, { cause: error });
      }),
    );
    // ListManagedMicrovmImageVersions shows when this host last built the base image.
    await this.deps.store.managedImageVersionBuilt(base.name, baseVersion, baseBuild.builtAt);
    return async (root) => ({
      codeSizeInBytes: await stageBaseAndCode(baseBuild.rootDir, root, async (task) => (await fetchCodeArtifact(uri, task, { s3: this.deps.s3 })).sizeInBytes),
      agentConfig: {
        args: ["/var/task/bootstrap"],
        environment: config.environmentVariables ?? {},
        workdir: "/var/task",
        user: runAs(config),
        readyPort: hooksPort(config.hooks),
      },
    });
  }

  /**
   * Stages an OCI image's layers as the root filesystem, started from its
   * entrypoint and command, in its working directory, with its environment
   * under the image's environmentVariables.
   */
  private ociRoot(reference: string, config: VersionConfig): DiskPlan["populate"] {
    return async (root) => {
      await mkdir(root, { recursive: true });
      const image = await fetchOciImage(reference, root, { credentialsFile: this.deps.registryCredentialsFile });
      const args = [...image.config.entrypoint, ...image.config.cmd];
      if (args.length === 0) {
        throw new Failure(`OCI image ${reference} has no entrypoint and no command; give it an ENTRYPOINT or CMD.`);
      }
      const environment: Record<string, string> = {};
      for (const pair of image.config.env) {
        const eq = pair.indexOf("=");
        if (eq > 0) environment[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
      // tmpfs is mounted over /tmp by the agent; the image's own /tmp only needs to exist.
      await chmod(join(root, "tmp"), 0o1777).catch(() => {});
      return {
        codeSizeInBytes: image.sizeInBytes,
        agentConfig: {
          args,
          environment: { ...environment, ...config.environmentVariables },
          workdir: image.config.workingDir || "/",
          user: runAs(config),
          readyPort: hooksPort(config.hooks),
        },
      };
    };
  }

  /**
   * The only cold boot of the version: the application initialises once, the
   * ready and validate hooks pass, and memory and disk are saved for every
   * MicroVM to start from.
   */
  private async snapshot(build: BuildRecord, config: VersionConfig, assets: GuestAssets, phases: Phases) {
    const files = this.snapshotOf(build.buildId);
    const dir = dirname(files.disk);
    const started = performance.now();
    const vm = await this.deps.driver.start({
      name: build.buildId,
      runDir: join(dir, "run"),
      kernel: assets.kernel,
      initrd: assets.initrd,
      disk: { path: files.disk, format: "raw" },
      memoryMiB: guestMemoryMiB(config),
      memory: { path: files.memoryPath, share: true },
      egress: (config.egressNetworkConnectors ?? []).includes("INTERNET_EGRESS"),
    });
    // The build's own output (the application's initialisation) is kept beside the snapshot.
    const output = createWriteStream(join(dir, "output.log"), { flags: "a" });
    vm.onAgentEvent((event) => {
      if (event.kind === "stdout" || event.kind === "stderr") output.write(`${event.line}\n`);
    });
    let snapshotted = false;
    try {
      const port = hooksPort(config.hooks);
      // The ready hook's timeout bounds the hook, not the boot before it.
      await this.unlessShutDown(
        vm.whenReady(this.deps.startTimeoutMs).catch((error: Error) => {
          throw new Failure(`The application did not start listening on port ${port}: ${error instanceof Failure ? error.message : "its VM did not start"}.`, { cause: error });
        }),
      );
      phases.record("coldBootToReady", performance.now() - started);
      await phases.time("readyHook", () => this.unlessShutDown(callHook(vm, config.hooks, "ready")));
      await phases.time("validateHook", () => this.unlessShutDown(callHook(vm, config.hooks, "validate")));
      await phases.time("snapshot", () => vm.snapshot(files.statePath));
      snapshotted = true;
    } finally {
      // A snapshotted guest stays paused and must never run again (its disk now belongs to the
      // snapshot): QEMU quits at once. Otherwise the agent gets its grace to power off.
      await phases.time("stop", () => vm.stop(snapshotted ? 0 : 2_000));
      await new Promise<void>((resolve) => output.end(resolve));
      await rm(join(dir, "run"), { recursive: true, force: true });
    }
    return {
      diskSnapshotSizeInBytes: await allocatedBytes(files.disk),
      memorySnapshotSizeInBytes: (await allocatedBytes(files.memoryPath)) + (await allocatedBytes(files.statePath)),
    };
  }

  /** Settles with `work`, or rejects as soon as the server shuts down (the VM is then stopped by the caller). */
  private unlessShutDown<T>(work: Promise<T>): Promise<T> {
    const { signal } = this.shutdown;
    work.catch(() => {}); // its failure after a shutdown is no longer anyone's concern
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => reject(signal.reason as Error);
      signal.addEventListener("abort", onAbort, { once: true });
      work.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
    });
  }

  /**
   * Records the build's outcome and, once every build of its version has
   * settled, the version's and the image's. Each through its state table: a
   * version deleted meanwhile stays deleted, an image no longer building keeps
   * its state.
   */
  private async settle(build: BuildRecord, outcome: Pick<BuildRecord, "buildState" | "stateReason" | "snapshotBuild">): Promise<void> {
    const now = this.deps.now();
    await this.deps.store.transaction(async (tx) => {
      const states = new ImageLifecycle(tx);
      const succeeded = outcome.buildState === "SUCCESSFUL";
      await states.build(build, succeeded ? "succeed" : "fail", {
        stateReason: outcome.stateReason ?? null,
        ...(outcome.snapshotBuild ? { snapshotBuild: outcome.snapshotBuild } : {}),
        updatedAt: now,
      });
      const builds = (await tx.listBuilds(build.imageId, build.version, { limit: 100 })).items;
      if (builds.some((b) => b.buildState === "PENDING" || b.buildState === "IN_PROGRESS")) return;
      const failed = builds.find((b) => b.buildState === "FAILED");
      const version = await tx.findVersion(build.imageId, build.version);
      if (!version) return;
      const reason = !failed ? null : builds.length === 1 ? (failed.stateReason ?? null) : `The ${failed.architecture} build failed: ${failed.stateReason}`;
      if ((await states.version(version, failed ? "fail" : "succeed", { stateReason: reason, updatedAt: now })) !== "moved") return;
      const image = await tx.findImageById(build.imageId);
      if (image) await states.image(image, failed ? "failed" : "built", { updatedAt: now });
    });
  }

  /** On start: builds a previous run left IN_PROGRESS are failed (their work is gone); PENDING ones start. */
  async reconcile(): Promise<void> {
    for (const build of await this.deps.store.buildsInState(["IN_PROGRESS"])) {
      await rm(join(this.deps.dataDir, "builds", build.buildId), { recursive: true, force: true });
      await this.settle(build, { buildState: "FAILED", stateReason: "The build was interrupted by a restart of the service." });
    }
    for (const build of await this.deps.store.buildsInState(["PENDING"])) this.start(build);
  }
}

/** Without additionalOsCapabilities ["ALL"] the application runs as an unprivileged user, as in Lambda. */
function runAs(config: VersionConfig): "root" | "1000:1000" {
  return config.additionalOsCapabilities?.includes("ALL") ? "root" : "1000:1000";
}

/** Memory of a version's MicroVMs (resources[0].minimumMemoryInMiB): its snapshot and every restore use it. */
export function guestMemoryMiB(config: VersionConfig): number {
  return config.resources?.[0]?.minimumMemoryInMiB ?? DEFAULT_MEMORY_MIB;
}

const DEFAULT_MEMORY_MIB = 512;

/** Durations of a build's phases, in milliseconds. */
class Phases {
  readonly milliseconds: Record<string, number> = {};

  record(name: string, ms: number): void {
    this.milliseconds[name] = Math.round(ms);
  }

  async time<T>(name: string, work: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await work();
    } finally {
      this.record(name, performance.now() - started);
    }
  }
}

async function allocatedBytes(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}
