import { rename } from "node:fs/promises";
import { Failure } from "../../domain/failure.js";
import type { MicrovmRecord } from "../../store/records.js";
import type { EngineContext } from "../context.js";
import type { LiveMicrovm } from "../microvm/live-microvm.js";
import { armSuspendedPeriod } from "../policies.js";
import { callBestEffortHook } from "./hooks.js";
import { endWithReason } from "./end.js";

/**
 * SuspendMicrovm (or the idle policy), carried out: to disk. A suspended
 * MicroVM holds no memory and no process. Undone by `resume.ts`.
 *
 *   SUSPENDING ─► suspend hook ─► memory and devices to suspended.state.partial ─► rename
 *              ─► QEMU quits (disk overlay kept) ─► SUSPENDED ─► suspended-period timer
 *   save fails ─► TERMINATED with the reason (a guest paused mid-save cannot serve again)
 */
export async function suspend(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm): Promise<void> {
  const current = await ctx.store.findMicrovm(microvm, microvm.microvmId);
  if (current?.state !== "SUSPENDING") return; // terminated meanwhile
  const vm = live.vm;
  if (!vm) throw new Error(`MicroVM ${microvm.microvmId} has no VM to suspend`);
  await callBestEffortHook(ctx, microvm, live, "suspend");
  const files = live.files;
  try {
    // Written whole, then renamed: a crash mid-way never leaves a state file that looks complete.
    await vm.snapshot(files.partialSuspendedState, { withMemory: true });
    await rename(files.partialSuspendedState, files.suspendedState);
  } catch (error) {
    ctx.log.warn({ err: error, microvmId: microvm.microvmId }, "MicroVM failed to suspend");
    await endWithReason(ctx, current, live, Failure.from(error, "The MicroVM could not be suspended.").message);
    return;
  }
  // The idle timer stops; the maximum duration keeps counting while suspended.
  live.cancelTimers(["idle"]);
  await live.release();
  // A terminate recorded meanwhile wins: it runs next on the queue and finds no VM.
  const { microvm: suspended, moved } = await ctx.lifecycle.apply(current, "suspended", {}, { onlyFrom: ["SUSPENDING"] });
  if (!moved) return;
  armSuspendedPeriod(ctx, suspended, live);
  ctx.log.info({ microvmId: microvm.microvmId }, "MicroVM suspended to disk");
}
