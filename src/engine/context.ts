import type { Logger } from "pino";
import type { GuestAssets } from "../agent/assets.js";
import type { ImageBuilder } from "../builder/image-builder.js";
import type { VmDriver } from "../drivers/driver.js";
import type { MicrovmLifecycle } from "../lifecycle/microvm-states.js";
import type { HostPlatform } from "../platform.js";
import type { MicrovmRecord } from "../store/records.js";
import type { Store } from "../store/store.js";
import type { BuildWaiter } from "./build-waiter.js";
import type { Clock } from "./clock.js";
import type { LiveMicrovms } from "./microvm/live-microvms.js";

/** What the engine's actions, policies and reconcile share. */
export interface EngineContext {
  store: Store;
  lifecycle: MicrovmLifecycle;
  driver: VmDriver;
  builder: Pick<ImageBuilder, "snapshotOf">;
  builds: BuildWaiter;
  assets: () => Promise<GuestAssets>;
  platform: HostPlatform;
  live: LiveMicrovms;
  clock: Clock;
  log: Logger;
  /** Queues the follow-up of a decision (a timer's, a VM's end) on the MicroVM. */
  actions: MicrovmActions;
  /** Set once the server shuts down: VMs that end then are not failures. */
  closed(): boolean;
}

export interface MicrovmActions {
  runMicrovm(microvm: MicrovmRecord): void;
  suspendMicrovm(microvm: MicrovmRecord): void;
  terminateMicrovm(microvm: MicrovmRecord): void;
  resumeMicrovm(microvm: MicrovmRecord): void;
}
