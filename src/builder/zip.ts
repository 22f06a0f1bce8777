import yauzl from "yauzl";
import { Failure } from "../domain/failure.js";
import { readingFrom, type ArtifactWriter } from "./unpack.js";

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
/** PATH_MAX: a link target cannot be longer, so a longer "link" is not one. */
const maxLinkTarget = 4096;

/**
 * Unpacks the zip at `path` through `writer`, one entry at a time. Entries keep the unix mode the
 * zip records (external attributes >> 16); zips made on Windows record none, and get 0644 files
 * and 0755 directories. Symbolic links (`zip -y`) stay links; device and FIFO entries are skipped.
 */
export async function unpackZip(path: string, writer: ArtifactWriter): Promise<void> {
  const invalid = (err: unknown) =>
    new Failure(`Code artifact ${writer.uri} is not a valid zip archive: ${err instanceof Error ? err.message : String(err)}`);
  // Names are decoded and checked here rather than by yauzl, so that a bad name gets the same
  // message as in a tar.
  const zip = await yauzl.openPromise(path, { lazyEntries: true, decodeStrings: false, validateEntrySizes: true }).catch((err: unknown) => {
    throw invalid(err);
  });
  const entries = zip.eachEntry()[Symbol.asyncIterator]();
  for (;;) {
    const next = await entries.next().catch((err: unknown) => {
      throw invalid(err);
    });
    if (next.done) break;
    try {
      await unpackEntry(zip, next.value, writer, invalid);
    } catch (err) {
      await entries.return?.();
      throw err;
    }
  }
}

async function unpackEntry(
  zip: yauzl.ZipFile,
  entry: yauzl.Entry,
  writer: ArtifactWriter,
  invalid: (err: unknown) => Failure,
): Promise<void> {
  const name = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, false);
  const mode = entry.externalFileAttributes >>> 16;
  const type = mode & S_IFMT;
  const permissions = mode & 0o777;

  if (name.endsWith("/") || type === S_IFDIR) return writer.directory(name, permissions || 0o755);
  if (type !== 0 && type !== S_IFREG && type !== S_IFLNK) return;
  if (entry.isEncrypted()) {
    throw new Failure(`Code artifact ${writer.uri} has an encrypted entry "${name}"; encrypted zips cannot be unpacked.`);
  }
  if (!entry.canDecodeFileData()) {
    throw new Failure(
      `Code artifact ${writer.uri} has an entry "${name}" compressed with method ${entry.compressionMethod}; ` +
        `only stored and deflated entries can be unpacked.`,
    );
  }
  if (type === S_IFLNK && entry.uncompressedSize > maxLinkTarget) {
    throw invalid(new Error(`the symbolic link "${name}" has a target longer than ${maxLinkTarget} bytes`));
  }
  const stream = await zip.openReadStreamPromise(entry).catch((err: unknown) => {
    throw invalid(err);
  });
  const content = readingFrom(stream, invalid);
  if (type === S_IFLNK) {
    const chunks: Buffer[] = [];
    for await (const chunk of content) chunks.push(chunk);
    return writer.symlink(name, Buffer.concat(chunks).toString("utf8"));
  }
  return writer.file(name, permissions || 0o644, entry.uncompressedSize, content);
}
