/**
 * A client of the distribution API (`/v2/`) for one repository, reading only.
 *
 *   GET /v2/<repo>/manifests/<tag|digest> ─┬─ 2xx ─ manifest (its sha256 checked against a digest reference)
 *   GET /v2/<repo>/blobs/<digest>          ├─ 401 WWW-Authenticate: Bearer realm,service,scope
 *                                          │    └─ GET realm?service&scope (Basic credentials if any) ─ token ─ retry
 *                                          ├─ 401 WWW-Authenticate: Basic ─ retry with Basic credentials
 *                                          └─ 3xx ─ follow (a blob is often served from storage elsewhere)
 *
 * Blobs are hashed while they stream and refused if the bytes do not match their digest and size.
 * Plain HTTP is used only for registries on this machine; credentials never leave over HTTP to
 * another host, and are not carried across a redirect to another origin.
 */
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { Failure } from "../../domain/failure.js";
import { readingFrom } from "../unpack.js";
import type { RegistryCredentials } from "./credentials.js";
import { manifestMediaTypes } from "./manifest.js";
import { isLoopbackRegistry, registryHostName, type OciReference } from "./reference.js";

/** The distribution project refuses manifests larger than this, and so do we. */
const maxManifestBytes = 4 * 1024 * 1024;
const maxRedirects = 5;
const redirectStatuses = new Set([301, 302, 303, 307, 308]);

export interface FetchedManifest {
  /** The sha256 of the manifest's bytes, as a registry names it. */
  digest: string;
  /** The Content-Type it was served with, without parameters. */
  contentType: string | undefined;
  json: unknown;
}

export class RegistryClient {
  readonly #reference: OciReference;
  readonly #credentials: RegistryCredentials | undefined;
  /** `https://host:port/v2/<repository>/` */
  readonly #base: string;
  readonly #repository: string;
  /** The Authorization header that last worked, reused until the registry refuses it. */
  #authorization: string | undefined;

  constructor(reference: OciReference, credentials?: RegistryCredentials) {
    this.#reference = reference;
    this.#credentials = credentials;
    const { host, repository } = apiLocation(reference);
    this.#repository = repository;
    this.#base = `${isLoopbackRegistry(reference.registry) ? "http" : "https"}://${host}/v2/${repository}/`;
  }

  /** The manifest or index that `tagOrDigest` names, or undefined if the registry has none. */
  async manifest(tagOrDigest: string): Promise<FetchedManifest | undefined> {
    const accept = Object.values(manifestMediaTypes).join(", ");
    const response = await this.#get(`${this.#base}manifests/${tagOrDigest}`, { accept });
    if (response.status === 404) {
      await discard(response);
      return undefined;
    }
    if (!response.ok) throw await this.#unexpected(response);
    const body = await this.#readAll(response, maxManifestBytes, `its manifest ${tagOrDigest}`);
    const digest = sha256Digest(body);
    const served = response.headers.get("docker-content-digest");
    if (tagOrDigest.startsWith("sha256:") && digest !== tagOrDigest) throw this.#mismatch(tagOrDigest, digest);
    if (served?.startsWith("sha256:") && served !== digest) throw this.#mismatch(served, digest);
    let json: unknown;
    try {
      json = JSON.parse(body.toString("utf8"));
    } catch {
      throw new Failure(`OCI image ${this.#reference.text} has a manifest that is not valid JSON.`);
    }
    const contentType = response.headers.get("content-type")?.split(";")[0]?.trim() || undefined;
    return { digest, contentType, json };
  }

  /** A small blob (an image config), checked against its digest and size. */
  async blob(digest: string, size: number, maxBytes: number, what: string): Promise<Buffer> {
    if (size > maxBytes) throw new Failure(`OCI image ${this.#reference.text} has ${what} of ${size} bytes; at most ${maxBytes} are accepted.`);
    const response = await this.#getBlob(digest, what);
    const body = await this.#readAll(response, size, what);
    this.#check(digest, size, body.length, sha256Digest(body));
    return body;
  }

