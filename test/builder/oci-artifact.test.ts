/**
 * OCI images from a registry as code artifacts.
 *
 * The end-to-end cases run Debian's docker-registry (the CNCF distribution registry) on loopback and
 * push a test image into it with skopeo, an independent client: the image is an OCI layout the test
 * builds itself, two gzip layers where the second deletes files of the first with whiteouts. The
 * case with htpasswd (Basic) credentials needs `htpasswd` (apache2-utils) and is skipped without it;
 * the token (Bearer) case runs a token service of the test's own next to the registry.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, generateKeyPairSync, randomUUID, sign, type KeyObject } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, readlink, stat, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { after, before, describe, it } from "node:test";
import forge from "node-forge";
import * as tar from "tar";
import { Failure } from "../../src/domain/failure.js";
import { loadRegistryCredentials } from "../../src/builder/oci/credentials.js";
import { checkLayerMediaType, LayerStack, regularFileBytes } from "../../src/builder/oci/layers.js";
import { selectPlatform } from "../../src/builder/oci/manifest.js";
import { fetchOciImage, isOciReference, type OciImageConfig } from "../../src/builder/oci/oci-image.js";
import { isLoopbackRegistry, parseOciReference } from "../../src/builder/oci/reference.js";
import { parseChallenges } from "../../src/builder/oci/registry.js";
import { freePort, mediaTypes, OciLayout, pushImage, startRegistryIn, tarLayer, type Descriptor, type Registry } from "../support/oci-registry.js";
import { assertRejects, exists, scratchRoot } from "./support.js";

const run = promisify(execFile);

const freshDir = scratchRoot("microvms-oci-");

const sha256 = (data: Buffer | string) => `sha256:${createHash("sha256").update(data).digest("hex")}`;

// ---------------------------------------------------------------------------------------------------
// Tar layers written header by header, for unit tests that need exact entries and order.

interface RawEntry {
  path: string;
  type?: "File" | "Directory" | "SymbolicLink" | "Link";
  content?: string;
  linkpath?: string;
  mode?: number;
}

function rawTar(entries: RawEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const { path, type = "File", content = "", linkpath, mode } of entries) {
    const body = Buffer.from(type === "File" ? content : "");
    const header = new tar.Header({ path, type, linkpath, size: body.length, mode: mode ?? (type === "Directory" ? 0o755 : 0o644), mtime: new Date(0) });
    header.encode();
    blocks.push(header.block!, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

const file = (path: string, content = "", mode?: number): RawEntry => ({ path, content, ...(mode === undefined ? {} : { mode }) });
const dir = (path: string): RawEntry => ({ path, type: "Directory" });
const link = (path: string, linkpath: string): RawEntry => ({ path, type: "SymbolicLink", linkpath });
const hardlink = (path: string, linkpath: string): RawEntry => ({ path, type: "Link", linkpath });

/** Applies layers (lowest first) to a fresh root; a layer is gzip-compressed unless `plain`. */
async function applyLayers(layers: RawEntry[][], opts: { max?: number; plain?: boolean } = {}): Promise<{ rootDir: string; stack: LayerStack }> {
  const work = await freshDir("layers");
  const rootDir = join(work, "root");
  await mkdir(rootDir);
  const stack = new LayerStack("registry.test/app:1", rootDir, opts.max);
  for (const [index, entries] of layers.entries()) {
    const path = join(work, `layer-${index}`);
    await writeFile(path, opts.plain ? rawTar(entries) : gzipSync(rawTar(entries)));
    await stack.apply(path);
  }
  return { rootDir, stack };
}

