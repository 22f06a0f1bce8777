import { EventEmitter } from "node:events";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import type { GuestAssets } from "../../src/agent/assets.js";
import type { Hooks } from "../../src/api/generated/types.js";
import type { BuildSettled } from "../../src/builder/image-builder.js";
import { MicrovmFiles } from "../../src/engine/microvm/microvm-files.js";
import { VmEngine } from "../../src/engine/vm-engine.js";
import { MicrovmLifecycle } from "../../src/lifecycle/microvm-states.js";
import { detectHostPlatform, type HostPlatform } from "../../src/platform.js";
import { migrate } from "../../src/store/migrations.js";
import type { BuildRecord, MicrovmConfig, MicrovmPhase, MicrovmRecord, VersionConfig } from "../../src/store/records.js";
import { SqlStore } from "../../src/store/sql-store.js";
import { SqliteDriver } from "../../src/store/sqlite-driver.js";
import { FakeDriver } from "./fake-driver.js";
import { ManualClock } from "./manual-clock.js";

/**
 * One engine's world for a test: an in-memory store holding an image with one
 * SUCCESSFUL version (and its build for this host), a FakeDriver, a fake image
 * builder whose snapshot files exist, a temporary data directory and a
 * ManualClock. `restart` gives a new engine (and driver) over the same store
 * and data directory, as a restarted server has.
 */

export const owner = { accountId: "000000000000", region: "us-east-1" };

/** Every MicroVM hook enabled, on the default hooks port. */
export const allHooks: Hooks = {
  port: 8080,
  microvmHooks: { run: "ENABLED", suspend: "ENABLED", resume: "ENABLED", terminate: "ENABLED" },
};

export class FakeBuilder extends EventEmitter<{ settled: [BuildSettled] }> {
  readonly started: BuildRecord[] = [];

  constructor(private readonly dir: string) {
    super();
  }

  snapshotOf(buildId: string): { disk: string; statePath: string; memoryPath: string } {
    const dir = join(this.dir, "builds", buildId);
    return { disk: join(dir, "disk.ext4"), memoryPath: join(dir, "memory.ram"), statePath: join(dir, "state.bin") };
  }

  /** Writes the files a successful build leaves. */
  async makeSnapshot(buildId: string): Promise<void> {
    const files = this.snapshotOf(buildId);
    await mkdir(join(this.dir, "builds", buildId), { recursive: true });
    for (const file of [files.disk, files.memoryPath, files.statePath]) await writeFile(file, `${file}\n`);
  }

  start(build: BuildRecord): void {
    this.started.push(build);
  }

  async release(_imageId: string, _versions: number[]): Promise<void> {}

  async reconcile(): Promise<void> {}

  async close(): Promise<void> {}
}

export interface WorldOptions {
  /** The version's hooks (none unless given). */
  hooks?: Hooks;
  /** The state of the version's build for this host (SUCCESSFUL unless given). */
  buildState?: BuildRecord["buildState"];
}

let worldCount = 0;

export class World {
  readonly imageId = "img-engine-test";
  readonly imageVersion = 1;
  readonly buildId = "bld-engine-test-1";
  readonly clock = new ManualClock();
  readonly lifecycle: MicrovmLifecycle;
  readonly log = pino({ level: "silent" });
  readonly platform: HostPlatform = detectHostPlatform();
  driver: FakeDriver;
  engine: VmEngine;
  private readonly drivers: FakeDriver[] = [];
  private readonly engines: VmEngine[] = [];
  private count = 0;

  private constructor(
    readonly store: SqlStore,
    readonly dir: string,
    readonly dataDir: string,
    readonly builder: FakeBuilder,
    readonly assets: GuestAssets,
    driver: FakeDriver,
  ) {
    this.lifecycle = new MicrovmLifecycle(store, () => this.clock.now());
    this.driver = driver;
    this.engine = this.newEngine(driver);
  }

  static async create(options: WorldOptions = {}): Promise<World> {
    const sql = new SqliteDriver(":memory:");
    await migrate(sql);
    const store = SqlStore.over(sql);
    const dir = await mkdtemp(join(tmpdir(), "microvms-engine-"));
    const dataDir = join(dir, "data");
    await mkdir(dataDir, { recursive: true });
    const assets: GuestAssets = { kernelRelease: "6.1.0-test-cloud-amd64", kernel: join(dir, "vmlinuz"), initrd: join(dir, "initramfs.cpio"), agent: join(dir, "agent") };
    for (const file of [assets.kernel, assets.initrd, assets.agent]) await writeFile(file, "");
    const builder = new FakeBuilder(dataDir);
    const world = new World(store, dir, dataDir, builder, assets, await FakeDriver.create());
    worldCount++;
    await world.seed(options);
    return world;
  }

