import type { MicrovmState } from "../api/generated/types.js";
import { conflict, notFound } from "../domain/service-errors.js";
import type { MicrovmPhase, MicrovmRecord } from "../store/records.js";
import type { Store } from "../store/store.js";
import { allTo, decide, movesFrom, type StateTable } from "./state-table.js";

/**
 * The MicroVM state machine, as one table.
 *
 *   STARTING ──started──► RUNNING ──suspend──► SUSPENDING ──suspended──► SUSPENDED
 *                            ▲                                               │
 *                            └──resumed── RESUMING ◄─────────resume──────────┘
 *   any live state ──terminate──► TERMINATING ──terminated──► TERMINATED
 *   any live state ──failed──► TERMINATED   (a VM that died, a start that failed)
 *
 * STARTING and RESUMING are both PENDING in the API; kept apart here, so that
 * the engine (and reconcile after a crash) knows which work a PENDING MicroVM
 * waits for without looking at files. Actions come from the API (suspend,
 * resume, terminate); events come from the engine as work completes.
 */
export type MicrovmTransition = "suspend" | "resume" | "terminate" | "started" | "resumed" | "suspended" | "terminated" | "failed";

export const LIVE_PHASES: readonly MicrovmPhase[] = ["STARTING", "RESUMING", "RUNNING", "SUSPENDING", "SUSPENDED", "TERMINATING"];

export const microvmStates: StateTable<MicrovmTransition, MicrovmPhase> = {
  suspend: allTo(["RUNNING"], "SUSPENDING"),
  resume: allTo(["SUSPENDED"], "RESUMING"),
  terminate: allTo(["STARTING", "RESUMING", "RUNNING", "SUSPENDING", "SUSPENDED"], "TERMINATING", ["TERMINATING", "TERMINATED"]),
  started: allTo(["STARTING"], "RUNNING"),
  resumed: allTo(["RESUMING"], "RUNNING"),
  suspended: allTo(["SUSPENDING"], "SUSPENDED"),
  terminated: allTo(["TERMINATING"], "TERMINATED"),
  failed: allTo(LIVE_PHASES, "TERMINATED"),
};

/** How a phase shows in the API: starting and resuming are both PENDING. */
export function microvmState(phase: MicrovmPhase): MicrovmState {
  return phase === "STARTING" || phase === "RESUMING" ? "PENDING" : phase;
}

const actionNames: Partial<Record<MicrovmTransition, string>> = {
  suspend: "SuspendMicrovm",
  resume: "ResumeMicrovm",
  terminate: "TerminateMicrovm",
};

/** Fields a transition may set; `stateReason: null` clears the reason a previous state left. */
export type TransitionPatch = { stateReason?: string | null; startedAt?: Date; terminatedAt?: Date };

/**
 * Applies transitions to stored MicroVMs. Each is a compare-and-set on the state it
 * was decided from, retried on a lost race, so concurrent calls on one MicroVM are
 * serialized by the store and never interleave.
 */
export class MicrovmLifecycle {
  constructor(
    private readonly store: Store,
    private readonly now: () => Date = () => new Date(),
  ) {}

  /**
   * Applies `transition` to the MicroVM. Returns the record after it, and whether it
   * moved (false when the action was already done, or when `onlyFrom` no longer
   * holds). A forbidden transition is a ConflictException naming the current state.
   */
  async apply(
    microvm: MicrovmRecord,
    transition: MicrovmTransition,
    patch: TransitionPatch = {},
    options: { onlyFrom?: readonly MicrovmPhase[] } = {},
  ): Promise<{ microvm: MicrovmRecord; moved: boolean }> {
    let current = microvm;
    for (;;) {
      // A timer's decision holds only for the state it saw: had a request woken the MicroVM meanwhile, the timer is moot.
      if (options.onlyFrom && !options.onlyFrom.includes(current.state)) return { microvm: current, moved: false };
      const decision = decide(microvmStates, transition, current.state);
      if (decision.kind === "done") return { microvm: current, moved: false };
      if (decision.kind === "forbidden") {
        const action = actionNames[transition] ?? `the '${transition}' transition`;
        const allowed = [...new Set(movesFrom(microvmStates, transition).map(microvmState))];
        throw conflict(
          "Microvm",
          current.microvmId,
          `MicroVM ${current.microvmId} is ${microvmState(current.state)}; ${action} is not allowed in that state ` +
            `(allowed in: ${allowed.join(", ")}).`,
        );
      }
      const updatedAt = this.now();
      const fields: TransitionPatch = { ...patch };
      if (decision.to === "TERMINATED" && !fields.terminatedAt) fields.terminatedAt = updatedAt;
      if (await this.store.transitionMicrovm(current.microvmId, [current.state], decision.to, { ...fields, updatedAt })) {
        const after: MicrovmRecord = { ...current, state: decision.to, updatedAt };
        if (fields.stateReason === null) delete after.stateReason;
        else if (fields.stateReason !== undefined) after.stateReason = fields.stateReason;
        if (fields.startedAt) after.startedAt = fields.startedAt;
        if (fields.terminatedAt) after.terminatedAt = fields.terminatedAt;
        return { microvm: after, moved: true };
      }
      const reread = await this.store.findMicrovm(current, current.microvmId);
      if (!reread) throw notFound("Microvm", current.microvmId);
      current = reread;
    }
  }
}
