import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import * as tar from "tar";

/**
 * A real OCI registry for tests: Debian's docker-registry (the CNCF
 * distribution registry) on loopback, an OCI image layout written by the test,
 * and skopeo to push it, so the pulling side meets an independent client's work.
 */
const run = promisify(execFile);
const sha256 = (data: Buffer | string) => `sha256:${createHash("sha256").update(data).digest("hex")}`;


export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os: string; architecture: string; variant?: string };
}

export const mediaTypes = {
  layer: "application/vnd.oci.image.layer.v1.tar+gzip",
  config: "application/vnd.oci.image.config.v1+json",
  manifest: "application/vnd.oci.image.manifest.v1+json",
  index: "application/vnd.oci.image.index.v1+json",
};

export class OciLayout {
  readonly #refs: (Descriptor & { annotations: Record<string, string> })[] = [];

  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await mkdir(join(this.dir, "blobs", "sha256"), { recursive: true });
    await writeFile(join(this.dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  }

  async blob(data: Buffer | string, mediaType: string): Promise<Descriptor> {
    const digest = sha256(data);
    await writeFile(join(this.dir, "blobs", "sha256", digest.slice("sha256:".length)), data);
    return { mediaType, digest, size: Buffer.byteLength(data) };
  }

  json(value: unknown, mediaType: string): Promise<Descriptor> {
    return this.blob(JSON.stringify(value), mediaType);
  }

  async tag(name: string, descriptor: Descriptor): Promise<void> {
    this.#refs.push({ ...descriptor, annotations: { "org.opencontainers.image.ref.name": name } });
    await writeFile(join(this.dir, "index.json"), JSON.stringify({ schemaVersion: 2, mediaType: mediaTypes.index, manifests: this.#refs }));
  }
}

/** A gzip layer made with the tar package from the files under `source`. */
export async function tarLayer(layout: OciLayout, source: string): Promise<{ layer: Descriptor; diffId: string }> {
  const chunks: Buffer[] = [];
  const names = (await readdir(source)).sort();
  for await (const chunk of tar.create({ cwd: source, portable: true }, names)) chunks.push(Buffer.from(chunk as Buffer));
  const plain = Buffer.concat(chunks);
  return { layer: await layout.blob(gzipSync(plain), mediaTypes.layer), diffId: sha256(plain) };
}

/** Pushes tag `tag` of the OCI layout with skopeo (an independent, real client) and returns the digest it pushed. */
export async function pushImage(layout: string, tag: string, destination: string, workDir: string, extra: string[] = []): Promise<string> {
  const digestFile = join(workDir, "digest");
  await run("skopeo", ["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--digestfile", digestFile, ...extra, `oci:${layout}:${tag}`, `docker://${destination}:${tag}`]);
  return (await readFile(digestFile, "utf8")).trim();
}


export interface Registry {
  host: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts docker-registry with filesystem storage under `work` and `extraConfig` (YAML at the top level), and waits until it answers. */
export async function startRegistryIn(work: string, extraConfig = ""): Promise<Registry> {
  await mkdir(work, { recursive: true });
  const port = await freePort();
  const configPath = join(work, "config.yml");
  await writeFile(
    configPath,
    [
      "version: 0.1",
      "log:",
      "  level: error",
      "  accesslog:",
      "    disabled: true",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${join(work, "storage")}`,
      "http:",
      `  addr: 127.0.0.1:${port}`,
      extraConfig,
    ].join("\n"),
  );
  const child: ChildProcess = spawn("/usr/bin/docker-registry", ["serve", configPath], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let running = true;
  void exited.then(() => (running = false));
  const stop = async () => {
    if (running && child.pid !== undefined) process.kill(child.pid);
    await exited;
  };
  // Waits for the registry to answer, for at most 200 attempts; a registry that exits fails at once.
  for (let attempt = 0; ; attempt++) {
    if (!running) throw new Error(`docker-registry exited: ${stderr}`);
    const answered = await fetch(`http://127.0.0.1:${port}/v2/`).then(
      (response) => response.status === 200 || response.status === 401,
      () => false,
    );
    if (answered) return { host: `127.0.0.1:${port}`, stop };
    if (attempt === 200) {
      await stop();
      throw new Error(`docker-registry did not answer on port ${port}: ${stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

