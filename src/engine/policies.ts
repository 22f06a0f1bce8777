import type { MicrovmPhase, MicrovmRecord } from "../store/records.js";
import type { EngineContext } from "./context.js";
import type { LiveMicrovm } from "./microvm/live-microvm.js";

/**
 * The timers that decide on their own, each from a deadline the store can
 * derive again after a restart:
 *
 *   idle policy, while RUNNING:   no endpoint traffic for maxIdleDurationSeconds ─► suspend
 *                                 (or terminate, with suspendedDurationSeconds 0)
 *   idle policy, while SUSPENDED: suspendedDurationSeconds after the suspension ─► terminate
 *   maximumDurationInSeconds:     counted from startedAt, in any state ─► terminate
 *
 * Every one acts the same way (`act`): from the state the timer saw, so a
 * MicroVM that a request woke meanwhile is left alone.
 */

/** Arms the idle timer of a RUNNING MicroVM; traffic (LiveMicrovm.lastActivity) pushes the deadline on. */
export function armIdle(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm): void {
  const policy = microvm.config.idlePolicy;
  if (!policy) return;
  live.cancelTimers(["idle"]);
  live.lastActivity = ctx.clock.now().getTime();
  const limit = policy.maxIdleDurationSeconds * 1000;
  const check = () => {
    const idleFor = ctx.clock.now().getTime() - live.lastActivity;
    if (idleFor < limit) {
      live.timers.idle = ctx.clock.after(limit - idleFor, check);
      return;
    }
    const why = `No requests reached the MicroVM for ${policy.maxIdleDurationSeconds} seconds.`;
    if (policy.suspendedDurationSeconds === 0) {
      act(ctx, microvm, ["RUNNING"], "terminate", `${why} Its idle policy ends it then (suspendedDurationSeconds 0).`);
    } else act(ctx, microvm, ["RUNNING"], "suspend", `${why} Suspended by its idle policy.`);
  };
  live.timers.idle = ctx.clock.after(limit, check);
}

/** Arms the end of a SUSPENDED MicroVM's suspended period, counted from its suspension (its updatedAt). */
export function armSuspendedPeriod(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm): void {
  const policy = microvm.config.idlePolicy;
  if (!policy) return;
  live.cancelTimers(["suspendedPeriod"]);
  const deadline = microvm.updatedAt.getTime() + policy.suspendedDurationSeconds * 1000;
  live.timers.suspendedPeriod = ctx.clock.after(deadline - ctx.clock.now().getTime(), () =>
    act(ctx, microvm, ["SUSPENDED"], "terminate", `The MicroVM stayed suspended for ${policy.suspendedDurationSeconds} seconds, as long as its idle policy allows.`),
  );
}

/** Arms maximumDurationInSeconds, counted from startedAt whatever the state since. */
export function armMaximumDuration(ctx: EngineContext, microvm: MicrovmRecord, live: LiveMicrovm): void {
  live.cancelTimers(["maximumDuration"]);
  const deadline = (microvm.startedAt ?? microvm.createdAt).getTime() + microvm.config.maximumDurationInSeconds * 1000;
  live.timers.maximumDuration = ctx.clock.after(deadline - ctx.clock.now().getTime(), () =>
    act(ctx, microvm, undefined, "terminate", `The MicroVM reached its maximum duration of ${microvm.config.maximumDurationInSeconds} seconds.`),
  );
}

/**
 * A timer's decision: the transition, recorded with its reason, only from the
 * states the timer was armed for (any, when undefined); the work follows on
 * the MicroVM's queue.
 */
function act(ctx: EngineContext, microvm: MicrovmRecord, onlyFrom: MicrovmPhase[] | undefined, transition: "suspend" | "terminate", reason: string): void {
  void (async () => {
    const current = await ctx.store.findMicrovm(microvm, microvm.microvmId);
    if (!current || (onlyFrom && !onlyFrom.includes(current.state))) return;
    const { moved, microvm: next } = await ctx.lifecycle.apply(current, transition, { stateReason: reason }, onlyFrom ? { onlyFrom } : {});
    if (!moved) return;
    if (transition === "suspend") ctx.actions.suspendMicrovm(next);
    else ctx.actions.terminateMicrovm(next);
  })().catch((error: unknown) => ctx.log.error({ err: error, microvmId: microvm.microvmId, transition }, "a timer could not act on the MicroVM"));
}
