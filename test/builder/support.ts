import assert from "node:assert/strict";
import { lstat } from "node:fs/promises";
import { ArtifactError } from "../../src/builder/artifact-error.js";

/** Asserts that `promise` rejects with an ArtifactError (a user's mistake, told in a stateReason) matching `message`. */
export async function assertRejects(promise: Promise<unknown>, message: RegExp): Promise<ArtifactError> {
  let caught: ArtifactError | undefined;
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ArtifactError, `expected an ArtifactError, got ${String(err)}`);
    assert.match(err.message, message);
    caught = err;
    return true;
  });
  return caught!;
}

/** Whether anything (a file, a directory, a dangling symlink) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}
