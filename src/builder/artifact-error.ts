/**
 * A code artifact the user gave us cannot be used: it is missing, unreadable, not an archive, unsafe
 * or without a bootstrap. Its message becomes the build's `stateReason`, so it names the artifact
 * and says what to change. Failures that are ours (a full disk, a bug) are other errors.
 */
export class ArtifactError extends Error {
  override name = "ArtifactError";
}
