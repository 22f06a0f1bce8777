import type { MicrovmRecord, Owner } from "../store/records.js";
import type { EngineContext } from "./context.js";
import { TargetUnavailable, type EndpointTargets } from "./endpoint-targets.js";

/**
 * The proxy's view of the engine's MicroVMs: where a guest port is reached,
 * waking suspended ones for a request, and traffic for the idle policy.
 */
export class MicrovmEndpoints implements EndpointTargets {
  constructor(private readonly ctx: EngineContext) {}

  findMicrovm(owner: Owner, microvmId: string): Promise<MicrovmRecord | undefined> {
    return this.ctx.store.findMicrovm(owner, microvmId);
  }

  async connect(microvmId: string, guestPort: number): Promise<{ host: string; port: number }> {
    const vm = this.ctx.live.find(microvmId)?.vm;
    if (!vm || vm.state !== "running") throw new TargetUnavailable(microvmId, `MicroVM ${microvmId} has no running VM.`);
    return { host: "127.0.0.1", port: await vm.forward(guestPort) };
  }

  activity(microvmId: string): void {
    const live = this.ctx.live.find(microvmId);
    if (live) live.lastActivity = this.ctx.clock.now().getTime();
  }

  async wake(microvm: MicrovmRecord, timeoutMs: number): Promise<MicrovmRecord | undefined> {
    const { clock, lifecycle, store, log } = this.ctx;
    const deadline = clock.now().getTime() + timeoutMs;
    let current: MicrovmRecord | undefined = microvm;
    for (;;) {
      // Running, or gone for good (the proxy answers that with a 404).
      if (!current || ["RUNNING", "TERMINATING", "TERMINATED"].includes(current.state)) return current;
      if (current.state === "SUSPENDED") {
        // Concurrent requests race here; the state table lets one resume and the others wait.
        const resumed = await lifecycle.apply(current, "resume").catch(() => undefined);
        if (resumed?.moved) {
          log.info({ microvmId: microvm.microvmId }, "auto-resuming for a request");
          this.ctx.actions.resumeMicrovm(resumed.microvm);
        }
      }
      if (clock.now().getTime() > deadline) throw new TargetUnavailable(microvm.microvmId, `still ${current.state} after ${timeoutMs / 1000} s`);
      await clock.sleep(50);
      current = await store.findMicrovm(microvm, microvm.microvmId);
    }
  }
}
