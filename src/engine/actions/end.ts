import type { VmExit } from "../../drivers/driver.js";
import type { MicrovmRecord } from "../../store/records.js";
import type { EngineContext } from "../context.js";
import type { LiveMicrovm } from "../microvm/live-microvm.js";

/**
 * Ends a MicroVM that cannot go on (its start, resume or suspension failed,
 * or its VM ended on its own): the VM is stopped, its files removed, and it
 * becomes TERMINATED with `reason`, the words a client reads in stateReason.
 */
export async function endWithReason(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm, reason: string): Promise<void> {
  live.cancelTimers();
  try {
    await live.release();
    await live.files.removeAll();
  } finally {
    const current = await ctx.store.findMicrovm(microvm, microvm.microvmId);
    if (current && current.state !== "TERMINATED") await ctx.lifecycle.apply(current, "failed", { stateReason: reason });
    ctx.live.forget(microvm.microvmId);
  }
}

/** The VM ended without the engine asking (the application exited, QEMU died): the MicroVM ends with why. */
export async function vmEnded(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm, reason: string): Promise<void> {
  if (ctx.closed()) return;
  ctx.log.info({ microvmId: microvm.microvmId, reason }, "VM ended");
  await endWithReason(ctx, microvm, live, reason);
}

/** What a MicroVM's VM does when it ends unasked: the MicroVM ends too, as its queue's next step. */
export function onUnexpectedExit(ctx: EngineContext, microvm: MicrovmRecord): (exit: VmExit) => void {
  return (exit) => {
    if (!ctx.closed()) ctx.live.enqueue(microvm.microvmId, (live) => vmEnded(ctx, microvm, live, exit.reason));
  };
}