describe("OCI image references", () => {
  it("parses a registry with a port, a repository path and a tag", () => {
    assert.deepEqual(parseOciReference("localhost:5000/team/app:1.0"), {
      text: "localhost:5000/team/app:1.0",
      registry: "localhost:5000",
      repository: "team/app",
      tag: "1.0",
      digest: undefined,
    });
  });

  it("defaults the tag to latest", () => {
    const ref = parseOciReference("registry.example.com/app");
    assert.equal(ref.tag, "latest");
    assert.equal(ref.digest, undefined);
  });

  it("parses an ECR URI", () => {
    const ref = parseOciReference("123456789012.dkr.ecr.us-east-1.amazonaws.com/my-repo/app:v2");
    assert.equal(ref.registry, "123456789012.dkr.ecr.us-east-1.amazonaws.com");
    assert.equal(ref.repository, "my-repo/app");
    assert.equal(ref.tag, "v2");
  });

  it("parses a digest, which wins over a tag", () => {
    const digest = `sha256:${"a".repeat(64)}`;
    assert.deepEqual(parseOciReference(`127.0.0.1:5000/app@${digest}`), {
      text: `127.0.0.1:5000/app@${digest}`,
      registry: "127.0.0.1:5000",
      repository: "app",
      tag: undefined,
      digest,
    });
    const both = parseOciReference(`localhost/app:1@${digest}`);
    assert.equal(both.tag, "1");
    assert.equal(both.digest, digest);
  });

  it("parses an IPv6 registry", () => {
    const ref = parseOciReference("[::1]:5000/app:v1");
    assert.equal(ref.registry, "[::1]:5000");
    assert.equal(ref.repository, "app");
    assert.equal(ref.tag, "v1");
  });

  it("refuses Docker Hub short names, saying what to write instead", () => {
    for (const text of ["ubuntu:22.04", "ubuntu", "library/ubuntu:22.04"]) {
      assert.throws(
        () => parseOciReference(text),
        (err: unknown) =>
          err instanceof Failure &&
          err.message.includes(text) &&
          err.message.includes("Docker Hub short names are not supported") &&
          err.message.includes("registry/repository:tag"),
      );
    }
  });

  it("refuses invalid repositories, tags and digests", () => {
    const cases: [string, RegExp][] = [
      ["localhost:5000/App:1", /must be lowercase/],
      ["localhost:5000/app:-bad", /the tag "-bad"/],
      ["localhost:5000/app@sha256:abc", /the digest must be sha256:/],
      [`localhost:5000/app@sha512:${"a".repeat(128)}`, /the digest must be sha256:/],
      ["localhost:5000//app", /invalid part ""/],
      ["local_host:5000/app", /not a registry host name/],
      ["", /empty/],
    ];
    for (const [text, message] of cases) {
      assert.throws(() => parseOciReference(text), (err: unknown) => err instanceof Failure && message.test(err.message), text);
    }
  });

  it("tells image references from URIs", () => {
    assert.equal(isOciReference("localhost:5000/app:1"), true);
    assert.equal(isOciReference("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1"), true);
    assert.equal(isOciReference("file:///tmp/app.zip"), false);
    assert.equal(isOciReference("s3://bucket/key"), false);
  });

  it("uses plain HTTP only for registries on this machine", () => {
    for (const registry of ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"]) assert.equal(isLoopbackRegistry(registry), true, registry);
    for (const registry of ["registry.example.com", "10.0.0.1:5000", "localhost.example.com", "[::2]:5000", "1270.0.0.1"]) {
      assert.equal(isLoopbackRegistry(registry), false, registry);
    }
  });
});

describe("registry protocol details", () => {
  it("parses WWW-Authenticate challenges", () => {
    const [bearer, basic, ...rest] = parseChallenges(
      'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull", Basic realm="say \\"hi\\""',
    );
    assert.equal(rest.length, 0);
    assert.equal(bearer?.scheme, "bearer");
    assert.deepEqual(Object.fromEntries(bearer!.params), {
      realm: "https://auth.example/token",
      service: "registry.example",
      scope: "repository:team/app:pull",
    });
    assert.equal(basic?.scheme, "basic");
    assert.equal(basic?.params.get("realm"), 'say "hi"');
    assert.deepEqual(
      parseChallenges("Basic realm=registry").map((c) => [c.scheme, Object.fromEntries(c.params)]),
      [["basic", { realm: "registry" }]],
    );
  });

  it("picks linux/amd64 from an index, preferring the baseline variant", () => {
    const entry = (digit: string, architecture: string, variant?: string) => ({
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: `sha256:${digit.repeat(64)}`,
      size: 1,
      platform: { os: "linux", architecture, ...(variant === undefined ? {} : { variant }) },
    });
    const arm = entry("1", "arm64", "v8");
    const v3 = entry("2", "amd64", "v3");
    const baseline = entry("3", "amd64");
    assert.equal(selectPlatform("r/a:1", [arm, v3, baseline]), baseline);
    assert.equal(selectPlatform("r/a:1", [arm, v3]), v3);
    assert.throws(
      () => selectPlatform("r/a:1", [arm, entry("4", "arm", "v7")]),
      (err: unknown) => err instanceof Failure && /^OCI image r\/a:1 has no linux\/amd64 image; its index offers linux\/arm64\/v8, linux\/arm\/v7\.$/.test(err.message),
    );
  });

  it("reads credentials from a Docker config.json by registry", async () => {
    const path = join(await freshDir("creds"), "config.json");
    const auth = (text: string) => ({ auth: Buffer.from(text).toString("base64") });
    await writeFile(
      path,
      JSON.stringify({
        auths: {
          "localhost:5000": auth("alice:pa:ss"),
          "https://registry.example.com/v2/": { username: "bob", password: "secret" },
          "https://index.docker.io/v1/": auth("hub:token"),
        },
      }),
    );
    assert.deepEqual(await loadRegistryCredentials(path, "localhost:5000"), { username: "alice", password: "pa:ss" });
    assert.deepEqual(await loadRegistryCredentials(path, "Registry.Example.com"), { username: "bob", password: "secret" });
    assert.deepEqual(await loadRegistryCredentials(path, "docker.io"), { username: "hub", password: "token" });
    assert.equal(await loadRegistryCredentials(path, "localhost:5001"), undefined);
    assert.equal(await loadRegistryCredentials(join(await freshDir(), "no-such-file.json"), "localhost:5000"), undefined);
  });
});

describe("applying layers", () => {
  it("deletes a file of a lower layer with a whiteout, and leaves no whiteout file", async () => {
    const { rootDir } = await applyLayers([
      [dir("etc"), file("etc/removed.conf", "old"), file("etc/kept.conf", "kept")],
      [dir("etc"), file("etc/.wh.removed.conf")],
    ]);
    assert.deepEqual((await readdir(join(rootDir, "etc"))).sort(), ["kept.conf"]);
  });

  it("deletes a whole directory of a lower layer with a whiteout", async () => {
    const { rootDir } = await applyLayers([[file("opt/tool/bin/run", "x"), file("opt/other", "y")], [file("opt/.wh.tool")]]);
    assert.deepEqual(await readdir(join(rootDir, "opt")), ["other"]);
  });

  for (const markerFirst of [true, false]) {
    it(`empties an opaque directory of what lower layers put there (marker ${markerFirst ? "before" : "after"} the layer's own entries)`, async () => {
      const marker = file("cache/.wh..wh..opq");
      const own = [file("cache/new", "fresh"), file("cache/sub/own", "mine")];
      const { rootDir } = await applyLayers([
        [file("cache/old", "stale"), file("cache/sub/deep", "stale"), file("keep", "k")],
        markerFirst ? [dir("cache"), marker, ...own] : [dir("cache"), ...own, marker],
      ]);
      assert.deepEqual((await readdir(join(rootDir, "cache"))).sort(), ["new", "sub"]);
      assert.deepEqual(await readdir(join(rootDir, "cache", "sub")), ["own"]);
      assert.equal(await readFile(join(rootDir, "keep"), "utf8"), "k");
    });
  }

  it("leaves a file that the whiteout's own layer writes", async () => {
    const { rootDir } = await applyLayers([[file("a", "lower")], [file("a", "upper"), file(".wh.a")]]);
    assert.equal(await readFile(join(rootDir, "a"), "utf8"), "upper");
  });

  it("replaces a directory of a lower layer with a file or a link, and a file with a directory", async () => {
    const { rootDir } = await applyLayers([
      [file("data/x", "1"), file("share/doc/readme", "2"), file("thing", "3")],
      [file("data", "now a file"), link("share/doc", "../other"), dir("thing"), file("thing/inner", "4")],
    ]);
    assert.equal(await readFile(join(rootDir, "data"), "utf8"), "now a file");
    assert.equal(await readlink(join(rootDir, "share", "doc")), "../other");
    assert.equal(await readFile(join(rootDir, "thing", "inner"), "utf8"), "4");
  });

  it("links to a file of a lower layer", async () => {
    const { rootDir } = await applyLayers([[file("lib/real", "code")], [hardlink("bin/alias", "lib/real")]]);
    const [real, alias] = await Promise.all([stat(join(rootDir, "lib", "real")), stat(join(rootDir, "bin", "alias"))]);
    assert.equal(real.ino, alias.ino);
    assert.equal(await regularFileBytes(rootDir), "code".length);
  });

  it("applies uncompressed layers", async () => {
    const { rootDir } = await applyLayers([[file("a", "1"), file("b", "2")], [file(".wh.a")]], { plain: true });
    assert.deepEqual(await readdir(rootDir), ["b"]);
  });

  it("never removes or writes anything through a symbolic link", async () => {
    const outside = await freshDir("outside");
    await writeFile(join(outside, "victim"), "safe");
    const cases: RawEntry[][][] = [
      [[link("link", outside)], [file("link/.wh.victim")]],
      [[link("link", outside)], [file("link/.wh..wh..opq")]],
      // A whiteout removes a directory; the same layer puts a link in its place and writes beneath it.
      [[file("a/f", "1")], [file(".wh.a"), link("a", outside), file("a/victim", "pwned")]],
      [[file("a/f", "1")], [file("a/g", "2"), file(".wh.a"), link("a", outside), file("a/victim", "pwned")]],
    ];
    for (const layers of cases) {
      await assertRejects(applyLayers(layers), /symbolic link|would replace a directory/);
      assert.deepEqual(await readdir(outside), ["victim"]);
      assert.equal(await readFile(join(outside, "victim"), "utf8"), "safe");
    }
  });

  it("refuses whiteouts that leave the root or name nothing", async () => {
    await assertRejects(applyLayers([[file("a", "1")], [file("../.wh.a")]]), /outside the artifact/);
    await assertRejects(applyLayers([[file("a", "1")], [file("dir/.wh..")]]), /names no file/);
    await assertRejects(applyLayers([[file("a", "1")], [file(".wh.")]]), /names no file/);
  });

  it("counts the unpacked bytes of all layers against one limit", async () => {
    const layers = [[file("a", "123456")], [file("b", "123456")]];
    await assertRejects(applyLayers(layers, { max: 10 }), /^OCI image registry\.test\/app:1 is larger than 10 bytes when unpacked/);
    const { stack } = await applyLayers(layers, { max: 12 });
    assert.equal(stack.writtenBytes, 12);
  });

  it("refuses zstd layers with a clear message", async () => {
    const work = await freshDir("zstd");
    await mkdir(join(work, "root"));
    await writeFile(join(work, "layer"), Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]));
    await assertRejects(new LayerStack("r.test/a:1", join(work, "root")).apply(join(work, "layer")), /zstd-compressed layers, which are not supported/);
    assert.throws(() => checkLayerMediaType("r.test/a:1", "sha256:x", "application/vnd.oci.image.layer.v1.tar+zstd"), /zstd/);
    assert.throws(() => checkLayerMediaType("r.test/a:1", "sha256:x", "application/vnd.example.thing"), /not a tar layer/);
    checkLayerMediaType("r.test/a:1", "sha256:x", "application/vnd.docker.image.rootfs.diff.tar.gzip");
  });
});

