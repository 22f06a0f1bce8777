import type {
  Architecture,
  BuildState,
  Chipset,
  CodeArtifact,
  CpuConfiguration,
  Hooks,
  IdlePolicy,
  Logging,
  MicrovmImageState,
  MicrovmImageVersionState,
  MicrovmImageVersionStatus,
  MicrovmState,
  OsCapability,
  Resources,
  SnapshotBuild,
} from "../api/generated/types.js";

/** Who owns a resource: resources are partitioned by account and region, as in AWS. */
export interface Owner {
  accountId: string;
  region: string;
}

export interface ImageRecord extends Owner {
  /** Internal id: a name can be reused once its image is deleted. */
  imageId: string;
  name: string;
  state: MicrovmImageState;
  tags: Record<string, string>;
  createdAt: Date;
  updatedAt: Date;
  deletedAt?: Date;
  /** Derived from the versions: highest SUCCESSFUL and ACTIVE / highest FAILED. */
  latestActiveVersion?: number;
  latestFailedVersion?: number;
}

/** The configuration a version is built from: the image's PUT-semantics fields. */
export interface VersionConfig {
  additionalOsCapabilities?: OsCapability[];
  baseImageArn: string;
  baseImageVersion?: string;
  buildRoleArn: string;
  codeArtifact: CodeArtifact;
  cpuConfigurations?: CpuConfiguration[];
  description?: string;
  egressNetworkConnectors?: string[];
  environmentVariables?: Record<string, string>;
  hooks?: Hooks;
  logging?: Logging;
  resources?: Resources[];
}

export interface VersionRecord {
  imageId: string;
  version: number;
  state: MicrovmImageVersionState;
  stateReason?: string;
  status: MicrovmImageVersionStatus;
  config: VersionConfig;
  createdAt: Date;
  updatedAt: Date;
}

export interface BuildRecord {
  buildId: string;
  imageId: string;
  version: number;
  architecture: Architecture;
  chipset: Chipset;
  chipsetGeneration: string;
  buildState: BuildState;
  stateReason?: string;
  snapshotBuild?: SnapshotBuild;
  createdAt: Date;
  updatedAt: Date;
}

export interface MicrovmConfig {
  egressNetworkConnectors?: string[];
  ingressNetworkConnectors?: string[];
  executionRoleArn?: string;
  idlePolicy?: IdlePolicy;
  logging?: Logging;
  maximumDurationInSeconds: number;
  runHookPayload?: string;
}

/**
 * A MicroVM's state as the store keeps it: the API's states, with PENDING told
 * apart as STARTING (a run) and RESUMING (a resume); see src/lifecycle/microvm-states.ts.
 */
export type MicrovmPhase = Exclude<MicrovmState, "PENDING"> | "STARTING" | "RESUMING";

export interface MicrovmRecord extends Owner {
  microvmId: string;
  imageId: string;
  imageName: string;
  imageVersion: number;
  state: MicrovmPhase;
  stateReason?: string;
  config: MicrovmConfig;
  createdAt: Date;
  startedAt?: Date;
  terminatedAt?: Date;
  updatedAt: Date;
}

export interface ManagedImageVersionRecord {
  name: string;
  version: string;
  createdAt: Date;
  updatedAt: Date;
}

/** The first result of a request made with a clientToken, kept to answer its retries. */
export interface ClientTokenRecord extends Owner {
  operation: string;
  token: string;
  requestHash: string;
  response: unknown;
  createdAt: Date;
}

/** A page of rows and whether more follow, for cursor pagination. */
export interface Page<T> {
  items: T[];
  more: boolean;
}
