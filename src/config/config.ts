import { homedir } from "node:os";
import { join } from "node:path";
import { s3SettingsFromEnv, type S3Settings } from "./s3-settings.js";

/**
 * Server configuration. Every setting has a flag of `microvms serve` and an
 * environment variable (MICROVMS_*); flags win over the environment, which wins
 * over the defaults here.
 */
export interface ServerConfig {
  dataDir: string;
  host: string;
  apiPort: number;
  proxyPort: number;
  /** PostgreSQL connection string; SQLite in the data directory when absent. */
  databaseUrl?: string;
  /** JSON file mapping access keys to accounts; default test/test → 000000000000. */
  accountsFile?: string;
  logLevel: string;
  /** MicroVMs that are not TERMINATED, per account and region. */
  maxLiveMicrovms: number;
  /** What runs MicroVMs: QEMU, or nothing (a control plane alone, where QEMU cannot run). */
  driver: "qemu" | "none";
  /** KVM or TCG, or "auto": KVM when a probe VM boots under it. */
  accel: "auto" | "kvm" | "tcg";
  /** Built base images, the guest initramfs and the acceleration verdict: shareable between data directories. */
  cacheDir: string;
  maxConcurrentBuilds: number;
  /** How long a MicroVM's application may take to listen on its port once its VM starts. */
  startTimeoutSeconds: number;
  /** Where s3:// code artifacts come from (MICROVMS_S3_ENDPOINT, _REGION, _ACCESS_KEY_ID...). */
  s3: S3Settings;
  /** Credentials for OCI registries, in Docker's config.json format (what `docker login` writes). */
  registryCredentialsFile: string;
}

export const defaultDataDir = () => join(homedir(), ".local", "share", "microvms");

type Env = Record<string, string | undefined>;

function oneOf<T extends string>(name: string, text: string | undefined, allowed: readonly T[], fallback: T): T {
  if (text === undefined || text === "") return fallback;
  if (!(allowed as readonly string[]).includes(text)) throw new Error(`${name} must be one of ${allowed.join(", ")}, got '${text}'`);
  return text as T;
}

function intSetting(name: string, text: string | undefined, fallback: number, min: number, max: number): number {
  if (text === undefined || text === "") return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer from ${min} to ${max}, got '${text}'`);
  return n;
}

export function resolveConfig(flags: Partial<Record<keyof ServerConfig, string>>, env: Env = process.env): ServerConfig {
  const pick = (key: keyof ServerConfig, envName: string) => flags[key] ?? env[envName];
  const config: ServerConfig = {
    dataDir: pick("dataDir", "MICROVMS_DATA_DIR") || defaultDataDir(),
    host: pick("host", "MICROVMS_HOST") || "127.0.0.1",
    apiPort: intSetting("api port", pick("apiPort", "MICROVMS_API_PORT"), 9600, 0, 65535),
    proxyPort: intSetting("proxy port", pick("proxyPort", "MICROVMS_PROXY_PORT"), 9601, 0, 65535),
    databaseUrl: pick("databaseUrl", "MICROVMS_DATABASE_URL") || undefined,
    accountsFile: pick("accountsFile", "MICROVMS_ACCOUNTS_FILE") || undefined,
    logLevel: pick("logLevel", "MICROVMS_LOG_LEVEL") || "info",
    maxLiveMicrovms: intSetting("max live MicroVMs", pick("maxLiveMicrovms", "MICROVMS_MAX_LIVE_MICROVMS"), 100, 1, 100_000),
    driver: oneOf("driver", pick("driver", "MICROVMS_DRIVER"), ["qemu", "none"], "qemu"),
    accel: oneOf("acceleration", pick("accel", "MICROVMS_ACCEL"), ["auto", "kvm", "tcg"], "auto"),
    cacheDir: pick("cacheDir", "MICROVMS_CACHE_DIR") || "",
    maxConcurrentBuilds: intSetting("max concurrent builds", pick("maxConcurrentBuilds", "MICROVMS_MAX_CONCURRENT_BUILDS"), 2, 1, 64),
    s3: s3SettingsFromEnv(env),
    registryCredentialsFile: pick("registryCredentialsFile", "MICROVMS_REGISTRY_AUTH_FILE") || join(homedir(), ".docker", "config.json"),
    startTimeoutSeconds: intSetting("start timeout", pick("startTimeoutSeconds", "MICROVMS_START_TIMEOUT_SECONDS"), 120, 1, 3600),
  };
  if (!config.cacheDir) config.cacheDir = join(config.dataDir, "cache");
  if (!config.accountsFile) config.accountsFile = join(config.dataDir, "accounts.json");
  return config;
}
