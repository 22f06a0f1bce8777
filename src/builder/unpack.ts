import { constants } from "node:fs";
import { chmod, link, lstat, mkdir, open, symlink, unlink } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { Failure } from "../domain/failure.js";

/** Lambda's limit on a function's unzipped deployment package, which we keep for code artifacts. */
export const defaultMaxUnpackedBytes = 262_144_000;

/**
 * Writes the entries of one code artifact (a directory, zip or tar) into `dest`, and keeps the
 * promises every reader of an artifact relies on:
 *
 * - an entry lands inside `dest`: absolute names and `..` are refused, and no entry is ever written
 *   beneath a symbolic link, so a link (which may point anywhere: it is resolved in the guest) cannot
 *   carry a later entry out of `dest`;
 * - files are created with O_EXCL | O_NOFOLLOW, so an earlier entry cannot redirect a later write;
 * - the regular files written add up to at most `maxUnpackedBytes`, counted as the bytes arrive, not
 *   as an archive declares them;
 * - modes keep their permission bits only: setuid, setgid and sticky bits are dropped because the
 *   build runs on the host, possibly as root. The owner can always read files and enter and change
 *   directories, so the tree can be laid over a root filesystem and removed afterwards.
 *
 * Directories are created owner-only while entries arrive and get their modes in `finish()`, so a
 * read-only directory in the artifact does not stop its own contents from being written.
 */
export class ArtifactWriter {
  #bytes = 0;
  /** Paths relative to dest known to be real directories (not links), "" being dest itself. */
  readonly #directories = new Set<string>([""]);
  readonly #directoryModes = new Map<string, number>();

  constructor(
    readonly uri: string,
    readonly dest: string,
    readonly maxUnpackedBytes: number = defaultMaxUnpackedBytes,
  ) {}

  /** Bytes of regular files written so far. */
  get unpackedBytes(): number {
    return this.#bytes;
  }

  async directory(name: string, mode: number): Promise<void> {
    const rel = this.#entryPath(name);
    if (rel === "") return;
    await this.#prepare(name, rel, "directory");
    this.#directoryModes.set(rel, (mode & 0o777) | 0o700);
  }

