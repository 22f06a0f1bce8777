import type { MicrovmRecord } from "../../store/records.js";
import type { EngineContext } from "../context.js";
import type { LiveMicrovm } from "../microvm/live-microvm.js";
import { callBestEffortHook } from "./hooks.js";

/**
 * TerminateMicrovm (or a timer), carried out. Queued after an abort of any
 * start or resume under way, so it runs once that has given up.
 *
 *   TERMINATING ─► terminate hook (when a VM runs) ─► stop the VM ─► remove its files ─► TERMINATED
 */
export async function terminate(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm): Promise<void> {
  // A suspended MicroVM has no VM to call; it is terminated as it is.
  if (live.vm) await callBestEffortHook(ctx, microvm, live, "terminate");
  live.cancelTimers();
  await live.release();
  await live.files.removeAll();
  const current = (await ctx.store.findMicrovm(microvm, microvm.microvmId)) ?? microvm;
  // Its VM may have ended on its own meanwhile, which already made it TERMINATED.
  if (current.state === "TERMINATING") await ctx.lifecycle.apply(current, "terminated");
  ctx.live.forget(microvm.microvmId);
}
