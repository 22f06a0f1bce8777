import { Failure } from "../../domain/failure.js";
import { callHook } from "../../hooks/hooks.js";
import type { MicrovmRecord } from "../../store/records.js";
import type { EngineContext } from "../context.js";
import type { LiveMicrovm } from "../microvm/live-microvm.js";
import { armIdle, armMaximumDuration } from "../policies.js";
import { aborted, bringUp } from "./bring-up.js";
import { endWithReason } from "./end.js";

/**
 * RunMicrovm, carried out. Never a cold boot: the application starts where the
 * build's snapshot left it.
 *
 *   STARTING ─► bring up from the snapshot ─► run hook (runHookPayload) ─► RUNNING (startedAt)
 *            ─► maximum-duration and idle timers
 *   any failure ─► TERMINATED with the reason        a terminate meanwhile ─► it takes over
 */
export async function run(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm): Promise<void> {
  const signal = live.abort.signal;
  const log = ctx.log.child({ microvmId: microvm.microvmId });
  try {
    const vm = await bringUp(ctx, microvm, live, "snapshot");
    log.info({ pid: vm.pid }, "VM restored from its image's snapshot");
    signal.throwIfAborted(); // terminated while restoring: the application is not told to run
    await Promise.race([callHook(vm, live.hooks, "run", microvm.config.runHookPayload ?? ""), aborted(signal)]);
    const startedAt = ctx.clock.now();
    const { moved } = await ctx.lifecycle.apply(microvm, "started", { startedAt, stateReason: null });
    if (!moved) return;
    log.info("MicroVM running");
    armMaximumDuration(ctx, { ...microvm, startedAt }, live);
    armIdle(ctx, microvm, live);
  } catch (error) {
    if (signal.aborted) return; // a terminate (or shutdown) took over; it cleans up
    log.warn({ err: error }, "MicroVM failed to start");
    await endWithReason(ctx, microvm, live, Failure.from(error, "The MicroVM could not start.").message);
  }
}
