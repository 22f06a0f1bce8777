import { Failure } from "../../domain/failure.js";

/** What we send as Accept for a manifest: both OCI and Docker's schema 2, single images and indexes. */
export const manifestMediaTypes = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
} as const;

const indexTypes = new Set<string>([manifestMediaTypes.ociIndex, manifestMediaTypes.dockerList]);
const imageTypes = new Set<string>([manifestMediaTypes.ociManifest, manifestMediaTypes.dockerManifest]);
const dockerSchema1Types = new Set(["application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws"]);

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
}

export type Manifest = { kind: "index"; manifests: Descriptor[] } | { kind: "image"; config: Descriptor; layers: Descriptor[] };

/** The platform our guests run. */
export const guestPlatform: Platform = { os: "linux", architecture: "amd64" };

/**
 * Reads a manifest or index. Its kind comes from its own `mediaType`, else from the Content-Type it
 * was served with, else from its shape (OCI allows leaving `mediaType` out).
 */
export function parseManifest(reference: string, json: unknown, contentType: string | undefined): Manifest {
  const invalid = (why: string) => new Failure(`OCI image ${reference} has an invalid manifest: ${why}.`);
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw invalid("it is not a JSON object");
  const doc = json as Record<string, unknown>;
  const declared = typeof doc.mediaType === "string" ? doc.mediaType : contentType;
  if (declared !== undefined && dockerSchema1Types.has(declared)) {
    throw new Failure(`OCI image ${reference} has a Docker schema 1 manifest, which is not supported; push it again with a current client.`);
  }
  const isIndex = declared !== undefined && indexTypes.has(declared) ? true : declared !== undefined && imageTypes.has(declared) ? false : Array.isArray(doc.manifests);
  if (doc.schemaVersion !== 2) throw invalid("its schemaVersion is not 2");
  if (isIndex) {
    if (!Array.isArray(doc.manifests)) throw invalid('it has no "manifests" list');
    return { kind: "index", manifests: doc.manifests.map((entry) => parseDescriptor(entry, invalid)) };
  }
  if (!Array.isArray(doc.layers)) throw invalid('it has no "layers" list');
  return { kind: "image", config: parseDescriptor(doc.config, invalid), layers: doc.layers.map((entry) => parseDescriptor(entry, invalid)) };
}

function parseDescriptor(value: unknown, invalid: (why: string) => Failure): Descriptor {
  if (typeof value !== "object" || value === null) throw invalid("a descriptor is not an object");
  const { mediaType, digest, size, platform } = value as Record<string, unknown>;
  if (typeof digest !== "string" || !/^sha256:[0-9a-f]{64}$/.test(digest)) {
    const otherAlgorithm = typeof digest === "string" && /^[a-z0-9+._-]+:/.test(digest) && !digest.startsWith("sha256:");
    throw invalid(otherAlgorithm ? `it refers to ${digest}; only sha256 digests are supported` : `a descriptor has an invalid digest ${JSON.stringify(digest)}`);
  }
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) throw invalid(`the descriptor of ${digest} has an invalid size`);
  const descriptor: Descriptor = { mediaType: typeof mediaType === "string" ? mediaType : "", digest, size };
  if (typeof platform === "object" && platform !== null) {
    const { os, architecture, variant } = platform as Record<string, unknown>;
    if (typeof os === "string" && typeof architecture === "string") {
      descriptor.platform = { os, architecture, ...(typeof variant === "string" ? { variant } : {}) };
    }
  }
  return descriptor;
}

/**
 * The entry of an index for our guests' platform: linux/amd64, preferring one without a variant
 * (or `v1`, the baseline) over the newer amd64 micro-architecture levels.
 */
export function selectPlatform(reference: string, manifests: Descriptor[]): Descriptor {
  const matching = manifests.filter((m) => m.platform?.os === guestPlatform.os && m.platform.architecture === guestPlatform.architecture);
  const baseline = matching.find((m) => m.platform?.variant === undefined || m.platform.variant === "v1");
  const chosen = baseline ?? matching[0];
  if (chosen !== undefined) return chosen;
  const offered = [...new Set(manifests.filter((m) => m.platform !== undefined && m.platform.os !== "unknown").map((m) => platformName(m.platform!)))];
  throw new Failure(
    `OCI image ${reference} has no linux/amd64 image; its index offers ${offered.length === 0 ? "no platforms" : offered.join(", ")}.`,
  );
}

export function platformName(platform: Platform): string {
  return [platform.os, platform.architecture, platform.variant].filter((part) => part !== undefined && part !== "").join("/");
}

/** Config media types of container images; any other config marks an artifact that is not an image. */
export const imageConfigMediaTypes = new Set(["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"]);

/** How the application starts, from an image config's `config` object. */
export interface OciImageConfig {
  entrypoint: string[];
  cmd: string[];
  workingDir?: string;
  /** `NAME=value` pairs. */
  env: string[];
  user?: string;
}

/** Reads an image config blob: its platform, which must be ours, and how the application starts. */
export function parseImageConfig(reference: string, json: unknown): OciImageConfig {
  const invalid = (why: string) => new Failure(`OCI image ${reference} has an invalid image config: ${why}.`);
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw invalid("it is not a JSON object");
  const doc = json as Record<string, unknown>;
  if (typeof doc.os === "string" && typeof doc.architecture === "string" && (doc.os !== guestPlatform.os || doc.architecture !== guestPlatform.architecture)) {
    const variant = typeof doc.variant === "string" ? doc.variant : undefined;
    throw new Failure(
      `OCI image ${reference} is built for ${platformName({ os: doc.os, architecture: doc.architecture, ...(variant ? { variant } : {}) })}; ` +
        `MicroVMs run linux/amd64 images.`,
    );
  }
  const config = doc.config ?? {};
  if (typeof config !== "object" || config === null || Array.isArray(config)) throw invalid('its "config" is not an object');
  const { Entrypoint, Cmd, WorkingDir, Env, User } = config as Record<string, unknown>;
  const strings = (value: unknown, field: string): string[] => {
    if (value === undefined || value === null) return [];
    if (!Array.isArray(value) || !value.every((item) => typeof item === "string")) throw invalid(`its ${field} is not a list of strings`);
    return value as string[];
  };
  const text = (value: unknown, field: string): string | undefined => {
    if (value === undefined || value === null || value === "") return undefined;
    if (typeof value !== "string") throw invalid(`its ${field} is not a string`);
    return value;
  };
  const result: OciImageConfig = { entrypoint: strings(Entrypoint, "Entrypoint"), cmd: strings(Cmd, "Cmd"), env: strings(Env, "Env") };
  const workingDir = text(WorkingDir, "WorkingDir");
  const user = text(User, "User");
  if (workingDir !== undefined) result.workingDir = workingDir;
  if (user !== undefined) result.user = user;
  return result;
}
