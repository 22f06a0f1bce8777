/**
 * Why work in the background failed (a build, a start, a suspension, a hook):
 * `message` is the reason fit for a client, as it goes into a `stateReason`, in
 * the user's terms and free of host paths and process output; `cause` keeps
 * what happened underneath, for the log only.
 *
 * This is the one error type of background work: code that knows what went
 * wrong in the user's terms throws a Failure; anything else is wrapped by
 * `Failure.from` with a reason that names the step and nothing of the host.
 */
export class Failure extends Error {
  override name = "Failure";

  constructor(reason: string, options?: { cause?: unknown }) {
    super(reason, options);
  }

  /** `error` as it is when it is a Failure, else a Failure with `reason` that keeps `error` as its cause. */
  static from(error: unknown, reason: string): Failure {
    return error instanceof Failure ? error : new Failure(reason, { cause: error });
  }
}
