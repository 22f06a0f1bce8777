import { callHook } from "../../hooks/hooks.js";
import type { MicrovmRecord } from "../../store/records.js";
import type { EngineContext } from "../context.js";
import type { LiveMicrovm } from "../microvm/live-microvm.js";

/**
 * Calls a hook whose failure does not change what happens next (the
 * suspension, resumption or termination goes on); its timeout bounds the wait.
 */
export async function callBestEffortHook(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm, name: "suspend" | "resume" | "terminate"): Promise<void> {
  const vm = live.vm;
  if (!vm) return;
  await callHook(vm, live.hooks, name).catch((error: unknown) => ctx.log.warn({ err: error, microvmId: microvm.microvmId }, `the ${name} hook failed`));
}
