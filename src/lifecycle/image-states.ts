import type { BuildState, MicrovmImageState, MicrovmImageVersionState, SnapshotBuild } from "../api/generated/types.js";
import { conflict, type ResourceType } from "../domain/service-errors.js";
import type { BuildRecord, ImageRecord, VersionRecord } from "../store/records.js";
import type { Store } from "../store/store.js";
import { allTo, decide, movesFrom, type StateTable } from "./state-table.js";

/**
 * The state machines of images, their versions and their builds, as tables.
 *
 *   build:    PENDING ──start──► IN_PROGRESS ──succeed──► SUCCESSFUL
 *             PENDING, IN_PROGRESS ──fail──► FAILED
 *   version:  PENDING ──start──► IN_PROGRESS ──succeed──► SUCCESSFUL     (once every build settled)
 *             PENDING, IN_PROGRESS ──fail──► FAILED                       (a build failed)
 *             any ──delete──► DELETED
 *   image:    CREATING ──built──► CREATED        UPDATING ──built──► UPDATED
 *             CREATING ──failed──► CREATE_FAILED  UPDATING ──failed──► UPDATE_FAILED
 *             any but deleted ──update──► UPDATING      any ──delete──► DELETED
 *
 * Each change is applied by compare-and-set on the state it was decided from.
 */
export type BuildTransition = "start" | "succeed" | "fail";
export type VersionTransition = "start" | "succeed" | "fail" | "delete";
export type ImageTransition = "update" | "built" | "failed" | "delete";

export const buildStates: StateTable<BuildTransition, BuildState> = {
  start: allTo(["PENDING"], "IN_PROGRESS"),
  succeed: allTo(["IN_PROGRESS"], "SUCCESSFUL"),
  fail: allTo(["PENDING", "IN_PROGRESS"], "FAILED"),
};

export const versionStates: StateTable<VersionTransition, MicrovmImageVersionState> = {
  start: allTo(["PENDING"], "IN_PROGRESS", ["IN_PROGRESS"]),
  succeed: allTo(["PENDING", "IN_PROGRESS"], "SUCCESSFUL"),
  fail: allTo(["PENDING", "IN_PROGRESS"], "FAILED"),
  delete: allTo(["PENDING", "IN_PROGRESS", "SUCCESSFUL", "FAILED", "DELETING", "DELETE_FAILED"], "DELETED", ["DELETED"]),
};

const LIVE_IMAGE: MicrovmImageState[] = ["CREATING", "CREATED", "CREATE_FAILED", "UPDATING", "UPDATED", "UPDATE_FAILED", "DELETE_FAILED"];

export const imageStates: StateTable<ImageTransition, MicrovmImageState> = {
  update: allTo(LIVE_IMAGE, "UPDATING"),
  built: { moves: { CREATING: "CREATED", UPDATING: "UPDATED" } },
  failed: { moves: { CREATING: "CREATE_FAILED", UPDATING: "UPDATE_FAILED" } },
  delete: allTo([...LIVE_IMAGE, "DELETING"], "DELETED", ["DELETED"]),
};

/**
 * How a transition went: `moved`; `done` (already in effect: nothing to do);
 * `forbidden`, which the API reports as a ConflictException naming the state
 * and background work takes as "someone else decided first".
 */
export type Outcome = "moved" | "done" | "forbidden";

/** Applies image, version and build transitions within `store` (a transaction or not). */
export class ImageLifecycle {
  constructor(private readonly store: Store) {}

  async build(
    build: BuildRecord,
    transition: BuildTransition,
    patch: { stateReason?: string | null; snapshotBuild?: SnapshotBuild; updatedAt: Date },
  ): Promise<Outcome> {
    return this.applyLoop(buildStates, transition, build.buildState, async (state, to) => this.store.transitionBuild(build.buildId, [state], to, patch),
      async () => (await this.store.findBuild(build.imageId, build.version, build.buildId))?.buildState);
  }

  async version(version: VersionRecord, transition: VersionTransition, patch: { stateReason?: string | null; updatedAt: Date }): Promise<Outcome> {
    return this.applyLoop(versionStates, transition, version.state, (state, to) => this.store.transitionVersion(version.imageId, version.version, [state], to, patch),
      async () => (await this.store.findVersion(version.imageId, version.version))?.state);
  }

  async image(image: ImageRecord, transition: ImageTransition, patch: { deletedAt?: Date; updatedAt: Date }): Promise<Outcome> {
    return this.applyLoop(imageStates, transition, image.state, (state, to) => this.store.transitionImage(image.imageId, [state], to, patch),
      async () => (await this.store.findImageById(image.imageId))?.state);
  }

  /**
   * Decides from the state seen, compare-and-sets, and decides again from the
   * stored state when the record was stale or another writer came first: a
   * transition is forbidden only by the state the store holds.
   */
  private async applyLoop<T extends string, S extends string>(
    table: StateTable<T, S>,
    transition: T,
    seen: S,
    set: (from: S, to: S) => Promise<boolean>,
    reread: () => Promise<S | undefined>,
  ): Promise<Outcome> {
    let state: S | undefined = seen;
    let stored = false;
    while (state !== undefined) {
      const decision = decide(table, transition, state);
      if (decision.kind === "done") return "done";
      if (decision.kind === "move" && (await set(state, decision.to))) return "moved";
      if (decision.kind === "forbidden" && stored) return "forbidden";
      state = await reread();
      stored = true;
    }
    return "forbidden";
  }
}

/** A ConflictException for a transition the table forbids, naming the state and where it is allowed. */
export function forbidden<T extends string, S extends string>(
  table: StateTable<T, S>,
  transition: T,
  resource: { type: ResourceType; id: string; what: string; state: S },
  action: string,
): never {
  throw conflict(
    resource.type,
    resource.id,
    `${resource.what} is ${resource.state}; ${action} is not allowed in that state (allowed in: ${movesFrom(table, transition).join(", ")}).`,
  );
}
