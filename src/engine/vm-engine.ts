import type { Logger } from "pino";
import type { GuestAssets } from "../agent/assets.js";
import type { ImageBuilder } from "../builder/image-builder.js";
import type { VmDriver } from "../drivers/driver.js";
import type { MicrovmLifecycle } from "../lifecycle/microvm-states.js";
import type { HostPlatform } from "../platform.js";
import type { BuildRecord, MicrovmRecord } from "../store/records.js";
import type { Store } from "../store/store.js";
import { resume } from "./actions/resume.js";
import { run } from "./actions/run.js";
import { suspend } from "./actions/suspend.js";
import { terminate } from "./actions/terminate.js";
import { BuildWaiter, type BuildEvents } from "./build-waiter.js";
import { systemClock, type Clock } from "./clock.js";
import type { EngineContext } from "./context.js";
import type { CloseOptions, Engine } from "./engine.js";
import type { EndpointTargets } from "./endpoint-targets.js";
import { LiveMicrovms } from "./microvm/live-microvms.js";
import { MicrovmEndpoints } from "./microvm-endpoints.js";
import { reconcile } from "./reconcile.js";

/**
 * The engine with real VMs. It queues each recorded intent as an action on
 * the MicroVM's queue (microvm/live-microvms.ts); the actions carry it out:
 *
 *   runMicrovm       ─► actions/run.ts        STARTING ─► restore from the snapshot ─► run hook ─► RUNNING
 *   suspendMicrovm   ─► actions/suspend.ts    SUSPENDING ─► suspend hook ─► save to disk ─► QEMU quits ─► SUSPENDED
 *   resumeMicrovm    ─► actions/resume.ts     RESUMING ─► restore the suspended state ─► resume hook ─► RUNNING
 *   terminateMicrovm ─► actions/terminate.ts  TERMINATING ─► (abort a start) ─► terminate hook ─► stop ─► files removed ─► TERMINATED
 *   VM ends unasked  ─► actions/end.ts        TERMINATED with the reason
 *   timers           ─► policies.ts           idle, suspended period, maximum duration
 *   server start     ─► reconcile.ts          adopt, finish or fail what a previous run left
 */
export interface VmEngineOptions {
  store: Store;
  lifecycle: MicrovmLifecycle;
  driver: VmDriver;
  builder: Pick<ImageBuilder, "start" | "release" | "reconcile" | "close" | "snapshotOf"> & BuildEvents;
  assets: () => Promise<GuestAssets>;
  platform: HostPlatform;
  dataDir: string;
  log: Logger;
  clock?: Clock;
}

export class VmEngine implements Engine {
  readonly targets: EndpointTargets;
  private readonly ctx: EngineContext;
  private readonly builder: VmEngineOptions["builder"];
  private closed = false;

  constructor(options: VmEngineOptions) {
    const clock = options.clock ?? systemClock;
    this.builder = options.builder;
    this.ctx = {
      store: options.store,
      lifecycle: options.lifecycle,
      driver: options.driver,
      builder: options.builder,
      builds: new BuildWaiter(options.store, options.builder, options.platform),
      assets: options.assets,
      platform: options.platform,
      live: new LiveMicrovms(options.dataDir, () => clock.now().getTime(), options.log),
      clock,
      log: options.log,
      actions: this,
      closed: () => this.closed,
    };
    this.targets = new MicrovmEndpoints(this.ctx);
  }

  get description(): string {
    return this.ctx.driver.description;
  }

  runMicrovm(microvm: MicrovmRecord): void {
    this.ctx.live.enqueue(microvm.microvmId, (live) => run(this.ctx, microvm, live));
  }

  suspendMicrovm(microvm: MicrovmRecord): void {
    this.ctx.live.enqueue(microvm.microvmId, (live) => suspend(this.ctx, microvm, live));
  }

  resumeMicrovm(microvm: MicrovmRecord): void {
    this.ctx.live.enqueue(microvm.microvmId, (live) => resume(this.ctx, microvm, live));
  }

  terminateMicrovm(microvm: MicrovmRecord): void {
    // Not queued: a start or resume under way gives up at once, then the termination runs after it.
    this.ctx.live.find(microvm.microvmId)?.abort.abort();
    this.ctx.live.enqueue(microvm.microvmId, (live) => terminate(this.ctx, microvm, live));
  }

  startBuild(build: BuildRecord): void {
    this.builder.start(build);
  }

  versionsDeleted(imageId: string, versions: number[]): void {
    this.builder.release(imageId, versions).catch((error: unknown) =>
      this.ctx.log.error({ err: error, imageId, versions }, "could not free the files of deleted versions"),
    );
  }

  async reconcile(): Promise<void> {
    await this.builder.reconcile();
    await reconcile(this.ctx);
  }

  async close(options: CloseOptions = {}): Promise<void> {
    this.closed = true;
    const all = this.ctx.live.all();
    for (const live of all) {
      live.abort.abort();
      // Deadlines are derived again from the store at the next start (reconcile).
      live.cancelTimers();
    }
    await Promise.allSettled(all.map((live) => live.chain));
    let detached = 0;
    await Promise.allSettled(
      all.map(async (live) => {
        if (!live.vm) return;
        if (options.stopVms) return live.release(2_000);
        detached++;
        return live.detach();
      }),
    );
    if (detached > 0) this.ctx.log.info({ vms: detached }, "VMs left running for the next start to adopt");
    await this.builder.close();
  }
}