// ---------------------------------------------------------------------------------------------------
// The test image: an OCI layout (test/support/oci-registry.ts) for skopeo to push.

const imageConfig: OciImageConfig = {
  entrypoint: ["/bootstrap"],
  cmd: ["serve", "--port", "8080"],
  workingDir: "/app",
  env: ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello"],
  user: "1000:1000",
};

const bootstrapScript = "#!/bin/sh\nexec echo hello\n";
const imageFiles: Record<string, string> = {
  "etc/kept.conf": "kept\n",
  "app/lib.txt": "library\n",
  "var/cache/new": "fresh\n",
  bootstrap: bootstrapScript,
};
const imageSize = Object.values(imageFiles).reduce((sum, content) => sum + content.length, 0);

/**
 * Tags: `1` an image of two layers (the second removes etc/removed.conf and empties var/cache with
 * whiteouts, and adds bootstrap); `multi` an index of an arm64 image and that amd64 image;
 * `arm-only` an index with only the arm64 image.
 */
async function buildTestLayout(): Promise<string> {
  const work = await freshDir("image");
  const layout = new OciLayout(join(work, "layout"));
  await layout.init();

  const lower = join(work, "lower");
  await mkdir(join(lower, "etc"), { recursive: true });
  await mkdir(join(lower, "app"));
  await mkdir(join(lower, "var", "cache"), { recursive: true });
  await writeFile(join(lower, "etc", "kept.conf"), imageFiles["etc/kept.conf"]!);
  await writeFile(join(lower, "etc", "removed.conf"), "removed\n");
  await writeFile(join(lower, "app", "lib.txt"), imageFiles["app/lib.txt"]!);
  await writeFile(join(lower, "var", "cache", "stale"), "stale\n");

  const upper = join(work, "upper");
  await mkdir(join(upper, "etc"), { recursive: true });
  await mkdir(join(upper, "var", "cache"), { recursive: true });
  await writeFile(join(upper, "etc", ".wh.removed.conf"), "");
  await writeFile(join(upper, "var", "cache", ".wh..wh..opq"), "");
  await writeFile(join(upper, "var", "cache", "new"), imageFiles["var/cache/new"]!);
  await writeFile(join(upper, "bootstrap"), bootstrapScript, { mode: 0o755 });

  const layers = [await tarLayer(layout, lower), await tarLayer(layout, upper)];
  const image = async (architecture: string, config: OciImageConfig) =>
    layout.json(
      {
        schemaVersion: 2,
        mediaType: mediaTypes.manifest,
        config: await layout.json(
          {
            architecture,
            os: "linux",
            config: { Entrypoint: config.entrypoint, Cmd: config.cmd, WorkingDir: config.workingDir, Env: config.env, User: config.user },
            rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
          },
          mediaTypes.config,
        ),
        layers: layers.map((l) => l.layer),
      },
      mediaTypes.manifest,
    );
  const amd64 = await image("amd64", imageConfig);
  const arm64 = await image("arm64", { ...imageConfig, cmd: ["arm64"] });
  await layout.tag("1", amd64);
  const platform = (architecture: string) => ({ os: "linux", architecture });
  const index = (manifests: Descriptor[]) => layout.json({ schemaVersion: 2, mediaType: mediaTypes.index, manifests }, mediaTypes.index);
  await layout.tag("multi", await index([{ ...arm64, platform: platform("arm64") }, { ...amd64, platform: platform("amd64") }]));
  await layout.tag("arm-only", await index([{ ...arm64, platform: platform("arm64") }]));
  return layout.dir;
}

