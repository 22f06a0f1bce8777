/**
 * Fetching a build's code artifact into the directory that is laid over the base image.
 *
 *   uri ─ fetcherFor ─┬─ file:///path ─ stat ─┬─ directory ── copyDirectory ───────────────────────┐
 *                     │                       └─ file ───────┐                                     │
 *                     ├─ s3://bucket/key ─ temporary file ───┴─ unpackArchive ─┬─ zip ─ unpackZip ─┤
 *                     │                    (s3.ts)               (magic bytes) └─ tar ─ unpackTar ─┴─ ArtifactWriter(dest)
 *                     └─ registry/repo:tag ─ refused: a root filesystem, fetched by oci/oci-image.ts         │
 *                                                                                                         finish ─ bootstrap at the root
 *
 * Every user-caused failure is a Failure whose message becomes the build's stateReason.
 * On failure `dest` may hold part of the artifact; the caller removes it.
 */
import { chmod, lstat, open, readdir, realpath, stat } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Failure } from "../domain/failure.js";
import { copyDirectory } from "./directory.js";
import { s3SettingsFromEnv, type S3Settings } from "../config/s3-settings.js";
import { withS3Object } from "./s3.js";
import { unpackTar } from "./tar.js";
import { ArtifactWriter, defaultMaxUnpackedBytes, describeIoError } from "./unpack.js";
import { unpackZip } from "./zip.js";

export { defaultMaxUnpackedBytes } from "./unpack.js";

export interface FetchCodeArtifactOptions {
  /** Refuse artifacts whose regular files add up to more; Lambda's unzipped limit by default. */
  maxUnpackedBytes?: number;
  /** Where s3:// artifacts come from; s3SettingsFromEnv() when absent. */
  s3?: S3Settings;
}

export interface FetchedCodeArtifact {
  /** Bytes of the regular files unpacked. */
  sizeInBytes: number;
  /** What the application starts from, relative to the artifact's root. */
  entrypoint: "bootstrap";
}

type ArtifactKind = "directory" | "zip" | "tar";
type Fetcher = (uri: string, writer: ArtifactWriter, opts: FetchCodeArtifactOptions) => Promise<ArtifactKind>;

/**
 * Fetchers by URI scheme. An OCI image reference (registry/repo:tag) has no
 * scheme: it is a whole root filesystem, fetched by oci/oci-image.ts instead.
 */
const fetchers = new Map<string, Fetcher>([
  ["file", fetchFile],
  ["s3", fetchS3],
]);

/** Unpacks the code artifact at `uri` into the existing empty directory `dest`. */
export async function fetchCodeArtifact(uri: string, dest: string, opts: FetchCodeArtifactOptions = {}): Promise<FetchedCodeArtifact> {
  const maxUnpackedBytes = opts.maxUnpackedBytes ?? defaultMaxUnpackedBytes;
  if (!Number.isSafeInteger(maxUnpackedBytes) || maxUnpackedBytes < 0) {
    throw new RangeError(`maxUnpackedBytes must be a whole number of bytes, not ${maxUnpackedBytes}`);
  }
  const writer = new ArtifactWriter(uri, await realpath(dest), maxUnpackedBytes);
  const kind = await fetcherFor(uri)(uri, writer, opts);
  await writer.finish();
  await checkBootstrap(writer, kind);
  return { sizeInBytes: writer.unpackedBytes, entrypoint: "bootstrap" };
}

function fetcherFor(uri: string): Fetcher {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(uri)?.[1]?.toLowerCase();
  const fetcher = scheme === undefined ? undefined : fetchers.get(scheme);
  if (fetcher !== undefined) return fetcher;
  // "localhost:5000/repo:tag" starts like a scheme too; only "://" tells a URI from an image reference.
  if (uri.includes("://")) {
    throw new Failure(`Code artifact ${uri} has an unsupported scheme; use file:///path, s3://bucket/key or an OCI image reference.`);
  }
  throw new Failure(`Code artifact ${uri} is an OCI image reference, which is not a code archive to lay over a base image.`);
}

async function fetchFile(uri: string, writer: ArtifactWriter): Promise<ArtifactKind> {
  const path = filePath(uri);
  const stats = await stat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT" || err.code === "ENOTDIR") throw new Failure(`Code artifact ${uri} does not exist.`);
    throw new Failure(`Code artifact ${uri} cannot be read: ${describeIoError(err)}.`);
  });
  if (stats.isDirectory()) {
    await copyDirectory(await realpath(path), writer);
    return "directory";
  }
  // Only regular files are opened: reading a FIFO or a device could block or never end.
  if (!stats.isFile()) throw notAnArchive(uri);
  return unpackArchive(path, writer);
}

/** An S3 object is downloaded to a temporary file, then unpacked as a local zip or tar would be. */
async function fetchS3(uri: string, writer: ArtifactWriter, opts: FetchCodeArtifactOptions): Promise<ArtifactKind> {
  return withS3Object(uri, opts.s3 ?? s3SettingsFromEnv(), maxArchiveBytes(writer.maxUnpackedBytes), (path) => unpackArchive(path, writer));
}

