/**
 * Code artifacts in S3 or in any S3-compatible store (MinIO, Ceph, s3rver) the server is configured for.
 *
 *   s3://bucket/key[?versionId=v] ─ parseS3Uri ─ GetObject ─ Content-Length over the cap? ─ refuse, nothing read
 *                                                    │
 *                                         stream to a temporary file (counted) ─ use(path) ─ remove the file
 *
 * A single GetObject rather than HeadObject first: HEAD answers carry no body, so a 404 from HEAD
 * cannot tell a missing bucket from a missing key, and the GET's own Content-Length arrives before
 * any of the body is read. The bytes are counted as well, in case a store sends no length.
 */
import { createWriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { GetObjectCommand, S3Client, S3ServiceException, type GetObjectCommandOutput } from "@aws-sdk/client-s3";
import { Failure } from "../domain/failure.js";
import type { S3Settings } from "../config/s3-settings.js";
import { readingFrom } from "./unpack.js";

export interface S3ObjectLocation {
  bucket: string;
  key: string;
  versionId?: string;
}

/**
 * Parses `s3://bucket/key[?versionId=v]`. The key is taken as written, as the S3 console copies it
 * (spaces and all), and percent-escapes in it are decoded, so an encoded URI works too; a "%" not
 * followed by two hex digits stays a "%", and a "#" is part of the key. A "?" in a key must be
 * written %3F, since "?" starts the query.
 */
export function parseS3Uri(uri: string): S3ObjectLocation {
  const match = /^s3:\/\/([^/?]*)(?:\/([^?]*))?(?:\?(.*))?$/is.exec(uri);
  if (match === null) throw new Failure(`Code artifact ${uri} is not an S3 URI; write it as s3://bucket/key.`);
  const [, bucket = "", rawKey = "", query] = match;
  if (bucket === "") throw new Failure(`Code artifact ${uri} names no bucket; write it as s3://bucket/key.`);
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new Failure(
      `Code artifact ${uri} has an invalid bucket name "${bucket}"; a bucket name is 3 to 63 lowercase letters, ` +
        `digits, dots and hyphens, beginning and ending with a letter or digit.`,
    );
  }
  if (rawKey === "") {
    throw new Failure(`Code artifact ${uri} names no object in bucket ${bucket}; write it as s3://bucket/key.`);
  }
  const key = percentDecode(uri, rawKey);
  if (key.endsWith("/")) {
    throw new Failure(`Code artifact ${uri} names a folder; an S3 code artifact is a zip or tar object, so give its key.`);
  }
  if (Buffer.byteLength(key) > 1024) throw new Failure(`Code artifact ${uri} has a key longer than S3's 1024 bytes.`);

  const location: S3ObjectLocation = { bucket, key };
  if (query !== undefined) {
    const params = [...new URLSearchParams(query)];
    const [param] = params;
    if (params.length !== 1 || param?.[0] !== "versionId" || param[1] === "") {
      throw new Failure(`Code artifact ${uri} has a query other than ?versionId=...; in an S3 key, write "?" as %3F.`);
    }
    location.versionId = param[1];
  }
  return location;
}

function percentDecode(uri: string, text: string): string {
  return text.replace(/(?:%[0-9A-Fa-f]{2})+/g, (escapes) => {
    try {
      return decodeURIComponent(escapes);
    } catch {
      throw new Failure(`Code artifact ${uri} has percent-escapes "${escapes}" that are not UTF-8.`);
    }
  });
}

/**
 * Downloads the object `uri` names to a temporary file, refusing one over `maxObjectBytes`, hands
 * its path to `use`, and removes the file whatever happens. Failures the user can act on (a bad
 * URI, a missing object, no access, an endpoint that does not answer) are ArtifactErrors.
 */
