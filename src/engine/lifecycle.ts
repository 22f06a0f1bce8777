import type { MicrovmState } from "../api/generated/types.js";
import { conflict, notFound } from "../api/errors.js";
import type { MicrovmRecord } from "../store/records.js";
import type { Store } from "../store/store.js";

/**
 * The MicroVM state machine, as one table.
 *
 *   PENDING ──started──► RUNNING ──suspend──► SUSPENDING ──suspended──► SUSPENDED
 *      ▲                                                                    │
 *      └──────────────────────────────resume────────────────────────────────┘
 *   any state but TERMINATED ──terminate──► TERMINATING ──terminated──► TERMINATED
 *   any state but TERMINATED ──failed──► TERMINATED   (a VM that died, a build that failed)
 *
 * Actions come from the API (suspend, resume, terminate); events come from the
 * engine as work completes. `idempotentIn` lists states where an action is already
 * done and succeeds without change (TerminateMicrovm is idempotent).
 */
export type MicrovmTransition = "suspend" | "resume" | "terminate" | "started" | "suspended" | "terminated" | "failed";

interface Rule {
  from: readonly MicrovmState[];
  to: MicrovmState;
  idempotentIn?: readonly MicrovmState[];
}

const LIVE: readonly MicrovmState[] = ["PENDING", "RUNNING", "SUSPENDING", "SUSPENDED", "TERMINATING"];

export const transitions: Record<MicrovmTransition, Rule> = {
  suspend: { from: ["RUNNING"], to: "SUSPENDING" },
  resume: { from: ["SUSPENDED"], to: "PENDING" },
  terminate: {
    from: ["PENDING", "RUNNING", "SUSPENDING", "SUSPENDED"],
    to: "TERMINATING",
    idempotentIn: ["TERMINATING", "TERMINATED"],
  },
  started: { from: ["PENDING"], to: "RUNNING" },
  suspended: { from: ["SUSPENDING"], to: "SUSPENDED" },
  terminated: { from: ["TERMINATING"], to: "TERMINATED" },
  failed: { from: LIVE, to: "TERMINATED" },
};

export type Decision = { kind: "move"; to: MicrovmState } | { kind: "done" } | { kind: "forbidden" };

/** What `transition` does to a MicroVM in `state`. Pure: the table decides, nothing else. */
export function decide(transition: MicrovmTransition, state: MicrovmState): Decision {
  const rule = transitions[transition];
  if (rule.idempotentIn?.includes(state)) return { kind: "done" };
  if (rule.from.includes(state)) return { kind: "move", to: rule.to };
  return { kind: "forbidden" };
}

const actionNames: Partial<Record<MicrovmTransition, string>> = {
  suspend: "SuspendMicrovm",
  resume: "ResumeMicrovm",
  terminate: "TerminateMicrovm",
};

export type TransitionPatch = Partial<Pick<MicrovmRecord, "stateReason" | "startedAt" | "terminatedAt">>;

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
   * moved (false when the action was already done). A forbidden transition is a
   * ConflictException naming the current state.
   */
  async apply(
    microvm: MicrovmRecord,
    transition: MicrovmTransition,
    patch: TransitionPatch = {},
    options: { onlyFrom?: readonly MicrovmState[] } = {},
  ): Promise<{ microvm: MicrovmRecord; moved: boolean }> {
    let current = microvm;
    for (;;) {
      // A timer's decision holds only for the state it saw: had a request woken the MicroVM meanwhile, the timer is moot.
      if (options.onlyFrom && !options.onlyFrom.includes(current.state)) return { microvm: current, moved: false };
      const decision = decide(transition, current.state);
      if (decision.kind === "done") return { microvm: current, moved: false };
      if (decision.kind === "forbidden") {
        const action = actionNames[transition] ?? `the '${transition}' transition`;
        throw conflict(
          "Microvm",
          current.microvmId,
          `MicroVM ${current.microvmId} is ${current.state}; ${action} is not allowed in that state ` +
            `(allowed in: ${transitions[transition].from.join(", ")}).`,
        );
      }
      const updatedAt = this.now();
      const fields: TransitionPatch = { ...patch };
      if (decision.to === "TERMINATED" && !fields.terminatedAt) fields.terminatedAt = updatedAt;
      if (await this.store.transitionMicrovm(current.microvmId, [current.state], decision.to, { ...fields, updatedAt })) {
        return { microvm: { ...current, ...fields, state: decision.to, updatedAt }, moved: true };
      }
      const reread = await this.store.findMicrovm(current, current.microvmId);
      if (!reread) throw notFound("Microvm", current.microvmId);
      current = reread;
    }
  }
}
