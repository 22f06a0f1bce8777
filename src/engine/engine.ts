import type { BuildRecord, MicrovmRecord } from "../store/records.js";
import type { EndpointTargets } from "./endpoint-targets.js";

/**
 * The engine carries out what the control plane has recorded. Operations persist
 * their intent first (a MicroVM STARTING, a build PENDING, a MicroVM
 * TERMINATING...) and then hand it over here; the engine reports progress back
 * through MicrovmLifecycle and the store. So a crash between the two loses
 * nothing: `reconcile` picks up every intent on start.
 *
 * Each method returns once the work is accepted, not done.
 */
export interface Engine {
  /** One line for logs and `serve` output: what runs VMs here, and how. */
  readonly description: string;
  /** A MicroVM was recorded STARTING: start it from its image version, then report `started`. */
  runMicrovm(microvm: MicrovmRecord): void;
  /** A MicroVM was recorded SUSPENDING: save it and stop it, then report `suspended`. */
  suspendMicrovm(microvm: MicrovmRecord): void;
  /** A MicroVM was recorded RESUMING: restore it, then report `resumed`. */
  resumeMicrovm(microvm: MicrovmRecord): void;
  /** A MicroVM was recorded TERMINATING: stop it and free its files, then report `terminated`. */
  terminateMicrovm(microvm: MicrovmRecord): void;
  /** A build was recorded PENDING: run it and record its outcome. */
  startBuild(build: BuildRecord): void;
  /** Versions were deleted (nothing uses them: the API refuses while MicroVMs or builds do): free their snapshots. */
  versionsDeleted(imageId: string, versions: number[]): void;
  /** What the endpoint proxy sees of the MicroVMs: the one interface the two meet through. */
  readonly targets: EndpointTargets;
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