  /** Writes a regular file. `declaredSize` fails a too-large file early; the bytes that arrive are what count. */
  async file(name: string, mode: number, declaredSize: number, content: AsyncIterable<Buffer>): Promise<void> {
    const rel = this.#requireName(name);
    if (this.#bytes + declaredSize > this.maxUnpackedBytes) throw this.#tooLarge();
    await this.#prepare(name, rel, "file");
    const path = join(this.dest, rel);
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    const handle = await open(path, flags, 0o600);
    await pipeline(this.#counted(content), handle.createWriteStream()); // closes the handle, even on failure
    // After writing, so that the umask plays no part and a read-only file could still be written.
    await chmod(path, (mode & 0o777) | 0o400);
  }

  async symlink(name: string, target: string): Promise<void> {
    const rel = this.#requireName(name);
    if (target === "" || target.includes("\0")) {
      throw new Failure(`Code artifact ${this.uri} has a symbolic link "${name}" with an invalid target.`);
    }
    await this.#prepare(name, rel, "link");
    await symlink(target, join(this.dest, rel));
  }

  /** A tar hard link: `existing` names an entry of the same archive, already written as a regular file. */
  async hardlink(name: string, existing: string): Promise<void> {
    const rel = this.#requireName(name);
    const target = this.#requireName(existing);
    const parts = target.split("/");
    for (let i = 1; i < parts.length; i++) {
      if (!this.#directories.has(parts.slice(0, i).join("/"))) throw this.#badHardlink(name, existing);
    }
    const stats = await lstat(join(this.dest, target)).catch(() => undefined);
    if (!stats?.isFile()) throw this.#badHardlink(name, existing);
    await this.#prepare(name, rel, "link");
    await link(join(this.dest, target), join(this.dest, rel));
  }

  /** Gives directories their modes; call once, after the last entry. */
  async finish(): Promise<void> {
    for (const [rel, mode] of this.#directoryModes) await chmod(join(this.dest, rel), mode);
  }

  #entryPath(name: string): string {
    return entryPath(this.uri, name);
  }

  #requireName(name: string): string {
    const rel = this.#entryPath(name);
    if (rel === "") throw new Failure(`Code artifact ${this.uri} has an entry with an empty name.`);
    return rel;
  }

  /**
   * Makes sure every parent of `rel` is a real directory (creating missing ones), then clears the
   * way for the entry itself: a later entry replaces an earlier file or link, as tar does, but never
   * a directory.
   */
  async #prepare(name: string, rel: string, kind: "directory" | "file" | "link"): Promise<void> {
    const parts = rel.split("/");
    for (let i = 1; i < parts.length; i++) await this.#ensureDirectory(name, parts.slice(0, i).join("/"));
    const path = join(this.dest, rel);
    const existing = await lstat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return undefined;
      throw err;
    });
    if (existing?.isDirectory()) {
      if (kind === "directory") {
        this.#directories.add(rel);
        return;
      }
      throw new Failure(`Code artifact ${this.uri} has an entry "${name}" that would replace a directory of the same name.`);
    }
    if (existing !== undefined) await unlink(path);
    if (kind === "directory") await this.#makeDirectory(rel);
  }

  async #ensureDirectory(name: string, rel: string): Promise<void> {
    if (this.#directories.has(rel)) return;
    const stats = await lstat(join(this.dest, rel)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return undefined;
      throw err;
    });
    if (stats === undefined) {
      await this.#makeDirectory(rel);
      this.#directoryModes.set(rel, 0o755);
    } else if (stats.isSymbolicLink()) {
      throw new Failure(
        `Code artifact ${this.uri} has an entry "${name}" that would be written through the symbolic link "${rel}"; ` +
          `entries may not be placed beneath a symbolic link.`,
      );
    } else if (!stats.isDirectory()) {
      throw new Failure(`Code artifact ${this.uri} has an entry "${name}" beneath "${rel}", which is not a directory.`);
    } else {
      this.#directories.add(rel);
    }
  }

  async #makeDirectory(rel: string): Promise<void> {
    await mkdir(join(this.dest, rel), { mode: 0o700 });
    this.#directories.add(rel);
  }

  async *#counted(content: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
    for await (const chunk of content) {
      this.#bytes += chunk.length;
      if (this.#bytes > this.maxUnpackedBytes) throw this.#tooLarge();
      yield chunk;
    }
  }

  #tooLarge(): Failure {
    return new Failure(
      `Code artifact ${this.uri} is larger than ${this.maxUnpackedBytes} bytes when unpacked, ` +
        `the limit for the unpacked size of a code artifact.`,
    );
  }

  #badHardlink(name: string, existing: string): Failure {
    return new Failure(
      `Code artifact ${this.uri} has a hard link "${name}" to "${existing}", which is not a file earlier in the archive.`,
    );
  }
}

/**
 * Passes `source` through, turning its errors (a corrupt archive, an unreadable file) into the
 * Failure `describe` makes, so they are not mistaken for failures writing to dest.
 */
export async function* readingFrom(source: AsyncIterable<Buffer>, describe: (err: unknown) => Failure): AsyncIterable<Buffer> {
  try {
    for await (const chunk of source) yield chunk;
  } catch (err) {
    throw err instanceof Failure ? err : describe(err);
  }
}

/** The message of an I/O error for a person: "permission denied" rather than "EACCES: ...". */
export function describeIoError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "ELOOP") return "too many levels of symbolic links";
  if (code === "EISDIR") return "is a directory";
  return err instanceof Error ? err.message : String(err);
}

/** Checks an archive entry's name and returns its path relative to the destination ("" for the destination itself). */
export function entryPath(uri: string, name: string): string {
  const parts = name.split("/").filter((part) => part !== "" && part !== ".");
  if (name.includes("\0") || name.startsWith("/") || /^[A-Za-z]:/.test(name) || parts.includes("..")) {
    throw new Failure(
      `Code artifact ${uri} has an entry "${name}" that would be written outside the artifact; ` +
        `entry paths must be relative and must not contain "..".`,
    );
  }
  return parts.join("/");
}