export async function withS3Object<T>(
  uri: string,
  settings: S3Settings,
  maxObjectBytes: number,
  use: (path: string) => Promise<T>,
): Promise<T> {
  const location = parseS3Uri(uri);
  const dir = await mkdtemp(join(tmpdir(), "microvms-s3-"));
  try {
    const path = join(dir, "object");
    await download({ uri, location, settings, maxObjectBytes }, path);
    return await use(path);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

interface Download {
  uri: string;
  location: S3ObjectLocation;
  settings: S3Settings;
  maxObjectBytes: number;
}

async function download(request: Download, path: string): Promise<void> {
  const { uri, location, settings, maxObjectBytes } = request;
  const client = new S3Client({
    region: settings.region,
    forcePathStyle: settings.forcePathStyle,
    ...(settings.endpoint === undefined ? { followRegionRedirects: true } : { endpoint: settings.endpoint }),
    ...(settings.credentials === undefined ? {} : { credentials: settings.credentials }),
    // An endpoint that accepts nothing, or stops sending, fails the build rather than hanging it.
    requestHandler: { connectionTimeout: 10_000, socketTimeout: 60_000 },
  });
  try {
    let response: GetObjectCommandOutput;
    try {
      response = await client.send(new GetObjectCommand({ Bucket: location.bucket, Key: location.key, VersionId: location.versionId }));
    } catch (err) {
      throw describeS3Error(request, err);
    }
    const body = response.Body;
    if (!(body instanceof Readable)) throw new Error(`GetObject returned a body that is not a Node.js stream for ${uri}`);
    const tooLarge = () =>
      new Failure(`Code artifact ${uri} is larger than ${maxObjectBytes} bytes, the limit for the size of a code artifact's archive.`);
    if (response.ContentLength !== undefined && response.ContentLength > maxObjectBytes) {
      body.destroy();
      throw tooLarge();
    }
    const interrupted = (err: unknown) =>
      new Failure(
        `Code artifact ${uri} could not be downloaded from the S3 endpoint ${endpointOf(settings)}: ${describeNetworkError(err)}.`,
      );
    // Errors reading the body are the download's; errors writing the file (a full disk) are ours.
    const content = capped(readingFrom(body, interrupted), maxObjectBytes, tooLarge);
    await pipeline(content, createWriteStream(path, { flags: "wx", mode: 0o600 }));
  } finally {
    client.destroy();
  }
}

async function* capped(source: AsyncIterable<Buffer>, maxBytes: number, tooLarge: () => Failure): AsyncIterable<Buffer> {
  let bytes = 0;
  for await (const chunk of source) {
    bytes += chunk.length;
    if (bytes > maxBytes) throw tooLarge();
    yield chunk;
  }
}

/** S3 error codes that mean the credentials may not read the object, or are not valid at all. */
const deniedCodes = new Set([
  "AccessDenied",
  "Forbidden",
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "ExpiredToken",
  "InvalidToken",
  "TokenRefreshRequired",
]);

/** Node's codes for an endpoint that could not be reached, or stopped answering. */
const networkReasons: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host name lookup failed",
  ETIMEDOUT: "timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  EPIPE: "connection closed",
};

/**
 * The Failure for a failed GetObject. Messages name the object and the endpoint, never the
 * credentials, and never repeat S3's own message, which for AccessDenied names the server's principal.
 */
function describeS3Error({ uri, location, settings }: Download, err: unknown): Error {
  const endpoint = endpointOf(settings);
  const cannotFetch = (why: string) => new Failure(`Code artifact ${uri} cannot be fetched: ${why}.`);
  if (err instanceof S3ServiceException) {
    const code = err.name;
    const status = err.$metadata.httpStatusCode;
    if (code === "NoSuchKey" || code === "NotFound") return new Failure(`Code artifact ${uri} does not exist.`);
    if (code === "NoSuchVersion") return new Failure(`Code artifact ${uri} does not exist: the object has no version ${location.versionId}.`);
    if (code === "NoSuchBucket") return cannotFetch(`bucket ${location.bucket} does not exist at the S3 endpoint ${endpoint}`);
    if (deniedCodes.has(code) || status === 403) {
      return cannotFetch(
        `access denied to s3://${location.bucket}/${location.key} at the S3 endpoint ${endpoint} (${code}); ` +
          `the server's S3 credentials must allow s3:GetObject on it (S3 also answers this for a missing object ` +
          `when they do not allow s3:ListBucket)`,
      );
    }
    return cannotFetch(`the S3 endpoint ${endpoint} answered ${code}${status === undefined ? "" : ` (HTTP ${status})`}`);
  }
  if ((err as Error | undefined)?.name === "CredentialsProviderError") {
    return cannotFetch(
      "the server has no S3 credentials; set MICROVMS_S3_ACCESS_KEY_ID and MICROVMS_S3_SECRET_ACCESS_KEY, " +
        "or credentials the AWS SDK finds by itself",
    );
  }
  if (isNetworkError(err)) return cannotFetch(`cannot reach the S3 endpoint ${endpoint}: ${describeNetworkError(err)}`);
  return err instanceof Error ? err : new Error(String(err));
}

function isNetworkError(err: unknown): boolean {
  const { code, name } = (err ?? {}) as { code?: unknown; name?: unknown };
  // System and TLS errors carry a string code (ECONNREFUSED, CERT_HAS_EXPIRED); the SDK's timeouts are TimeoutErrors.
  return typeof code === "string" || name === "TimeoutError";
}

/** "connection refused" rather than "connect ECONNREFUSED ::1:4569"; Node's own message otherwise. */
function describeNetworkError(err: unknown): string {
  const { code, message, errors } = (err ?? {}) as { code?: unknown; message?: unknown; errors?: unknown };
  if (typeof code === "string" && networkReasons[code] !== undefined) return networkReasons[code];
  if (typeof message === "string" && message !== "") return message;
  // Node's connection attempts to several addresses fail with an AggregateError whose own message is empty.
  const first = Array.isArray(errors) ? (errors[0] as { message?: unknown } | undefined) : undefined;
  if (typeof first?.message === "string" && first.message !== "") return first.message;
  return typeof code === "string" ? code : String(err);
}

/** The endpoint for messages: without user information, or AWS's for the region when none is set. */
function endpointOf(settings: S3Settings): string {
  if (settings.endpoint === undefined) return `https://s3.${settings.region}.amazonaws.com`;
  try {
    const url = new URL(settings.endpoint);
    url.username = "";
    url.password = "";
    url.search = "";
    url.hash = "";
    return url.href.replace(/\/$/, "");
  } catch {
    return "(invalid endpoint URL)";
  }
}