async function assertTestImage(rootDir: string): Promise<void> {
  for (const [path, content] of Object.entries(imageFiles)) assert.equal(await readFile(join(rootDir, path), "utf8"), content, path);
  assert.equal((await stat(join(rootDir, "bootstrap"))).mode & 0o777, 0o755);
  assert.equal(await exists(join(rootDir, "etc", "removed.conf")), false, "the whiteout removed etc/removed.conf");
  assert.deepEqual(await readdir(join(rootDir, "var", "cache")), ["new"], "the opaque whiteout emptied var/cache");
  assert.deepEqual(await readdir(join(rootDir, "etc")), ["kept.conf"]);
}

/** Pushes tag `tag` of `layout` with skopeo and returns the digest it pushed. */
async function push(layout: string, tag: string, destination: string, extra: string[] = []): Promise<string> {
  return pushImage(layout, tag, destination, await freshDir("push"), extra);
}

/** Debian's docker-registry on loopback, with `extraConfig` (YAML at the top level). */
async function startRegistry(extraConfig = ""): Promise<Registry> {
  return startRegistryIn(await freshDir("registry"), extraConfig);
}

describe("fetchOciImage from docker-registry, pushed with skopeo", () => {
  let registry: Registry;
  let layout: string;
  let imageDigest: string;
  let indexDigest: string;

  before(async () => {
    layout = await buildTestLayout();
    registry = await startRegistry();
    imageDigest = await push(layout, "1", `${registry.host}/app`);
    indexDigest = await push(layout, "multi", `${registry.host}/app`, ["--all", "--preserve-digests"]);
    await push(layout, "arm-only", `${registry.host}/app`, ["--all", "--preserve-digests"]);
  });
  after(async () => {
    await registry?.stop();
  });

  it("fetches an image by tag: layers with whiteouts applied, config, digest", async () => {
    const rootDir = await freshDir("root");
    const result = await fetchOciImage(`${registry.host}/app:1`, rootDir);
    assert.deepEqual(result, { sizeInBytes: imageSize, digest: imageDigest, config: imageConfig });
    await assertTestImage(rootDir);
  });

  it("fetches an image by digest", async () => {
    const rootDir = await freshDir("root");
    const result = await fetchOciImage(`${registry.host}/app@${imageDigest}`, rootDir);
    assert.deepEqual(result, { sizeInBytes: imageSize, digest: imageDigest, config: imageConfig });
    await assertTestImage(rootDir);
  });

  it("picks linux/amd64 from an image index, and returns the index's digest", async () => {
    const rootDir = await freshDir("root");
    const result = await fetchOciImage(`${registry.host}/app:multi`, rootDir);
    assert.deepEqual(result, { sizeInBytes: imageSize, digest: indexDigest, config: imageConfig });
    assert.notEqual(indexDigest, imageDigest);
    await assertTestImage(rootDir);
  });

  it("says when an index has no linux/amd64 image", async () => {
    const reference = `${registry.host}/app:arm-only`;
    await assertRejects(fetchOciImage(reference, await freshDir("root")), new RegExp(`^OCI image ${reference} has no linux/amd64 image; its index offers linux/arm64\\.$`));
  });

  it("says when a tag, a digest or a repository does not exist", async () => {
    for (const reference of [`${registry.host}/app:nope`, `${registry.host}/app@sha256:${"0".repeat(64)}`, `${registry.host}/nothing/here:1`]) {
      await assertRejects(fetchOciImage(reference, await freshDir("root")), new RegExp(`^OCI image ${reference.replace(/[.]/g, "\\.")} does not exist\\.$`));
    }
  });

  it("keeps to the limit on unpacked bytes", async () => {
    await assertRejects(fetchOciImage(`${registry.host}/app:1`, await freshDir("root"), { maxUnpackedBytes: 10 }), /is larger than 10 bytes when unpacked/);
  });

  it("says when the registry cannot be reached", async () => {
    const reference = `127.0.0.1:${await freePort()}/app:1`;
    await assertRejects(fetchOciImage(reference, await freshDir("root")), new RegExp(`^OCI image ${reference.replace(/[.]/g, "\\.")} cannot be fetched: the registry at .* cannot be reached \\(.*ECONNREFUSED`));
  });
});