  /** Downloads a blob into a new file at `path`, hashing it as it arrives. */
  async downloadBlob(digest: string, size: number, path: string, what: string): Promise<void> {
    const response = await this.#getBlob(digest, what);
    const hash = createHash("sha256");
    let received = 0;
    const check = this.#check.bind(this);
    await pipeline(
      this.#bodyOf(response, what),
      async function* (chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          received += chunk.length;
          if (received > size) check(digest, size, received, undefined);
          hash.update(chunk);
          yield chunk;
        }
      },
      createWriteStream(path, { flags: "wx" }),
    );
    this.#check(digest, size, received, `sha256:${hash.digest("hex")}`);
  }

  async #getBlob(digest: string, what: string): Promise<Response> {
    const response = await this.#get(`${this.#base}blobs/${digest}`, {});
    if (response.status === 404) {
      await discard(response);
      throw new Failure(`OCI image ${this.#reference.text} refers to ${what} ${digest}, which the registry does not have.`);
    }
    if (!response.ok) throw await this.#unexpected(response);
    return response;
  }

  /** A GET that authenticates when the registry asks, once per request. */
  async #get(url: string, headers: Record<string, string>): Promise<Response> {
    let response = await this.#send(url, headers, this.#authorization);
    if (response.status === 401) {
      const challenge = response.headers.get("www-authenticate");
      await discard(response);
      this.#authorization = await this.#authorize(challenge);
      response = await this.#send(url, headers, this.#authorization);
    }
    if (response.status === 401 || response.status === 403) {
      await discard(response);
      throw this.#refused();
    }
    return response;
  }

  /** The Authorization header that answers `challenge`, a WWW-Authenticate header. */
  async #authorize(challenge: string | null): Promise<string> {
    const challenges = parseChallenges(challenge ?? "");
    const bearer = challenges.find((c) => c.scheme === "bearer");
    const basic = challenges.find((c) => c.scheme === "basic");
    const credentials = this.#credentials;
    if (bearer !== undefined) {
      return `Bearer ${await this.#token(bearer.params)}`;
    }
    if (basic !== undefined && credentials !== undefined) {
      return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64")}`;
    }
    throw this.#refused();
  }

  /** Asks the token service named by a Bearer challenge for a token (the Docker token protocol). */
  async #token(params: Map<string, string>): Promise<string> {
    const realm = params.get("realm");
    let url: URL;
    try {
      url = new URL(realm ?? "");
    } catch {
      throw new Failure(`OCI image ${this.#reference.text} cannot be fetched: the registry named an invalid token service ${JSON.stringify(realm)}.`);
    }
    this.#checkTransport(url);
    const service = params.get("service");
    if (service !== undefined) url.searchParams.set("service", service);
    url.searchParams.set("scope", params.get("scope") ?? `repository:${this.#repository}:pull`);
    const credentials = this.#credentials;
    const authorization = credentials === undefined ? undefined : `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64")}`;
    const response = await this.#send(url.href, { accept: "application/json" }, authorization);
    if (response.status === 401 || response.status === 403) {
      await discard(response);
      throw this.#refused();
    }
    if (!response.ok) throw await this.#unexpected(response, "token service");
    const body = await this.#readAll(response, maxManifestBytes, "a token");
    let token: unknown;
    try {
      const json = JSON.parse(body.toString("utf8")) as Record<string, unknown>;
      token = json.token ?? json.access_token;
    } catch {
      // reported below
    }
    if (typeof token !== "string" || token === "") {
      throw new Failure(`OCI image ${this.#reference.text} cannot be fetched: the registry's token service ${url.origin} answered without a token.`);
    }
    return token;
  }

  /** One GET, following redirects; Authorization goes only to the origin it was meant for. */
  async #send(url: string, headers: Record<string, string>, authorization: string | undefined): Promise<Response> {
    let target = new URL(url);
    const origin = target.origin;
    for (let hops = 0; ; hops++) {
      const sent = { ...headers, ...(authorization !== undefined && target.origin === origin ? { authorization } : {}) };
      let response: Response;
      try {
        response = await fetch(target, { headers: sent, redirect: "manual" });
      } catch (err) {
        throw new Failure(
          `OCI image ${this.#reference.text} cannot be fetched: the registry at ${target.host} cannot be reached (${describeFetchError(err)}).`,
        );
      }
      const location = response.headers.get("location");
      if (!redirectStatuses.has(response.status) || location === null) return response;
      await discard(response);
      if (hops === maxRedirects) {
        throw new Failure(`OCI image ${this.#reference.text} cannot be fetched: the registry redirected more than ${maxRedirects} times.`);
      }
      target = new URL(location, target);
      this.#checkTransport(target);
    }
  }

  #checkTransport(url: URL): void {
    if (url.protocol === "https:") return;
    if (url.protocol === "http:" && isLoopbackRegistry(url.host)) return;
    throw new Failure(
      `OCI image ${this.#reference.text} cannot be fetched: the registry sent us to ${url.origin}; only HTTPS is used except on this machine.`,
    );
  }

  #bodyOf(response: Response, what: string): AsyncIterable<Buffer> {
    if (response.body === null) return Readable.from([]);
    const stream = Readable.fromWeb(response.body as WebReadableStream<Uint8Array>);
    return readingFrom(stream, (err) => new Failure(`OCI image ${this.#reference.text} cannot be fetched: reading ${what} from the registry failed (${describeFetchError(err)}).`));
  }

  async #readAll(response: Response, maxBytes: number, what: string): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const chunk of this.#bodyOf(response, what)) {
      length += chunk.length;
      if (length > maxBytes) {
        throw new Failure(`OCI image ${this.#reference.text} cannot be fetched: the registry sent more than ${maxBytes} bytes for ${what}.`);
      }
      chunks.push(chunk);
    }
    return Buffer.concat(chunks);
  }

  /** Throws unless `received` bytes hashing to `actual` are what `digest` and `size` promise. */
  #check(digest: string, size: number, received: number, actual: string | undefined): void {
    if (received !== size) {
      throw new Failure(
        `OCI image ${this.#reference.text} failed verification: the registry sent ${received} bytes for ${digest}, whose manifest says ${size}.`,
      );
    }
    if (actual !== undefined && actual !== digest) throw this.#mismatch(digest, actual);
  }

  #mismatch(expected: string, actual: string): Failure {
    return new Failure(
      `OCI image ${this.#reference.text} failed verification: the registry sent content for ${expected} whose digest is ${actual}.`,
    );
  }

  #refused(): Failure {
    return new Failure(`The registry refused access to ${this.#reference.text}; configure credentials for ${this.#reference.registry}.`);
  }

  async #unexpected(response: Response, who = "registry"): Promise<Failure> {
    const body = await this.#readAll(response, 64 * 1024, "an error").catch(() => Buffer.alloc(0));
    const detail = errorDetail(body.toString("utf8"));
    return new Failure(
      `OCI image ${this.#reference.text} cannot be fetched: the ${who} answered ${response.status} ${response.statusText}${detail}.`,
    );
  }
}

