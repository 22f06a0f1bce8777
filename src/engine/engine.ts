import type { BuildRecord, MicrovmRecord } from "../store/records.js";

/**
 * The engine carries out what the control plane has recorded. Operations persist
 * their intent first (a MicroVM in PENDING, a build in PENDING, a MicroVM in
 * TERMINATING...) and then hand it over here; the engine reports progress back
 * through MicrovmLifecycle and the store. So a crash between the two loses
 * nothing: `reconcile` picks up every intent on start.
 *
 * Each method returns once the work is accepted, not done.
 */
export interface Engine {
  /** One line for logs and `serve` output: what runs VMs here, and how. */
  readonly description: string;
  /** A MicroVM was recorded PENDING: start it from its image version, then report `started`. */
  runMicrovm(microvm: MicrovmRecord): void;
  /** A MicroVM was recorded SUSPENDING: save it and stop it, then report `suspended`. */
  suspendMicrovm(microvm: MicrovmRecord): void;
  /** A MicroVM was recorded PENDING from SUSPENDED: restore it, then report `started`. */
  resumeMicrovm(microvm: MicrovmRecord): void;
  /** A MicroVM was recorded TERMINATING: stop it and free its files, then report `terminated`. */
  terminateMicrovm(microvm: MicrovmRecord): void;
  /** A build was recorded PENDING: run it and record its outcome. */
  startBuild(build: BuildRecord): void;
  /** Versions were deleted (nothing uses them: the API refuses while MicroVMs or builds do): free their snapshots. */
  versionsDeleted(imageId: string, versions: number[]): void;
  /** Where the endpoint proxy reaches `guestPort` of the MicroVM's VM; throws TargetUnavailable when no VM runs. */
  connect(microvmId: string, guestPort: number): Promise<{ host: string; port: number }>;
  /** Auto-resume: brings the MicroVM to RUNNING for a request (see EndpointTargets.wake). */
  wake(microvm: MicrovmRecord, timeoutMs: number): Promise<MicrovmRecord | undefined>;
  /** Traffic through the endpoint: the idle policy's clock. */
  activity(microvmId: string): void;
  /** On start: settle every intent left by a previous run of the server. */
  reconcile(): Promise<void>;
  /** Stops accepting work and waits for what is under way to settle. */
  close(options?: CloseOptions): Promise<void>;
}

export interface CloseOptions {
  /**
   * Stop every VM. Without it running VMs are left running, detached, for the
   * next start of the server to adopt: a restart loses no MicroVM.
   */
  stopVms?: boolean;
}