async function writeCredentials(host: string, username: string, password: string): Promise<string> {
  const path = join(await freshDir("docker-config"), "config.json");
  await writeFile(path, JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${username}:${password}`).toString("base64") } } }));
  return path;
}

const htpasswd = ["/usr/bin/htpasswd", "/usr/sbin/htpasswd"].find((path) => existsSync(path));

describe("fetchOciImage from a registry with htpasswd (Basic) credentials", { skip: htpasswd === undefined ? "htpasswd (apache2-utils) is not installed" : false }, () => {
  let registry: Registry;

  before(async () => {
    const work = await freshDir("htpasswd");
    const passwords = join(work, "htpasswd");
    await run(htpasswd!, ["-Bbc", passwords, "alice", "s3cret"]);
    registry = await startRegistry(["auth:", "  htpasswd:", "    realm: microvms-test", `    path: ${passwords}`].join("\n"));
    await push(await buildTestLayout(), "1", `${registry.host}/private/app`, ["--dest-creds", "alice:s3cret"]);
  });
  after(async () => {
    await registry?.stop();
  });

  it("is refused without credentials or with wrong ones", async () => {
    const reference = `${registry.host}/private/app:1`;
    const refused = new RegExp(`^The registry refused access to ${reference.replace(/[.]/g, "\\.")}; configure credentials`);
    await assertRejects(fetchOciImage(reference, await freshDir("root")), refused);
    await assertRejects(fetchOciImage(reference, await freshDir("root"), { credentialsFile: await writeCredentials(registry.host, "alice", "wrong") }), refused);
  });

  it("fetches the image with credentials from a Docker config.json", async () => {
    const rootDir = await freshDir("root");
    const result = await fetchOciImage(`${registry.host}/private/app:1`, rootDir, { credentialsFile: await writeCredentials(registry.host, "alice", "s3cret") });
    assert.deepEqual(result.config, imageConfig);
    await assertTestImage(rootDir);
  });
});

// ---------------------------------------------------------------------------------------------------
// docker-registry with token (Bearer) authentication: the test runs the token service, which signs
// JSON Web Tokens with a key whose self-signed certificate the registry trusts.

interface TokenService {
  realm: string;
  certificatePem: string;
  /** The Authorization headers and query strings the service was asked with. */
  requests: { authorization: string | undefined; query: URLSearchParams }[];
  close(): Promise<void>;
}

const base64url = (data: Buffer | string) => Buffer.from(data).toString("base64url");

async function startTokenService(users: Record<string, string>, service: string, issuer: string): Promise<TokenService> {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const certificate = selfSignedCertificate(privateKey, publicKey);
  const x5c = Buffer.from(forge.asn1.toDer(forge.pki.certificateToAsn1(certificate)).getBytes(), "binary").toString("base64");
  const requests: TokenService["requests"] = [];
  const server = createServer((req, res) => {
    const query = new URL(req.url ?? "/", "http://token").searchParams;
    requests.push({ authorization: req.headers.authorization, query });
    const [user, password] = Buffer.from((req.headers.authorization ?? "").replace(/^Basic /, ""), "base64").toString().split(":");
    if (user === undefined || users[user] === undefined || users[user] !== password) {
      res.writeHead(401, { "content-type": "application/json" }).end('{"details":"bad credentials"}');
      return;
    }
    const access = query.getAll("scope").map((scope) => {
      const [type, name, actions] = scope.split(":");
      return { type, name, actions: (actions ?? "").split(",") };
    });
    const now = Math.floor(Date.now() / 1000);
    const header = base64url(JSON.stringify({ typ: "JWT", alg: "RS256", x5c: [x5c] }));
    const claims = base64url(JSON.stringify({ iss: issuer, sub: user, aud: service, exp: now + 600, nbf: now - 60, iat: now, jti: randomUUID(), access }));
    const token = `${header}.${claims}.${base64url(sign("sha256", Buffer.from(`${header}.${claims}`), privateKey))}`;
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ token, access_token: token, expires_in: 600 }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    certificatePem: forge.pki.certificateToPem(certificate),
    requests,
    close: () => closeServer(server),
  };
}

function selfSignedCertificate(privateKey: KeyObject, publicKey: KeyObject): forge.pki.Certificate {
  const certificate = forge.pki.createCertificate();
  certificate.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: "spki", format: "pem" }).toString());
  certificate.serialNumber = "01";
  certificate.validity.notBefore = new Date(Date.now() - 3600_000);
  certificate.validity.notAfter = new Date(Date.now() + 86400_000);
  const name = [{ name: "commonName", value: "microvms test token issuer" }];
  certificate.setSubject(name);
  certificate.setIssuer(name);
  certificate.setExtensions([{ name: "basicConstraints", cA: true }, { name: "keyUsage", digitalSignature: true, keyCertSign: true }]);
  certificate.sign(forge.pki.privateKeyFromPem(privateKey.export({ type: "pkcs8", format: "pem" }).toString()), forge.md.sha256.create());
  return certificate;
}

async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}

describe("fetchOciImage from a registry with token (Bearer) authentication", () => {
  let registry: Registry;
  let tokens: TokenService;

  before(async () => {
    tokens = await startTokenService({ bob: "t0ken-pass" }, "microvms-test-registry", "microvms-test-issuer");
    const bundle = join(await freshDir("token"), "issuer.pem");
    await writeFile(bundle, tokens.certificatePem);
    registry = await startRegistry(
      [
        "auth:",
        "  token:",
        `    realm: ${tokens.realm}`,
        "    service: microvms-test-registry",
        "    issuer: microvms-test-issuer",
        `    rootcertbundle: ${bundle}`,
      ].join("\n"),
    );
    await push(await buildTestLayout(), "1", `${registry.host}/team/app`, ["--dest-creds", "bob:t0ken-pass"]);
  });
  after(async () => {
    await registry?.stop();
    await tokens?.close();
  });

  it("is refused when the token service refuses", async () => {
    const reference = `${registry.host}/team/app:1`;
    await assertRejects(fetchOciImage(reference, await freshDir("root")), /^The registry refused access to .*; configure credentials/);
    await assertRejects(fetchOciImage(reference, await freshDir("root"), { credentialsFile: await writeCredentials(registry.host, "bob", "nope") }), /refused access/);
  });

  it("gets a token for the repository with the configured credentials and fetches the image", async () => {
    tokens.requests.length = 0;
    const rootDir = await freshDir("root");
    const result = await fetchOciImage(`${registry.host}/team/app:1`, rootDir, { credentialsFile: await writeCredentials(registry.host, "bob", "t0ken-pass") });
    assert.deepEqual(result.config, imageConfig);
    await assertTestImage(rootDir);
    // One token, reused for the manifest, the config and both layers.
    assert.equal(tokens.requests.length, 1);
    assert.equal(tokens.requests[0]!.authorization, `Basic ${Buffer.from("bob:t0ken-pass").toString("base64")}`);
    assert.equal(tokens.requests[0]!.query.get("service"), "microvms-test-registry");
    assert.equal(tokens.requests[0]!.query.get("scope"), "repository:team/app:pull");
  });
});

// ---------------------------------------------------------------------------------------------------
// A registry of the test's own, for what docker-registry does not do: Basic challenges without
// htpasswd, redirects of blobs to another origin, and corrupt blobs.

interface FakeImage {
  manifest: Buffer;
  blobs: Map<string, Buffer>;
}

function fakeImage(): FakeImage {
  const layer = gzipSync(rawTar([file("bootstrap", bootstrapScript, 0o755)]));
  const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux", config: { Cmd: ["/bootstrap"] }, rootfs: { type: "layers", diff_ids: [] } }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.docker.distribution.manifest.v2+json",
      config: { mediaType: "application/vnd.docker.container.image.v1+json", digest: sha256(config), size: config.length },
      layers: [{ mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip", digest: sha256(layer), size: layer.length }],
    }),
  );
  return { manifest, blobs: new Map([[sha256(config), config], [sha256(layer), layer]]) };
}

interface FakeRegistryOptions {
  /** Require this Authorization header on /v2/ requests, and answer 401 with `challenge` without it. */
  authorization?: string;
  challenge?: (origin: string) => string;
  /** Answer GET /token: the token for the right Basic credentials, else 401. */
  token?: { basic: string; token: string };
  /** Serve blobs from the storage server (another origin) through a redirect. */
  storage?: string;
  corruptBlobs?: boolean;
}

interface SeenRequest {
  url: string;
  authorization: string | undefined;
}

async function startFakeServer(handler: (req: IncomingMessage, res: ServerResponse, origin: string) => void): Promise<{ origin: string; seen: SeenRequest[]; close(): Promise<void> }> {
  const seen: SeenRequest[] = [];
  let origin = "";
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? "", authorization: req.headers.authorization });
    handler(req, res, origin);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { origin, seen, close: () => closeServer(server) };
}

function fakeRegistry(image: FakeImage, opts: FakeRegistryOptions) {
  return startFakeServer((req, res, origin) => {
    const url = new URL(req.url ?? "/", origin);
    if (url.pathname === "/token" && opts.token !== undefined) {
      if (req.headers.authorization !== opts.token.basic) res.writeHead(401).end();
      else res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ access_token: opts.token.token }));
      return;
    }
    if (opts.authorization !== undefined && req.headers.authorization !== opts.authorization) {
      res.writeHead(401, { "www-authenticate": opts.challenge!(origin), "content-type": "application/json" }).end('{"errors":[{"code":"UNAUTHORIZED"}]}');
      return;
    }
    if (url.pathname === "/v2/app/manifests/1") {
      res.writeHead(200, { "content-type": "application/vnd.docker.distribution.manifest.v2+json" }).end(image.manifest);
      return;
    }
    const blob = /^\/v2\/app\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url.pathname)?.[1];
    const content = blob === undefined ? undefined : image.blobs.get(blob);
    if (blob === undefined || content === undefined) {
      res.writeHead(404).end();
    } else if (opts.storage !== undefined) {
      res.writeHead(307, { location: `${opts.storage}/storage/${blob}?signature=abc` }).end();
    } else {
      res.writeHead(200).end(opts.corruptBlobs ? Buffer.concat([content.subarray(0, -1), Buffer.from([content.at(-1)! ^ 1])]) : content);
    }
  });
}

describe("registry authentication, redirects and verification against a registry of the test's own", () => {
  const image = fakeImage();
  const basic = `Basic ${Buffer.from("carol:pw").toString("base64")}`;

  it("answers a Basic challenge with the configured credentials", async () => {
    const server = await fakeRegistry(image, { authorization: basic, challenge: () => 'Basic realm="fake"' });
    try {
      const host = server.origin.replace("http://", "");
      const rootDir = await freshDir("root");
      await assertRejects(fetchOciImage(`${host}/app:1`, rootDir), /refused access/);
      const result = await fetchOciImage(`${host}/app:1`, rootDir, { credentialsFile: await writeCredentials(host, "carol", "pw") });
      assert.equal(result.digest, sha256(image.manifest));
      assert.deepEqual(result.config, { entrypoint: [], cmd: ["/bootstrap"], env: [] });
      assert.equal(await readFile(join(rootDir, "bootstrap"), "utf8"), bootstrapScript);
    } finally {
      await server.close();
    }
  });

  it("follows a Bearer challenge to the token service with the challenge's service and scope", async () => {
    const server = await fakeRegistry(image, {
      authorization: "Bearer tok-123",
      challenge: (origin) => `Bearer realm="${origin}/token",service="fake.registry",scope="repository:app:pull"`,
      token: { basic, token: "tok-123" },
    });
    try {
      const host = server.origin.replace("http://", "");
      await fetchOciImage(`${host}/app:1`, await freshDir("root"), { credentialsFile: await writeCredentials(host, "carol", "pw") });
      const tokenRequests = server.seen.filter((r) => r.url.startsWith("/token"));
      assert.equal(tokenRequests.length, 1);
      assert.equal(tokenRequests[0]!.url, "/token?service=fake.registry&scope=repository%3Aapp%3Apull");
      assert.equal(tokenRequests[0]!.authorization, basic);
      const v2 = server.seen.filter((r) => r.url.startsWith("/v2/"));
      // Each of manifest, config and layer: at most one try without the token, then with it.
      assert.deepEqual(v2.filter((r) => r.authorization === "Bearer tok-123").map((r) => r.url.split("/")[3]), ["manifests", "blobs", "blobs"]);
    } finally {
      await server.close();
    }
  });

  it("follows a blob's redirect to another origin without the registry's credentials", async () => {
    const storage = await startFakeServer((req, res) => {
      const digest = /^\/storage\/(sha256:[0-9a-f]{64})\?signature=abc$/.exec(req.url ?? "")?.[1];
      const content = digest === undefined ? undefined : image.blobs.get(digest);
      if (content === undefined) res.writeHead(404).end();
      else res.writeHead(200).end(content);
    });
    const server = await fakeRegistry(image, { authorization: basic, challenge: () => 'Basic realm="fake"', storage: storage.origin });
    try {
      const host = server.origin.replace("http://", "");
      const rootDir = await freshDir("root");
      await fetchOciImage(`${host}/app:1`, rootDir, { credentialsFile: await writeCredentials(host, "carol", "pw") });
      assert.equal(await readFile(join(rootDir, "bootstrap"), "utf8"), bootstrapScript);
      assert.equal(storage.seen.length, 2);
      assert.ok(storage.seen.every((r) => r.authorization === undefined));
    } finally {
      await server.close();
      await storage.close();
    }
  });

  it("refuses a blob whose content does not match its digest", async () => {
    const server = await fakeRegistry(image, { corruptBlobs: true });
    try {
      const reference = `${server.origin.replace("http://", "")}/app:1`;
      await assertRejects(fetchOciImage(reference, await freshDir("root")), new RegExp(`^OCI image ${reference.replace(/[.]/g, "\\.")} failed verification: the registry sent content for sha256:[0-9a-f]{64} whose digest is sha256:`));
    } finally {
      await server.close();
    }
  });

  it("refuses a manifest that does not match the digest it was asked for", async () => {
    const server = await startFakeServer((req, res) => {
      res.writeHead(200, { "content-type": "application/vnd.docker.distribution.manifest.v2+json" }).end(image.manifest);
    });
    try {
      const reference = `${server.origin.replace("http://", "")}/app@sha256:${"1".repeat(64)}`;
      await assertRejects(fetchOciImage(reference, await freshDir("root")), /failed verification/);
    } finally {
      await server.close();
    }
  });
});