/** Where the API lives: Docker Hub's names map to its API host, and its one-part names to `library/`. */
function apiLocation(reference: OciReference): { host: string; repository: string } {
  const host = registryHostName(reference.registry);
  if (host === "docker.io" || host === "index.docker.io") {
    return { host: "registry-1.docker.io", repository: reference.repository.includes("/") ? reference.repository : `library/${reference.repository}` };
  }
  return { host: reference.registry, repository: reference.repository };
}

export function sha256Digest(data: Buffer): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

export interface Challenge {
  /** Lowercase: `bearer`, `basic`. */
  scheme: string;
  params: Map<string, string>;
}

/**
 * The challenges of a WWW-Authenticate header (RFC 9110 section 11.6.1), for example
 * `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:app:pull"`.
 * Parameter names are lowercase; quoted values are unescaped.
 */
export function parseChallenges(header: string): Challenge[] {
  const challenges: Challenge[] = [];
  const separators = /[\s,]*/y;
  const scheme = /([!#$%&'*+.^_`|~0-9A-Za-z-]+)/y;
  const param = /\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)/y;
  const token68 = /\s+[A-Za-z0-9._~+/-]+=*\s*(?:,|$)/y;
  let at = 0;
  const match = (pattern: RegExp) => {
    pattern.lastIndex = at;
    const found = pattern.exec(header);
    if (found !== null) at = pattern.lastIndex;
    return found;
  };
  while (at < header.length) {
    match(separators);
    const name = match(scheme);
    if (name === null) break;
    const challenge: Challenge = { scheme: name[1]!.toLowerCase(), params: new Map() };
    challenges.push(challenge);
    for (let found = match(param); found !== null; found = match(param)) {
      challenge.params.set(found[1]!.toLowerCase(), found[2] !== undefined ? found[2].replace(/\\(.)/g, "$1") : found[3]!);
    }
    if (challenge.params.size === 0) match(token68);
  }
  return challenges;
}

function describeFetchError(err: unknown): string {
  const cause = (err as { cause?: unknown } | undefined)?.cause;
  const inner = cause instanceof Error ? cause : err instanceof Error ? err : undefined;
  const code = (inner as NodeJS.ErrnoException | undefined)?.code;
  if (inner === undefined) return String(err);
  return code !== undefined && !inner.message.includes(code) ? `${code}: ${inner.message}` : inner.message;
}

/** The first error of a distribution API error body (`{"errors":[{"code","message"}]}`), if any. */
function errorDetail(body: string): string {
  try {
    const first = (JSON.parse(body) as { errors?: { code?: unknown; message?: unknown }[] }).errors?.[0];
    if (first !== undefined && typeof first.message === "string") return `: ${typeof first.code === "string" ? `${first.code} ` : ""}${first.message}`;
  } catch {
    // not JSON
  }
  return "";
}

async function discard(response: Response): Promise<void> {
  await response.body?.cancel().catch(() => {});
}
