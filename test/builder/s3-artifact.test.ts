import assert from "node:assert/strict";
import { createServer } from "node:net";
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile, chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import S3rver from "s3rver";
import * as tar from "tar";
import { ZipFile } from "yazl";
import { fetchCodeArtifact } from "../../src/builder/artifact.js";
import { s3SettingsFromEnv, type S3Settings } from "../../src/config/s3-settings.js";
import { parseS3Uri } from "../../src/builder/s3.js";
import { assertRejects } from "./support.js";

let root: string;
/** TMPDIR for this process, so that the tests see every temporary file the fetcher leaves behind. */
let temp: string;
let server: S3rver;
let settings: S3Settings;
let client: S3Client;
/** "METHOD url" of every request s3rver received. */
const requests: string[] = [];
let counter = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "microvms-s3-artifact-"));
  temp = join(root, "tmp");
  await mkdir(temp);
  process.env.TMPDIR = temp;
  server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: join(root, "s3rver") });
  const { port } = await server.run();
  server.httpServer.on("request", (req: { method?: string; url?: string }) => requests.push(`${req.method} ${req.url}`));
  settings = {
    endpoint: `http://127.0.0.1:${port}`,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
  };
  client = new S3Client({ ...settings });
  await client.send(new CreateBucketCommand({ Bucket: "code" }));
});

after(async () => {
  client?.destroy();
  await server?.close();
  await rm(root, { recursive: true, force: true });
});

async function put(key: string, body: Buffer): Promise<void> {
  await client.send(new PutObjectCommand({ Bucket: "code", Key: key, Body: body }));
}

/** A fresh, empty directory to unpack into. */
async function freshDest(): Promise<string> {
  const dest = join(root, `dest-${++counter}`);
  await mkdir(dest);
  return dest;
}

