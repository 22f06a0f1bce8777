import assert from "node:assert/strict";
import { lstat, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { Failure } from "../../src/domain/failure.js";

/** Asserts that `promise` rejects with a Failure (a user's mistake, told in a stateReason) matching `message`. */
export async function assertRejects(promise: Promise<unknown>, message: RegExp): Promise<Failure> {
  let caught: Failure | undefined;
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof Failure, `expected a Failure, got ${String(err)}`);
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

/**
 * A scratch directory made before the file's tests and removed after them;
 * returns a function that makes a new directory under it for each case.
 */
export function scratchRoot(prefix: string): (name?: string) => Promise<string> {
  let root: string;
  let counter = 0;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), prefix));
  });
  after(() => rm(root, { recursive: true, force: true }));
  return async (name = "case") => {
    const dir = join(root, `${name}-${++counter}`);
    await mkdir(dir, { recursive: true });
    return dir;
  };
}