  private async seed(options: WorldOptions): Promise<void> {
    const now = this.clock.now();
    await this.store.insertImage({ ...owner, imageId: this.imageId, name: "app", state: "CREATED", tags: {}, createdAt: now, updatedAt: now });
    const config: VersionConfig = {
      baseImageArn: "arn:aws:lambda:us-east-1:aws:microvm-image/debian-12",
      buildRoleArn: "arn:aws:iam::000000000000:role/build",
      codeArtifact: { uri: "s3://bucket/app.zip" },
      ...(options.hooks ? { hooks: options.hooks } : {}),
    };
    const buildState = options.buildState ?? "SUCCESSFUL";
    await this.store.insertVersion({
      imageId: this.imageId,
      version: this.imageVersion,
      state: buildState === "SUCCESSFUL" ? "SUCCESSFUL" : "PENDING",
      status: "ACTIVE",
      config,
      createdAt: now,
      updatedAt: now,
    });
    await this.store.insertBuild({
      buildId: this.buildId,
      imageId: this.imageId,
      version: this.imageVersion,
      architecture: this.platform.architecture,
      chipset: this.platform.chipset,
      chipsetGeneration: this.platform.chipsetGeneration,
      buildState,
      createdAt: now,
      updatedAt: now,
    });
    if (buildState === "SUCCESSFUL") await this.builder.makeSnapshot(this.buildId);
  }

  newEngine(driver: FakeDriver): VmEngine {
    const engine = new VmEngine({
      store: this.store,
      lifecycle: this.lifecycle,
      driver,
      builder: this.builder,
      assets: async () => this.assets,
      platform: this.platform,
      dataDir: this.dataDir,
      log: this.log,
      clock: this.clock,
    });
    this.drivers.push(driver);
    this.engines.push(engine);
    return engine;
  }

  /**
   * A restarted server: a new engine, with a new driver that `leftBehind`
   * configures, over the same store and data directory. The previous engine is
   * dropped as a crash drops it (call its close() first for a clean stop).
   */
  async restart(prepare: (driver: FakeDriver) => void = () => undefined): Promise<VmEngine> {
    const driver = await FakeDriver.create();
    prepare(driver);
    this.driver = driver;
    this.engine = this.newEngine(driver);
    await this.engine.reconcile();
    return this.engine;
  }

  // ── the build ─────────────────────────────────────────────────────

  /** The version's build ends: recorded, and announced as the image builder does. */
  async settleBuild(state: "SUCCESSFUL" | "FAILED", stateReason?: string): Promise<void> {
    if (state === "SUCCESSFUL") await this.builder.makeSnapshot(this.buildId);
    const updatedAt = this.clock.now();
    await this.store.transitionBuild(this.buildId, ["PENDING", "IN_PROGRESS"], state, { stateReason, updatedAt });
    const build = await this.store.findBuild(this.imageId, this.imageVersion, this.buildId);
    this.builder.emit("settled", { build: build! });
  }

  // ── MicroVMs, as src/operations/microvms.ts records them ──────────

  /** Inserts a MicroVM record directly (any phase), as a previous run of the server may have left it. */
  async insertMicrovm(state: MicrovmPhase, config: Partial<MicrovmConfig> = {}, extra: Partial<MicrovmRecord> = {}): Promise<MicrovmRecord> {
    const now = this.clock.now();
    const microvm: MicrovmRecord = {
      ...owner,
      microvmId: `mvm-${String(worldCount).padStart(8, "0")}${String(++this.count).padStart(9, "0")}`,
      imageId: this.imageId,
      imageName: "app",
      imageVersion: this.imageVersion,
      state,
      config: { maximumDurationInSeconds: 28_800, ...config },
      createdAt: now,
      startedAt: now,
      updatedAt: now,
      ...extra,
    };
    await this.store.insertMicrovm(microvm);
    return microvm;
  }

  /** RunMicrovm: recorded STARTING, then handed to the engine. */
  async run(config: Partial<MicrovmConfig> = {}): Promise<MicrovmRecord> {
    const microvm = await this.insertMicrovm("STARTING", config);
    this.engine.runMicrovm(microvm);
    return microvm;
  }

