import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import assert from "node:assert/strict";
import { ApiError, MicrovmsClient } from "../../src/client/client.js";
import { resolveConfig } from "../../src/config/config.js";
import { projectRoot } from "../../src/paths.js";
import { startServer, type RunningServer } from "../../src/server.js";

/** A real server on a free port with its own data directory, and a client for it. */
export interface TestServer {
  server: RunningServer;
  client: MicrovmsClient;
  dataDir: string;
  /** A client signing with another account's keys (222222222222). */
  otherAccount: MicrovmsClient;
  /** Stops the server and removes its data directory. */
  stop(): Promise<void>;
  /** Stops the server as `serve` does (running VMs are left to adopt) and keeps its data directory, for a restart on it. */
  close(): Promise<void>;
}

/**
 * Without a VM driver by default: the API suites test the control plane, and
 * MicroVMs there stay PENDING. `startVmTestServer` runs real QEMU guests.
 */
export async function startTestServer(
  env: Record<string, string> = {},
  dataDir = mkdtempSync(join(tmpdir(), "microvms-test-")),
): Promise<TestServer> {
  const accountsFile = join(dataDir, "accounts.json");
  writeFileSync(
    accountsFile,
    JSON.stringify({
      credentials: [
        { accessKeyId: "test", secretAccessKey: "test", accountId: "000000000000" },
        { accessKeyId: "other", secretAccessKey: "other-secret", accountId: "222222222222" },
      ],
    }),
  );
  const config = resolveConfig({ dataDir, apiPort: "0", proxyPort: "0", accountsFile }, { MICROVMS_DRIVER: "none", ...env });
  const server = await startServer(config, pino({ level: process.env.MICROVMS_TEST_LOG_LEVEL ?? "silent" }));
  return {
    server,
    dataDir,
    client: new MicrovmsClient({ endpoint: server.apiUrl }),
    otherAccount: new MicrovmsClient({ endpoint: server.apiUrl, accessKeyId: "other", secretAccessKey: "other-secret" }),
    async stop() {
      await server.close({ stopVms: true });
      rmSync(dataDir, { recursive: true, force: true });
    },
    close: () => server.close(),
  };
}

/**
 * Base images, the initramfs and the acceleration verdict are shared by every
 * test server (and kept between runs), so each is built once.
 */
export const testCacheDir = process.env.MICROVMS_TEST_CACHE_DIR ?? join(projectRoot, ".cache", "test");

/** A server with the QEMU driver: real guests, under KVM where it works, else TCG. */
export function startVmTestServer(env: Record<string, string> = {}, dataDir?: string): Promise<TestServer> {
  return startTestServer({ MICROVMS_DRIVER: "qemu", MICROVMS_CACHE_DIR: testCacheDir, ...env }, dataDir);
}

/** Polls `check` until it returns a value, for states the engine reaches on its own. */
export async function eventually<T>(check: () => Promise<T | undefined>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const BUILD_ROLE = "arn:aws:iam::000000000000:role/build";
export const BUSYBOX = "arn:aws:lambda:us-east-1:aws:microvm-image:busybox";

export function imageInput(name: string, extra: Record<string, unknown> = {}) {
  return {
    name,
    baseImageArn: BUSYBOX,
    buildRoleArn: BUILD_ROLE,
    codeArtifact: { uri: "file:///tmp/app.zip" },
    ...extra,
  };
}

/** Asserts that a client call fails with this status and error type (and message). */
export function rejectsWith(promise: Promise<unknown>, status: number, errorType: string, message?: RegExp): Promise<void> {
  return assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof ApiError, String(e));
    assert.deepEqual([e.status, e.errorType], [status, errorType]);
    if (message) assert.match(String(e.body.message), message);
    return true;
  });
}