/**
 * The largest archive worth downloading for a given unpacked limit: an archive may outgrow its
 * contents by its headers and padding (a tar of many small files most), but not by this much.
 */
function maxArchiveBytes(maxUnpackedBytes: number): number {
  return 2 * maxUnpackedBytes + 1_048_576;
}

/** Unpacks the regular file at `path`, a zip or a tar as its first bytes say, through `writer`. */
async function unpackArchive(path: string, writer: ArtifactWriter): Promise<"zip" | "tar"> {
  const head = await readHead(path).catch((err: unknown) => {
    throw new Failure(`Code artifact ${writer.uri} cannot be read: ${describeIoError(err)}.`);
  });
  switch (archiveFormat(head)) {
    case "zip":
      await unpackZip(path, writer);
      return "zip";
    case "tar":
      await unpackTar(path, writer);
      return "tar";
    case undefined:
      throw notAnArchive(writer.uri);
  }
}

const notAnArchive = (uri: string) => new Failure(`Code artifact ${uri} is not a directory, a zip or a tar archive.`);

/** The local path of an absolute `file:///` URI, percent-decoded. */
function filePath(uri: string): string {
  const notAbsolute = new Failure(`Code artifact ${uri} is not an absolute file URI; write it as file:///absolute/path.`);
  if (!/^file:\/\/\//i.test(uri)) throw notAbsolute;
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw notAbsolute;
  }
  if (url.search !== "" || url.hash !== "") {
    throw new Failure(`Code artifact ${uri} has a query or fragment; in a file URI, write "?" as %3F and "#" as %23.`);
  }
  try {
    return fileURLToPath(url);
  } catch (err) {
    throw new Failure(`Code artifact ${uri} is not a valid file URI: ${(err as Error).message}.`);
  }
}

/** The first 512 bytes: enough for the zip and gzip magic numbers and the ustar magic at 257. */
async function readHead(path: string): Promise<Buffer> {
  const file = await open(path, "r");
  try {
    const head = Buffer.alloc(512);
    const { bytesRead } = await file.read(head, 0, head.length, 0);
    return head.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

/** Recognises an archive by its content, never by its name. */
function archiveFormat(head: Buffer): "zip" | "tar" | undefined {
  const zipLocalFile = Buffer.from("PK\x03\x04", "latin1");
  const zipEmpty = Buffer.from("PK\x05\x06", "latin1");
  if (head.subarray(0, 4).equals(zipLocalFile) || head.subarray(0, 4).equals(zipEmpty)) return "zip";
  if (head[0] === 0x1f && head[1] === 0x8b) return "tar"; // gzip; tar's parser fails if what it holds is not a tar
  if (head.subarray(257, 262).toString("latin1") === "ustar") return "tar";
  return undefined;
}

/** Names that archivers add beside the folder a person compressed; they do not make it two folders. */
const archiverLitter = new Set(["__MACOSX", ".DS_Store"]);

const packTheContents: Record<ArtifactKind, string> = {
  zip: "zip the folder's contents, not the folder",
  tar: "archive the folder's contents, not the folder",
  directory: "use that folder as the artifact",
};

/**
 * Lambda's custom-runtime convention: the application starts from an executable `bootstrap` at the
 * artifact's root. A `bootstrap` that is a symbolic link is left alone: its target is resolved in
 * the guest's filesystem, never on the host.
 */
async function checkBootstrap(writer: ArtifactWriter, kind: ArtifactKind): Promise<void> {
  const uri = writer.uri;
  const path = join(writer.dest, "bootstrap");
  const stats = await lstatIfExists(path);
  if (stats === undefined) {
    const names = (await readdir(writer.dest)).filter((name) => !archiverLitter.has(name));
    const folder = names.length === 1 ? names[0] : undefined;
    const inFolder = folder !== undefined && (await lstatIfExists(join(writer.dest, folder)))?.isDirectory() === true;
    if (inFolder && (await lstatIfExists(join(writer.dest, folder, "bootstrap"))) !== undefined) {
      throw new Failure(`Code artifact ${uri} has no bootstrap file at its root, but found ${folder}/bootstrap; ${packTheContents[kind]}.`);
    }
    throw new Failure(`Code artifact ${uri} has no bootstrap file at its root; the application starts from an executable bootstrap.`);
  }
  if (stats.isDirectory()) {
    throw new Failure(`Code artifact ${uri} has a directory named bootstrap at its root; the application starts from an executable bootstrap file.`);
  }
  // Zips made on Windows carry no modes, so bootstrap arrives as 0644; and the application may run
  // as a user who does not own the file. Rather than fail such an artifact, make bootstrap readable
  // and executable by everyone (0644 becomes 0755).
  if (stats.isFile() && (stats.mode & 0o555) !== 0o555) await chmod(path, (stats.mode & 0o777) | 0o555);
}

async function lstatIfExists(path: string) {
  return lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
}
