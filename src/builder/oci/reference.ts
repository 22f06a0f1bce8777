import { Failure } from "../../domain/failure.js";

/**
 * An OCI image reference, `registry/repository:tag` or `registry/repository@sha256:<hex>`, in the
 * grammar of the distribution project's `reference` package, except that the registry is required:
 * a short name such as `ubuntu:22.04` would mean Docker Hub only by convention, and we would rather
 * the user said so.
 */
export interface OciReference {
  /** The reference as the user wrote it, for messages. */
  readonly text: string;
  /** The registry as written, `host` or `host:port` (`[::1]:5000` for IPv6). */
  readonly registry: string;
  /** The repository's path in the registry, lowercase, for example `team/app`. */
  readonly repository: string;
  /** The tag; `latest` when the reference gives neither a tag nor a digest. */
  readonly tag: string | undefined;
  /** `sha256:<64 hex digits>`; when both are given the digest wins and the tag is only a label. */
  readonly digest: string | undefined;
}

const domainLabel = "(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])";
const registryPattern = new RegExp(`^(?:${domainLabel}(?:\\.${domainLabel})*|\\[[0-9A-Fa-f:.]+\\])(?::[0-9]{1,5})?$`);
const pathComponentPattern = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const tagPattern = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const digestPattern = /^sha256:[0-9a-f]{64}$/;
const maxRepositoryLength = 255;

export const defaultTag = "latest";

/** Parses `text` or throws a Failure saying what is wrong with it. */
export function parseOciReference(text: string): OciReference {
  const invalid = (why: string) => new Failure(`OCI image reference ${text} is not valid: ${why}.`);
  if (text === "" || /\s/.test(text)) throw invalid("it is empty or contains white space");

  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!digestPattern.test(digest)) {
      throw invalid(`the digest must be sha256: followed by 64 lowercase hexadecimal digits, not "${digest}"`);
    }
  }

  // A tag follows the last ":" that comes after the last "/"; earlier colons belong to a port.
  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!tagPattern.test(tag)) {
      throw invalid(`the tag "${tag}" may hold only letters, digits, "_", "." and "-", at most 128, and may not start with "." or "-"`);
    }
  }

  const slash = rest.indexOf("/");
  const first = slash === -1 ? rest : rest.slice(0, slash);
  if (slash === -1 || !isRegistry(first)) {
    throw new Failure(
      `OCI image reference ${text} has no registry; Docker Hub short names are not supported. ` +
        `Give registry/repository:tag, for example docker.io/library/ubuntu:22.04 or localhost:5000/app:1.`,
    );
  }
  if (!registryPattern.test(first)) throw invalid(`"${first}" is not a registry host name or address with an optional port`);

  const repository = rest.slice(slash + 1);
  const components = repository.split("/");
  for (const component of components) {
    if (!pathComponentPattern.test(component)) {
      const hint = component !== component.toLowerCase() ? "; repository names must be lowercase" : "";
      throw invalid(`the repository "${repository}" has an invalid part "${component}"${hint}`);
    }
  }
  if (repository.length > maxRepositoryLength) throw invalid(`the repository name is longer than ${maxRepositoryLength} characters`);

  return { text, registry: first, repository, tag: tag ?? (digest === undefined ? defaultTag : undefined), digest };
}

/**
 * Docker's rule for telling a registry from the first part of a repository path: it has a dot or a
 * port, or is `localhost` (an IPv6 address is bracketed).
 */
function isRegistry(part: string): boolean {
  return part.includes(".") || part.includes(":") || part === "localhost" || part.startsWith("[");
}

/** The host name of a registry without its port or IPv6 brackets, lowercase. */
export function registryHostName(registry: string): string {
  const host = registry.startsWith("[") ? registry.slice(1, registry.indexOf("]")) : registry.split(":")[0]!;
  return host.toLowerCase();
}

/**
 * Registries we talk to over plain HTTP: only those on this machine. Anywhere else a registry's
 * answers, and the credentials we send it, travel over HTTPS.
 */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registryHostName(registry);
  return host === "localhost" || /^127(?:\.[0-9]{1,3}){3}$/.test(host) || host === "::1";
}
