import { Failure } from "../../domain/failure.js";
import type { MicrovmRecord } from "../../store/records.js";
import type { EngineContext } from "../context.js";
import type { LiveMicrovm } from "../microvm/live-microvm.js";
import { armIdle } from "../policies.js";
import { bringUp } from "./bring-up.js";
import { endWithReason } from "./end.js";
import { callBestEffortHook } from "./hooks.js";

/**
 * ResumeMicrovm (or a request with autoResumeEnabled), carried out: undoes `suspend.ts`.
 *
 *   RESUMING ─► bring up from suspended.state on the disk overlay it had ─► resume hook
 *            ─► RUNNING (stateReason cleared) ─► suspended.state removed ─► idle timer
 *   any failure ─► TERMINATED with the reason        a terminate meanwhile ─► it takes over
 */
export async function resume(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm): Promise<void> {
  const current = await ctx.store.findMicrovm(microvm, microvm.microvmId);
  if (current?.state !== "RESUMING") return;
  try {
    const vm = await bringUp(ctx, current, live, "suspension");
    live.abort.signal.throwIfAborted();
    await callBestEffortHook(ctx, current, live, "resume");
    // startedAt stays: maximumDurationInSeconds counts from the first start, whatever the state since.
    await ctx.lifecycle.apply(current, "resumed", { stateReason: null });
    // Only once RUNNING is recorded: until then a restart must still find the state to resume from.
    await live.files.removeSuspendedState();
    live.cancelTimers(["suspendedPeriod"]);
    armIdle(ctx, current, live);
    ctx.log.info({ microvmId: microvm.microvmId, pid: vm.pid }, "MicroVM resumed");
  } catch (error) {
    if (live.abort.signal.aborted) return; // a terminate (or shutdown) took over; it cleans up
    ctx.log.warn({ err: error, microvmId: microvm.microvmId }, "MicroVM failed to resume");
    await endWithReason(ctx, current, live, Failure.from(error, "The MicroVM could not resume.").message);
  }
}
