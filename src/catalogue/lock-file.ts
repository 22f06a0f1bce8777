import { spawn } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { hostname } from "node:os";

/**
 * An exclusive lock between processes on one host, held with flock(2) through
 * util-linux's flock(1) (Node has no flock): a child process takes the lock and keeps it
 * until its stdin closes. The kernel drops the lock when that child exits, and the child
 * exits when its stdin closes, which also happens when this process dies, so a crash
 * never leaves a stale lock and no pid needs checking. The file itself stays (removing
 * a flock file races with the next locker); while held it names its holder.
 */

export interface LockHolder {
  pid: number;
  host: string;
  since: string;
  purpose: string;
}

/** How long acquiring may take before the caller hears it is waiting for someone. */
const WAIT_NOTICE_MS = 250;

export interface LockOptions {
  /** Written into the lock file for whoever waits next, e.g. "building busybox/1". */
  purpose: string;
  /** Called once if the lock is held by someone else, with what the file says of them. */
  onWait?: (holder: LockHolder | undefined) => void;
}

export async function withLockFile<T>(path: string, opts: LockOptions, fn: () => Promise<T>): Promise<T> {
  const release = await acquire(path, opts);
  try {
    return await fn();
  } finally {
    await release();
  }
}

async function readHolder(path: string): Promise<LockHolder | undefined> {
  try {
    const holder = JSON.parse(await readFile(path, "utf8")) as LockHolder;
    return typeof holder.pid === "number" ? holder : undefined;
  } catch {
    return undefined;
  }
}

function acquire(path: string, opts: LockOptions): Promise<() => Promise<void>> {
  return new Promise((resolve, reject) => {
    // `exec cat` waits for stdin to close; the lock lives exactly as long as it does.
    const child = spawn("flock", ["--exclusive", path, "sh", "-c", "echo locked && exec cat >/dev/null"], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let locked = false;
    let stderr = "";
    const exited = new Promise<void>((done) => child.once("close", () => done()));
    const notice = setTimeout(() => {
      void readHolder(path).then((holder) => !locked && opts.onWait?.(holder));
    }, WAIT_NOTICE_MS);

    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      if (locked || !chunk.includes("locked")) return;
      locked = true;
      clearTimeout(notice);
      const holder: LockHolder = { pid: process.pid, host: hostname(), since: new Date().toISOString(), purpose: opts.purpose };
      writeFile(path, `${JSON.stringify(holder)}\n`).then(
        () =>
          resolve(async () => {
            child.stdin.end();
            await exited;
          }),
        (error: unknown) => {
          child.stdin.end();
          reject(error);
        },
      );
    });
    child.on("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(notice);
      reject(
        error.code === "ENOENT"
          ? new Error(`cannot lock ${path}: command not found: flock (install the Debian package util-linux)`)
          : new Error(`cannot lock ${path}: ${error.message}`),
      );
    });
    child.on("close", (code) => {
      clearTimeout(notice);
      if (!locked) reject(new Error(`cannot lock ${path}: flock exited with code ${code}${stderr ? `: ${stderr.trim()}` : ""}`));
    });
  });
}
