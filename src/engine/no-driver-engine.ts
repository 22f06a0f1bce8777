import type { Logger } from "pino";
import type { BuildRecord, MicrovmRecord } from "../store/records.js";
import type { Store } from "../store/store.js";
import { TargetUnavailable, type EndpointTargets } from "./endpoint-targets.js";
import type { Engine } from "./engine.js";
import type { MicrovmLifecycle } from "../lifecycle/microvm-states.js";

/**
 * The engine of a server with no VM driver. It does not pretend: a MicroVM it
 * cannot start stays PENDING and a build stays PENDING, for a driver to pick up
 * later through `reconcile`. Terminating needs no VM (nothing runs), so that one
 * completes.
 */
export class NoDriverEngine implements Engine {
  readonly description = "no VM driver: MicroVMs and builds stay PENDING";

  constructor(
    private readonly store: Store,
    private readonly lifecycle: MicrovmLifecycle,
    private readonly log: Logger,
  ) {}

  runMicrovm(microvm: MicrovmRecord): void {
    this.log.info({ microvmId: microvm.microvmId }, "no VM driver: MicroVM stays PENDING");
  }

  suspendMicrovm(microvm: MicrovmRecord): void {
    // Unreachable while nothing can reach RUNNING; kept honest all the same.
    this.log.warn({ microvmId: microvm.microvmId }, "no VM driver: cannot suspend");
  }

  resumeMicrovm(microvm: MicrovmRecord): void {
    this.log.warn({ microvmId: microvm.microvmId }, "no VM driver: MicroVM stays PENDING");
  }

  terminateMicrovm(microvm: MicrovmRecord): void {
    this.finishTermination(microvm).catch((error: unknown) =>
      this.log.error({ err: error, microvmId: microvm.microvmId }, "could not record termination"),
    );
  }

  startBuild(build: BuildRecord): void {
    this.log.info({ buildId: build.buildId }, "no VM driver: build stays PENDING");
  }

  readonly targets: EndpointTargets = {
    findMicrovm: (owner, microvmId) => this.store.findMicrovm(owner, microvmId),
    connect: async (microvmId) => {
      throw new TargetUnavailable(microvmId, `MicroVM ${microvmId} has no VM: this server runs without a VM driver.`);
    },
    wake: async (microvm) => {
      throw new TargetUnavailable(microvm.microvmId, `MicroVM ${microvm.microvmId} has no VM: this server runs without a VM driver.`);
    },
    activity: () => {},
  };

  versionsDeleted(): void {} // no builds, no files

  async reconcile(): Promise<void> {
    for (const microvm of await this.store.microvmsInState(["TERMINATING"])) await this.finishTermination(microvm);
  }

  async close(): Promise<void> {}

  private async finishTermination(microvm: MicrovmRecord): Promise<void> {
    await this.lifecycle.apply(microvm, "terminated");
  }
}
