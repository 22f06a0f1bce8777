import { createReadStream } from "node:fs";
import { Parser, type ReadEntry } from "tar";
import { Failure } from "../domain/failure.js";
import { describeIoError, readingFrom, type ArtifactWriter } from "./unpack.js";

/**
 * Unpacks the tar at `path`, gzip-compressed or not (tar's parser recognises gzip by itself),
 * through `writer`. We use tar's parser rather than its extractor so that a tar and a zip get the
 * same checks and messages from ArtifactWriter. Device and FIFO entries are skipped; entry types
 * that cannot be unpacked faithfully (sparse files, for one) are refused.
 *
 * The parser emits an entry only after the previous one has been read, and stops reading the file
 * while an entry's content waits, so entries are unpacked one at a time with bounded memory.
 */
export async function unpackTar(path: string, writer: ArtifactWriter): Promise<void> {
  const invalid = (err: unknown) =>
    new Failure(`Code artifact ${writer.uri} is not a valid tar archive: ${err instanceof Error ? err.message : String(err)}`);
  const source = createReadStream(path);
  const parser = new Parser({ strict: true });
  const entries = new EntryQueue();
  parser.on("entry", (entry: ReadEntry) => entries.push(entry));
  parser.on("ignoredEntry", (entry: ReadEntry) => entries.push(entry));
  parser.on("end", () => entries.end());
  parser.on("error", (err: unknown) => entries.fail(invalid(err)));
  source.on("error", (err) => entries.fail(new Failure(`Code artifact ${writer.uri} cannot be read: ${describeIoError(err)}.`)));
  source.pipe(parser);
  try {
    for (;;) {
      const entry = await entries.next();
      if (entry === undefined) return;
      await unpackEntry(entry, writer, readingFrom(contentOf(entry, entries.failed), invalid));
      entry.resume(); // the parser moves on once an entry ends, and one without content ends only when resumed
    }
  } finally {
    source.destroy();
  }
}

async function unpackEntry(entry: ReadEntry, writer: ArtifactWriter, content: AsyncIterable<Buffer>): Promise<void> {
  const mode = (entry.mode ?? 0) & 0o777;
  switch (entry.type) {
    case "Directory":
    case "GNUDumpDir":
      return writer.directory(entry.path, mode || 0o755);
    case "File":
    case "OldFile":
    case "ContiguousFile":
      return writer.file(entry.path, mode || 0o644, entry.size, content);
    case "SymbolicLink":
      return writer.symlink(entry.path, entry.linkpath ?? "");
    case "Link":
      return writer.hardlink(entry.path, entry.linkpath ?? "");
    case "CharacterDevice":
    case "BlockDevice":
    case "FIFO":
      return;
    default:
      throw new Failure(`Code artifact ${writer.uri} has an entry "${entry.path}" of type ${entry.type}, which cannot be unpacked.`);
  }
}

/**
 * Entries from the parser, handed out one at a time. `failed` rejects when the archive fails, so
 * that reading an entry stops waiting for content a broken archive will never deliver.
 */
class EntryQueue {
  readonly #queue: ReadEntry[] = [];
  #done = false;
  #failure: Failure | undefined;
  #wake: (() => void) | undefined;
  #reject: (err: Failure) => void = () => {};
  readonly failed = new Promise<never>((_, reject) => (this.#reject = reject));

  constructor() {
    this.failed.catch(() => {}); // observed through next() and contentOf(); never unhandled
  }

  push(entry: ReadEntry): void {
    if (this.#done) return;
    this.#queue.push(entry);
    this.#wake?.();
  }

  end(): void {
    this.#done = true;
    this.#wake?.();
  }

  fail(err: Failure): void {
    if (this.#failure !== undefined) return;
    this.#failure = err;
    this.#done = true;
    this.#reject(err);
    this.#wake?.();
  }

  /** The next entry, or undefined after the last; rejects once the archive has failed. */
  async next(): Promise<ReadEntry | undefined> {
    for (;;) {
      if (this.#failure !== undefined) throw this.#failure;
      const entry = this.#queue.shift();
      if (entry !== undefined || this.#done) return entry;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}

/** The content of `entry`, ending in `failed`'s error if the archive fails before the entry ends. */
async function* contentOf(entry: ReadEntry, failed: Promise<never>): AsyncIterable<Buffer> {
  const chunks = entry[Symbol.asyncIterator]();
  for (;;) {
    const chunk = await Promise.race([chunks.next(), failed]);
    if (chunk.done) return;
    yield chunk.value;
  }
}
