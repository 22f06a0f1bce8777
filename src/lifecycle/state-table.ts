/**
 * A state machine as data: for each transition, the states it moves from and
 * where each goes, and the states in which it is already done (so repeating it
 * succeeds without change). MicroVMs, images, versions and builds each have one
 * table (`microvm-states.ts`, `image-states.ts`); every change of state is
 * decided by its table and applied by a compare-and-set on the state it was
 * decided from, so two writers never both move one resource.
 */
export interface Rule<S extends string> {
  /** From-state → to-state. */
  moves: Partial<Record<S, S>>;
  /** States in which the transition is already done: it succeeds and changes nothing. */
  doneIn?: readonly S[];
}

export type StateTable<T extends string, S extends string> = Record<T, Rule<S>>;

/** A rule moving every state of `from` to `to`. */
export function allTo<S extends string>(from: readonly S[], to: S, doneIn?: readonly S[]): Rule<S> {
  return { moves: Object.fromEntries(from.map((s) => [s, to])) as Partial<Record<S, S>>, ...(doneIn ? { doneIn } : {}) };
}

export type Decision<S extends string> = { kind: "move"; to: S } | { kind: "done" } | { kind: "forbidden" };

/** What `transition` does to a resource in `state`. Pure: the table decides, nothing else. */
export function decide<T extends string, S extends string>(table: StateTable<T, S>, transition: T, state: S): Decision<S> {
  const rule = table[transition];
  if (rule.doneIn?.includes(state)) return { kind: "done" };
  const to = rule.moves[state];
  return to === undefined ? { kind: "forbidden" } : { kind: "move", to };
}

/** The states `transition` moves from. */
export function movesFrom<T extends string, S extends string>(table: StateTable<T, S>, transition: T): S[] {
  return Object.keys(table[transition].moves) as S[];
}
