import type { MicrovmRecord } from "../store/records.js";
import { onUnexpectedExit } from "./actions/end.js";
import type { EngineContext } from "./context.js";
import { armIdle, armMaximumDuration, armSuspendedPeriod } from "./policies.js";

/**
 * Settles what a previous run of the server left, from the recorded states:
 *
 *   RUNNING, SUSPENDING   its VM outlived the server ─► adopted (a SUSPENDING one suspends again)
 *                         its VM is gone ─► TERMINATED "did not survive"
 *   SUSPENDING, SUSPENDED complete suspended.state ─► SUSPENDED, timers armed
 *   TERMINATING           ─► terminated again
 *   STARTING              ─► started again from the snapshot
 *   RESUMING              its VM runs already ─► adopted, RUNNING │ else ─► resumed again
 *
 * Any QEMU left that is not adopted is stopped first: no VM is leaked. Deadlines
 * are armed again from the recorded startedAt and updatedAt.
 */
export async function reconcile(ctx: EngineContext): Promise<void> {
  const { store, lifecycle, live } = ctx;
  // Remembered, not read back from `live`: an adopted SUSPENDING VM may already be suspended (and released) by the next loop.
  const adopted = new Set<string>();
  for (const microvm of await store.microvmsInState(["RUNNING", "SUSPENDING"])) {
    if (await adopt(ctx, microvm)) adopted.add(microvm.microvmId);
  }
  for (const microvm of await store.microvmsInState(["RUNNING", "SUSPENDING", "SUSPENDED"])) {
    if (adopted.has(microvm.microvmId)) continue;
    await killLeftover(ctx, microvm);
    const files = live.files(microvm.microvmId);
    if (microvm.state !== "RUNNING" && (await files.hasSuspendedState())) {
      const { microvm: suspended } = await lifecycle.apply(microvm, "suspended").catch(() => ({ microvm }));
      await files.removeRuntime();
      armMaximumDuration(ctx, suspended, live.of(microvm.microvmId));
      armSuspendedPeriod(ctx, suspended, live.of(microvm.microvmId));
      continue;
    }
    await files.removeAll();
    await lifecycle.apply(microvm, "failed", { stateReason: "The service restarted and the MicroVM's VM did not survive it." });
  }
  for (const microvm of await store.microvmsInState(["TERMINATING"])) {
    await killLeftover(ctx, microvm);
    ctx.actions.terminateMicrovm(microvm);
  }
  for (const microvm of await store.microvmsInState(["STARTING"])) {
    await killLeftover(ctx, microvm);
    ctx.actions.runMicrovm(microvm);
  }
  for (const microvm of await store.microvmsInState(["RESUMING"])) {
    // Cut short while resuming. A VM that already runs again has moved on from the state file: keep it.
    if (await adopt(ctx, microvm)) {
      await lifecycle.apply(microvm, "resumed", { stateReason: null });
      await live.files(microvm.microvmId).removeSuspendedState();
      continue;
    }
    await killLeftover(ctx, microvm); // a QEMU that lives but could not be adopted would hold the run directory
    armMaximumDuration(ctx, microvm, live.of(microvm.microvmId));
    ctx.actions.resumeMicrovm(microvm);
  }
}

/**
 * Takes over the VM of a MicroVM a previous run of the server left running:
 * output, exit, deadlines and idle timer go on from here; a SUSPENDING one is
 * suspended again (its suspension was cut short).
 */
async function adopt(ctx: EngineContext, microvm: MicrovmRecord): Promise<boolean> {
  const files = ctx.live.files(microvm.microvmId);
  const vm = await ctx.driver.adopt(microvm.microvmId, files.runDir);
  if (!vm) return false;
  const version = await ctx.store.findVersion(microvm.imageId, microvm.imageVersion);
  const live = ctx.live.of(microvm.microvmId);
  live.attach(vm, version?.config.hooks, onUnexpectedExit(ctx, microvm));
  armMaximumDuration(ctx, microvm, live);
  if (microvm.state === "SUSPENDING") ctx.actions.suspendMicrovm(microvm);
  else armIdle(ctx, microvm, live);
  return true;
}

/** A QEMU a previous run of the server left behind and that could not be adopted: it is stopped. */
async function killLeftover(ctx: EngineContext, microvm: MicrovmRecord): Promise<void> {
  if (await ctx.driver.killLeftover(ctx.live.files(microvm.microvmId).runDir)) {
    ctx.log.warn({ microvmId: microvm.microvmId }, "stopped a VM left by a previous run of the service");
  }
}
