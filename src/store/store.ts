import type { BuildState, MicrovmImageState, MicrovmImageVersionState } from "../api/generated/types.js";
import type {
  BuildRecord,
  ClientTokenRecord,
  ImageRecord,
  ManagedImageVersionRecord,
  MicrovmPhase,
  MicrovmRecord,
  Owner,
  Page,
  VersionRecord,
} from "./records.js";

/**
 * All state of the service. One interface, two backends (SQLite by default,
 * PostgreSQL when MICROVMS_DATABASE_URL is set), one test suite run against both.
 * Lists are cursor-paginated: `after` is the cursor of the last item of the
 * previous page, as returned by the matching `*Cursor` function.
 *
 * States change only through the `transition*` methods: a compare-and-set on the
 * state the caller decided from (see src/lifecycle/). In a patch, `undefined`
 * leaves a field as it is and `null` clears it.
 */
export interface Store {
  /** Runs `work` against a store bound to one transaction. */
  transaction<T>(work: (store: Store) => Promise<T>): Promise<T>;
  close(): Promise<void>;

  /** A server-wide value (a signing key, say), created once and then kept. */
  setting(key: string, create: () => string): Promise<string>;

  /** Inserts a new image; false when the owner already has a live image of that name. */
  insertImage(image: ImageRecord): Promise<boolean>;
  findImage(owner: Owner, name: string): Promise<ImageRecord | undefined>;
  /** An image by its internal id, deleted or not (for the engine and the builder). */
  findImageById(imageId: string): Promise<ImageRecord | undefined>;
  /** The most recently deleted image of that name, to answer repeated deletes. */
  findDeletedImage(owner: Owner, name: string): Promise<ImageRecord | undefined>;
  listImages(owner: Owner, query: { nameFilter?: string; after?: Cursor; limit: number }): Promise<Page<ImageRecord>>;
  updateImage(imageId: string, patch: { tags: Record<string, string>; updatedAt: Date }): Promise<void>;
  /** Moves an image to `to` only if it is in one of `from`; whether it moved. */
  transitionImage(imageId: string, from: MicrovmImageState[], to: MicrovmImageState, patch: { deletedAt?: Date; updatedAt: Date }): Promise<boolean>;
  /** Reserves the image's next version number ("1", "2", ...) atomically. */
  allocateVersion(imageId: string): Promise<number>;

  insertVersion(version: VersionRecord): Promise<void>;
  /** Any version, deleted ones included (their state says DELETED). */
  findVersion(imageId: string, version: number): Promise<VersionRecord | undefined>;
  /** Versions that are not deleted, oldest first. */
  listVersions(imageId: string, query: { after?: Cursor; limit: number }): Promise<Page<VersionRecord>>;
  /** The image's highest ACTIVE version in one of `states` (a RunMicrovm without imageVersion, before any version succeeded). */
  newestVersionInStates(imageId: string, states: VersionRecord["state"][]): Promise<VersionRecord | undefined>;
  updateVersion(imageId: string, version: number, patch: Pick<VersionRecord, "status"> & { updatedAt: Date }): Promise<void>;
  /** Moves a version to `to` only if it is in one of `from`; whether it moved. */
  transitionVersion(
    imageId: string,
    version: number,
    from: MicrovmImageVersionState[],
    to: MicrovmImageVersionState,
    patch: { stateReason?: string | null; updatedAt: Date },
  ): Promise<boolean>;

  insertBuild(build: BuildRecord): Promise<void>;
  findBuild(imageId: string, version: number, buildId: string): Promise<BuildRecord | undefined>;
  listBuilds(
    imageId: string,
    version: number,
    query: Partial<Pick<BuildRecord, "architecture" | "chipset" | "chipsetGeneration">> & { after?: Cursor; limit: number },
  ): Promise<Page<BuildRecord>>;
  /** Builds in the given states, across all owners (for the engine and reconciliation). */
  buildsInState(states: BuildRecord["buildState"][]): Promise<BuildRecord[]>;
  /** The image's first build in `state`, of one version or of any. */
  findBuildInState(imageId: string, version: number | undefined, state: BuildRecord["buildState"]): Promise<BuildRecord | undefined>;
  /** Moves a build to `to` only if it is in one of `from`; whether it moved. */
  transitionBuild(
    buildId: string,
    from: BuildState[],
    to: BuildState,
    patch: { stateReason?: string | null; snapshotBuild?: BuildRecord["snapshotBuild"]; updatedAt: Date },
  ): Promise<boolean>;

  insertMicrovm(microvm: MicrovmRecord): Promise<void>;
  findMicrovm(owner: Owner, microvmId: string): Promise<MicrovmRecord | undefined>;
  listMicrovms(
    owner: Owner,
    query: { imageId?: string; imageVersion?: number; after?: Cursor; limit: number },
  ): Promise<Page<MicrovmRecord>>;
  /** MicroVMs in the given states, across all owners (for the engine and reconciliation). */
  microvmsInState(states: MicrovmPhase[]): Promise<MicrovmRecord[]>;
  /** How many MicroVMs that are not TERMINATED match: an owner's, or those of an image (or one version of it). */
  countLiveMicrovms(filter: { owner: Owner } | { imageId: string; version?: number }): Promise<number>;
  /**
   * Moves a MicroVM to `to` only if it is in one of `from` (compare-and-set), so
   * two concurrent transitions can never both apply. Returns whether it moved.
   */
  transitionMicrovm(
    microvmId: string,
    from: MicrovmPhase[],
    to: MicrovmPhase,
    patch: { stateReason?: string | null; startedAt?: Date; terminatedAt?: Date; updatedAt: Date },
  ): Promise<boolean>;

  /**
   * Records a clientToken before its request does anything. Returns the record
   * already there when the token was used before, or undefined when this call
   * claimed it.
   */
  claimClientToken(record: ClientTokenRecord): Promise<ClientTokenRecord | undefined>;
  saveClientTokenResponse(owner: Owner, operation: string, token: string, response: unknown): Promise<void>;
  /** Forgets tokens older than `before`: AWS keeps them for hours, not forever. */
  pruneClientTokens(before: Date): Promise<number>;

  /** Records a managed base image version the first time it is offered (its createdAt); later calls change nothing. */
  recordManagedImageVersion(name: string, version: string, now: Date): Promise<void>;
  /** A managed base image version was (re)built locally: its updatedAt moves forward to `builtAt`. */
  managedImageVersionBuilt(name: string, version: string, builtAt: Date): Promise<void>;
  managedImageVersions(): Promise<ManagedImageVersionRecord[]>;
}

/** A position in a list: the sort key of the last item of a page. */
export type Cursor = (string | number)[];

export const imageCursor = (i: ImageRecord): Cursor => [i.createdAt.getTime(), i.name];
export const versionCursor = (v: VersionRecord): Cursor => [v.version];
export const buildCursor = (b: BuildRecord): Cursor => [b.createdAt.getTime(), b.buildId];
export const microvmCursor = (m: MicrovmRecord): Cursor => [m.createdAt.getTime(), m.microvmId];
