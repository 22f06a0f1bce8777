import { readFile } from "node:fs/promises";
import { registryHostName } from "./reference.js";

export interface RegistryCredentials {
  username: string;
  password: string;
}

/** The names Docker's tools file Docker Hub's credentials under. */
const dockerHubKeys = new Set(["docker.io", "index.docker.io", "registry-1.docker.io", "index.docker.io/v1"]);

/**
 * The credentials for `registry` in a Docker config.json (`{"auths": {"host:port": {"auth":
 * base64("user:pass")}}}`, or `username`/`password` instead of `auth`), or undefined when it has
 * none. Keys may carry a scheme and a path, as `https://index.docker.io/v1/` does. Credential
 * helpers (`credsStore`, `credHelpers`) are not run. A missing file means no credentials; an
 * unreadable or malformed one is the operator's mistake, so it is a plain Error.
 */
export async function loadRegistryCredentials(file: string, registry: string): Promise<RegistryCredentials | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`Cannot read the registry credentials file ${file}: ${(err as Error).message}`);
  }
  let auths: unknown;
  try {
    auths = (JSON.parse(text) as { auths?: unknown } | null)?.auths;
  } catch (err) {
    throw new Error(`The registry credentials file ${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (auths === undefined) return undefined;
  if (typeof auths !== "object" || auths === null) throw new Error(`The registry credentials file ${file} has an "auths" that is not an object.`);

  const wanted = registryKey(registry);
  for (const [key, entry] of Object.entries(auths)) {
    if (registryKey(key) !== wanted) continue;
    const credentials = credentialsOf(entry);
    if (credentials === undefined) throw new Error(`The registry credentials file ${file} has an entry for ${key} without "auth" or "username" and "password".`);
    return credentials;
  }
  return undefined;
}

/** `https://Host:5000/v1/` → `host:5000`; every name of Docker Hub → `docker.io`. */
function registryKey(key: string): string {
  const bare = key.replace(/^[a-z][a-z0-9+.-]*:\/\//i, "").replace(/\/+$/, "").toLowerCase();
  if (dockerHubKeys.has(bare)) return "docker.io";
  const host = bare.split("/")[0]!;
  const hostName = registryHostName(host);
  return dockerHubKeys.has(hostName) ? "docker.io" : host;
}

function credentialsOf(entry: unknown): RegistryCredentials | undefined {
  if (typeof entry !== "object" || entry === null) return undefined;
  const { auth, username, password } = entry as Record<string, unknown>;
  if (typeof auth === "string" && auth !== "") {
    const decoded = Buffer.from(auth, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon === -1) return undefined;
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  if (typeof username === "string" && typeof password === "string") return { username, password };
  return undefined;
}