  /** RunMicrovm, until RUNNING. */
  async running(config: Partial<MicrovmConfig> = {}): Promise<MicrovmRecord> {
    const microvm = await this.run(config);
    return this.until(microvm.microvmId, "RUNNING");
  }

  async suspend(microvmId: string): Promise<MicrovmRecord> {
    const { microvm, moved } = await this.lifecycle.apply(await this.get(microvmId), "suspend");
    if (moved) this.engine.suspendMicrovm(microvm);
    return microvm;
  }

  async resume(microvmId: string): Promise<MicrovmRecord> {
    const { microvm, moved } = await this.lifecycle.apply(await this.get(microvmId), "resume");
    if (moved) this.engine.resumeMicrovm(microvm);
    return microvm;
  }

  async terminate(microvmId: string): Promise<MicrovmRecord> {
    const { microvm, moved } = await this.lifecycle.apply(await this.get(microvmId), "terminate", { stateReason: "Terminated by TerminateMicrovm." });
    if (moved) this.engine.terminateMicrovm(microvm);
    return microvm;
  }

  async get(microvmId: string): Promise<MicrovmRecord> {
    const microvm = await this.store.findMicrovm(owner, microvmId);
    if (!microvm) throw new Error(`no MicroVM ${microvmId}`);
    return microvm;
  }

  /**
   * Polls the store until the MicroVM is in one of `states` (up to 5 s of real
   * time), then, unless `settle` is false, waits for the engine's work queued on
   * it to finish: an action records its state before it is done (a resume arms
   * the idle timer after RUNNING is recorded), and a test that moves the clock
   * next must not race it. Pass `settle: false` while a Gate holds that work.
   */
  async until(microvmId: string, states: MicrovmPhase | MicrovmPhase[], { settle = true, timeoutMs = 5_000 } = {}): Promise<MicrovmRecord> {
    const wanted = Array.isArray(states) ? states : [states];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const microvm = await this.get(microvmId);
      if (wanted.includes(microvm.state)) {
        if (settle) await this.settled(microvmId);
        return microvm;
      }
      if (Date.now() > deadline) {
        throw new Error(`MicroVM ${microvmId} is ${microvm.state} (${microvm.stateReason ?? "no reason"}), not ${wanted.join("/")}; driver calls: ${this.driver.ops().join(", ")}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Waits until the engine has no work left queued on the MicroVM. */
  async settled(microvmId: string): Promise<void> {
    // The queue is the engine's own (VmEngine's private context): no public API says when work is done.
    const live = this.engine["ctx"].live;
    for (;;) {
      const entry = live.find(microvmId);
      if (!entry) return;
      const chain = entry.chain;
      await chain;
      if (live.find(microvmId) === entry && entry.chain === chain) return;
    }
  }

  /** Polls until `check` holds (up to 5 s of real time). */
  async eventually(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`never: ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  files(microvmId: string): MicrovmFiles {
    return new MicrovmFiles(this.dataDir, microvmId);
  }

  /** Files a suspension leaves: the disk overlay and a complete suspended state. */
  async writeSuspendedFiles(microvmId: string): Promise<void> {
    const files = this.files(microvmId);
    await files.create();
    await writeFile(files.disk, "qcow2 overlay\n");
    await writeFile(files.suspendedState, "device state and memory\n");
  }

  /** Lets work already under way settle, for assertions that something did NOT happen. */
  async quiet(): Promise<void> {
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  async close(): Promise<void> {
    for (const driver of this.drivers) driver.openAll();
    for (const engine of this.engines) await engine.close({ stopVms: true });
    for (const driver of this.drivers) await driver.close();
    await this.store.close();
    await rm(this.dir, { recursive: true, force: true });
  }
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** A reason fit for a client: it names nothing of the host. */
export function assertNoHostDetail(reason: string | undefined, world: World): void {
  if (reason === undefined) throw new Error("no stateReason");
  for (const secret of ["/tmp", world.dir, world.dataDir, "qcow2", "qemu", "QEMU", "VmError", "ENOSPC"]) {
    if (reason.includes(secret)) throw new Error(`stateReason "${reason}" shows host detail (${secret})`);
  }
}

/** With `world`, then closes it whatever happens. */
export async function withWorld(options: WorldOptions, work: (world: World) => Promise<void>): Promise<void> {
  const world = await World.create(options);
  try {
    await work(world);
  } finally {
    await world.close();
  }
}