async function zipOf(entries: { name: string; content: string; mode: number }[]): Promise<Buffer> {
  const zip = new ZipFile();
  for (const { name, content, mode } of entries) zip.addBuffer(Buffer.from(content), name, { mode });
  zip.end();
  const chunks: Buffer[] = [];
  for await (const chunk of zip.outputStream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** A zip holding a bootstrap without a mode, as zips made on Windows do, and a library file. */
const appZip = () =>
  zipOf([
    { name: "bootstrap", content: "#!/bin/sh\n", mode: 0 },
    { name: "lib/data.txt", content: "data", mode: 0o100640 },
  ]);
const appZipSize = "#!/bin/sh\n".length + "data".length;

async function assertAppZipUnpacked(dest: string): Promise<void> {
  assert.equal((await stat(join(dest, "bootstrap"))).mode & 0o777, 0o755);
  assert.equal(await readFile(join(dest, "lib", "data.txt"), "utf8"), "data");
}

/** Every fetch, whatever its outcome, removes its temporary file. */
async function assertNoTemporaryFiles(): Promise<void> {
  assert.deepEqual(await readdir(temp), []);
}

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address() as { port: number };
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

describe("fetchCodeArtifact from s3:// URIs", () => {
  it("unpacks a zip object, making its bootstrap executable", async () => {
    await put("app.zip", await appZip());
    const dest = await freshDest();

    const result = await fetchCodeArtifact("s3://code/app.zip", dest, { s3: settings });

    assert.deepEqual(result, { sizeInBytes: appZipSize, entrypoint: "bootstrap" });
    await assertAppZipUnpacked(dest);
    await assertNoTemporaryFiles();
  });

  it("unpacks a gzip-compressed tar object, keeping modes and links", async () => {
    const source = join(root, "tar-source");
    await mkdir(join(source, "lib"), { recursive: true });
    await writeFile(join(source, "bootstrap"), "#!/bin/sh\nexec ./lib/app\n");
    await chmod(join(source, "bootstrap"), 0o750);
    await writeFile(join(source, "lib", "app"), "binary");
    await symlink("lib/app", join(source, "app"));
    const archive = join(root, "app.tgz");
    await tar.c({ cwd: source, file: archive, gzip: true }, ["."]);
    await put("builds/app.tar.gz", await readFile(archive));
    const dest = await freshDest();

    const result = await fetchCodeArtifact("s3://code/builds/app.tar.gz", dest, { s3: settings });

    assert.equal(result.sizeInBytes, "#!/bin/sh\nexec ./lib/app\n".length + "binary".length);
    // 0750 gains read and execute for everyone, so an unprivileged user can start it.
    assert.equal((await stat(join(dest, "bootstrap"))).mode & 0o777, 0o755);
    assert.equal(await readlink(join(dest, "app")), "lib/app");
    assert.equal(await readFile(join(dest, "lib", "app"), "utf8"), "binary");
    await assertNoTemporaryFiles();
  });

  it("takes a key with slashes and spaces as the console writes it, or percent-encoded", async () => {
    await put("releases/2025 06/my app+1.zip", await appZip());
    for (const uri of ["s3://code/releases/2025 06/my app+1.zip", "s3://code/releases/2025%2006/my%20app%2B1.zip"]) {
      const dest = await freshDest();
      await fetchCodeArtifact(uri, dest, { s3: settings });
      await assertAppZipUnpacked(dest);
    }
    await assertNoTemporaryFiles();
  });

  it("asks for the version a ?versionId= names", async () => {
    // s3rver keeps no versions and serves the object whatever the versionId; the request shows it was asked for.
    await put("versioned.zip", await appZip());
    requests.length = 0;
    const dest = await freshDest();

    await fetchCodeArtifact("s3://code/versioned.zip?versionId=3HL4kqtJ.vcDmJ%2Brm", dest, { s3: settings });

    await assertAppZipUnpacked(dest);
    const get = requests.find((request) => request.startsWith("GET /code/versioned.zip?"));
    assert.ok(get !== undefined, `no GetObject among ${requests.join(", ")}`);
    assert.equal(new URL(get.slice("GET ".length), "http://s3").searchParams.get("versionId"), "3HL4kqtJ.vcDmJ+rm");
  });

  it("says when the object does not exist", async () => {
    await assertRejects(
      fetchCodeArtifact("s3://code/missing.zip", await freshDest(), { s3: settings }),
      /^Code artifact s3:\/\/code\/missing\.zip does not exist\.$/,
    );
    await assertNoTemporaryFiles();
  });

  it("says when the bucket does not exist", async () => {
    await assertRejects(
      fetchCodeArtifact("s3://no-such-bucket/app.zip", await freshDest(), { s3: settings }),
      new RegExp(`^Code artifact s3://no-such-bucket/app\\.zip cannot be fetched: bucket no-such-bucket does not exist at the S3 endpoint ${escape(settings.endpoint!)}\\.$`),
    );
    await assertNoTemporaryFiles();
  });

  it("says when an object is not an archive, as for a file", async () => {
    await put("notes.zip", Buffer.from("just some text, not a zip\n"));
    await assertRejects(
      fetchCodeArtifact("s3://code/notes.zip", await freshDest(), { s3: settings }),
      /^Code artifact s3:\/\/code\/notes\.zip is not a directory, a zip or a tar archive\.$/,
    );
    await assertNoTemporaryFiles();
  });

  it("says when a zip object has no bootstrap", async () => {
    await put("no-bootstrap.zip", await zipOf([{ name: "index.js", content: "1", mode: 0o100644 }]));
    await assertRejects(fetchCodeArtifact("s3://code/no-bootstrap.zip", await freshDest(), { s3: settings }), /has no bootstrap file at its root/);
    await assertNoTemporaryFiles();
  });

  it("refuses an object larger than twice the unpacked limit and a megabyte", async () => {
    const maxUnpackedBytes = 1000;
    const limit = 2 * maxUnpackedBytes + 1_048_576;
    await put("huge.zip", Buffer.alloc(limit + 1));
    const dest = await freshDest();
    await assertRejects(
      fetchCodeArtifact("s3://code/huge.zip", dest, { s3: settings, maxUnpackedBytes }),
      new RegExp(`^Code artifact s3://code/huge\\.zip is larger than ${limit} bytes, the limit for the size of a code artifact's archive\\.$`),
    );
    assert.deepEqual(await readdir(dest), []);
    await assertNoTemporaryFiles();
  });

  it("still caps the unpacked size of an object under the download limit", async () => {
    await put("big-inside.zip", await zipOf([{ name: "bootstrap", content: "x".repeat(5000), mode: 0o100755 }]));
    await assertRejects(
      fetchCodeArtifact("s3://code/big-inside.zip", await freshDest(), { s3: settings, maxUnpackedBytes: 1000 }),
      /is larger than 1000 bytes when unpacked/,
    );
    await assertNoTemporaryFiles();
  });

  it("says when access is denied, without repeating the credentials", async () => {
    const secret = "wJalrXUtnFEMI-not-a-real-secret";
    const denied: S3Settings = { ...settings, credentials: { accessKeyId: "AKIANOTKNOWNHERE", secretAccessKey: secret } };
    const err = await assertRejects(
      fetchCodeArtifact("s3://code/app.zip", await freshDest(), { s3: denied }),
      /^Code artifact s3:\/\/code\/app\.zip cannot be fetched: access denied to s3:\/\/code\/app\.zip at the S3 endpoint http:\/\/127\.0\.0\.1:\d+ \(InvalidAccessKeyId\)/,
    );
    assert.ok(!err.message.includes(secret));
    await assertNoTemporaryFiles();
  });

  it("says when the endpoint cannot be reached", async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    await assertRejects(
      fetchCodeArtifact("s3://code/app.zip", await freshDest(), { s3: { ...settings, endpoint } }),
      new RegExp(`^Code artifact s3://code/app\\.zip cannot be fetched: cannot reach the S3 endpoint ${escape(endpoint)}: connection refused\\.$`),
    );
    await assertNoTemporaryFiles();
  });

  it("reads the S3 settings from the environment when given none", async () => {
    await put("app.zip", await appZip());
    const names = ["MICROVMS_S3_ENDPOINT", "MICROVMS_S3_REGION", "MICROVMS_S3_ACCESS_KEY_ID", "MICROVMS_S3_SECRET_ACCESS_KEY"] as const;
    const saved = names.map((name) => process.env[name]);
    Object.assign(process.env, {
      MICROVMS_S3_ENDPOINT: settings.endpoint,
      MICROVMS_S3_REGION: "eu-west-1",
      MICROVMS_S3_ACCESS_KEY_ID: "S3RVER",
      MICROVMS_S3_SECRET_ACCESS_KEY: "S3RVER",
    });
    try {
      const dest = await freshDest();
      await fetchCodeArtifact("s3://code/app.zip", dest);
      await assertAppZipUnpacked(dest);
    } finally {
      names.forEach((name, i) => {
        if (saved[i] === undefined) delete process.env[name];
        else process.env[name] = saved[i];
      });
    }
  });

  it("refuses malformed S3 URIs, naming them, before contacting any endpoint", async () => {
    const unreachable: S3Settings = { ...settings, endpoint: `http://127.0.0.1:${await closedPort()}` };
    const cases: [string, RegExp][] = [
      ["s3://", /names no bucket/],
      ["s3:///app.zip", /names no bucket/],
      ["s3://code", /names no object in bucket code/],
      ["s3://code/", /names no object in bucket code/],
      ["s3://Code/app.zip", /has an invalid bucket name "Code"/],
      ["s3://ab/app.zip", /has an invalid bucket name "ab"/],
      ["s3://my_bucket/app.zip", /has an invalid bucket name "my_bucket"/],
      ["s3://-code/app.zip", /has an invalid bucket name "-code"/],
      [`s3://${"b".repeat(64)}/app.zip`, /has an invalid bucket name/],
      ["s3://code/builds/", /names a folder/],
      ["s3://code/app.zip?versionId=", /has a query other than \?versionId=/],
      ["s3://code/app.zip?x=1", /has a query other than \?versionId=/],
      ["s3://code/app.zip?versionId=a&versionId=b", /has a query other than \?versionId=/],
      ["s3://code/%FF.zip", /percent-escapes "%FF" that are not UTF-8/],
      [`s3://code/${"k".repeat(1025)}`, /has a key longer than S3's 1024 bytes/],
    ];
    for (const [uri, message] of cases) {
      const err = await assertRejects(fetchCodeArtifact(uri, await freshDest(), { s3: unreachable }), message);
      assert.ok(err.message.startsWith(`Code artifact ${uri} `), err.message);
    }
    await assertNoTemporaryFiles();
  });
});

describe("parseS3Uri", () => {
  it("splits bucket, key and version", () => {
    assert.deepEqual(parseS3Uri("s3://my.bucket-1/a/b c/d.zip"), { bucket: "my.bucket-1", key: "a/b c/d.zip" });
    assert.deepEqual(parseS3Uri("S3://code/a%2Fb%20c.zip"), { bucket: "code", key: "a/b c.zip" });
    assert.deepEqual(parseS3Uri("s3://code/100%.zip#1"), { bucket: "code", key: "100%.zip#1" });
    assert.deepEqual(parseS3Uri("s3://code/app.zip?versionId=abc"), { bucket: "code", key: "app.zip", versionId: "abc" });
  });
});

describe("s3SettingsFromEnv", () => {
  it("uses AWS's endpoint, the SDK's credentials and virtual-hosted style by default", () => {
    assert.deepEqual(s3SettingsFromEnv({}), { region: "us-east-1", forcePathStyle: false });
    assert.deepEqual(s3SettingsFromEnv({ AWS_DEFAULT_REGION: "eu-west-1" }), { region: "eu-west-1", forcePathStyle: false });
    assert.deepEqual(s3SettingsFromEnv({ AWS_REGION: "eu-central-1", AWS_DEFAULT_REGION: "eu-west-1" }), { region: "eu-central-1", forcePathStyle: false });
  });

  it("reads an S3-compatible endpoint, with path-style addressing unless told otherwise", () => {
    const env = {
      MICROVMS_S3_ENDPOINT: "http://127.0.0.1:4569",
      MICROVMS_S3_REGION: "local",
      AWS_REGION: "eu-west-1",
      MICROVMS_S3_ACCESS_KEY_ID: "id",
      MICROVMS_S3_SECRET_ACCESS_KEY: "secret",
      MICROVMS_S3_SESSION_TOKEN: "token",
    };
    assert.deepEqual(s3SettingsFromEnv(env), {
      endpoint: "http://127.0.0.1:4569",
      region: "local",
      forcePathStyle: true,
      credentials: { accessKeyId: "id", secretAccessKey: "secret", sessionToken: "token" },
    });
    assert.equal(s3SettingsFromEnv({ ...env, MICROVMS_S3_FORCE_PATH_STYLE: "false" }).forcePathStyle, false);
    assert.equal(s3SettingsFromEnv({ MICROVMS_S3_FORCE_PATH_STYLE: "true" }).forcePathStyle, true);
    assert.deepEqual(s3SettingsFromEnv({ ...env, MICROVMS_S3_SESSION_TOKEN: "" }).credentials, { accessKeyId: "id", secretAccessKey: "secret" });
  });

  it("refuses settings that cannot work, without repeating secrets", () => {
    assert.throws(() => s3SettingsFromEnv({ MICROVMS_S3_ENDPOINT: "127.0.0.1:4569" }), /MICROVMS_S3_ENDPOINT must be an http:\/\/ or https:\/\/ URL/);
    assert.throws(() => s3SettingsFromEnv({ MICROVMS_S3_ENDPOINT: "http://id:hunter2@127.0.0.1:4569" }), (err: Error) => {
      assert.match(err.message, /must not hold credentials/);
      assert.ok(!err.message.includes("hunter2"));
      return true;
    });
    assert.throws(() => s3SettingsFromEnv({ MICROVMS_S3_FORCE_PATH_STYLE: "maybe" }), /MICROVMS_S3_FORCE_PATH_STYLE must be true or false/);
    assert.throws(() => s3SettingsFromEnv({ MICROVMS_S3_ACCESS_KEY_ID: "id" }), /must be set together/);
    assert.throws(() => s3SettingsFromEnv({ MICROVMS_S3_SECRET_ACCESS_KEY: "hunter2" }), /must be set together/);
    assert.throws(() => s3SettingsFromEnv({ MICROVMS_S3_SESSION_TOKEN: "token" }), /needs MICROVMS_S3_ACCESS_KEY_ID/);
  });
});
