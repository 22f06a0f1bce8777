import { constants } from "node:fs";
import { lstat, open, readdir, readlink } from "node:fs/promises";
import { join } from "node:path";
import { Failure } from "../domain/failure.js";
import { describeIoError, readingFrom, type ArtifactWriter } from "./unpack.js";

/**
 * Copies the directory `source` through `writer`, depth first. Modes are kept (not ownership),
 * symbolic links are copied as links and never followed, and sockets, FIFOs and devices are
 * skipped. `source` and `writer.dest` are real paths; when dest lies inside source it is skipped,
 * not copied into itself.
 */
export async function copyDirectory(source: string, writer: ArtifactWriter, rel = ""): Promise<void> {
  const unreadable = (name: string) => (err: unknown) =>
    new Failure(`Code artifact ${writer.uri} cannot be read: ${name === "" ? "the directory" : `"${name}"`}: ${describeIoError(err)}.`);
  const names = await readdir(join(source, rel)).catch((err: unknown) => {
    throw unreadable(rel)(err);
  });
  for (const name of names.sort()) {
    const entry = rel === "" ? name : `${rel}/${name}`;
    const path = join(source, entry);
    if (path === writer.dest) continue;
    const stats = await lstat(path).catch((err: unknown) => {
      throw unreadable(entry)(err);
    });
    if (stats.isDirectory()) {
      await writer.directory(entry, stats.mode);
      await copyDirectory(source, writer, entry);
    } else if (stats.isSymbolicLink()) {
      const target = await readlink(path).catch((err: unknown) => {
        throw unreadable(entry)(err);
      });
      await writer.symlink(entry, target);
    } else if (stats.isFile()) {
      await writer.file(entry, stats.mode, stats.size, readingFrom(contentOf(path), unreadable(entry)));
    }
  }
}

/** A file's content, opened only when read, and not through a link that replaced the file since. */
async function* contentOf(path: string): AsyncIterable<Buffer> {
  const file = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  yield* file.createReadStream(); // closes the file when done or abandoned
}
