import assert from "node:assert/strict";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import S3rver from "s3rver";
import { create as createTar } from "tar";
import { mediaTypes, OciLayout, pushImage, startRegistryIn, tarLayer, type Registry } from "../support/oci-registry.js";
import { BUILD_ROLE, BUSYBOX, eventually, startVmTestServer, type TestServer } from "../support/server.js";
import { Guests, qemuProcesses, writeTestApp, type Obj } from "./support.js";

/**
 * Code artifacts from where users keep them, end to end with real guests: an
 * S3-compatible server (s3rver) and, in the OCI suite, a registry.
 */
const scratch: string[] = [];
let t: TestServer;
let g: Guests;
let s3: S3rver;
let registry: Registry;

async function buildAndRun(name: string, uri: string, extra: Obj = {}): Promise<Obj> {
  const version = await g.createImage(name, uri, extra);
  assert.equal(version.state, "SUCCESSFUL", version.stateReason);
  const vm = await g.run({ imageIdentifier: name }, ["RUNNING", "TERMINATED"]);
  assert.equal(vm.state, "RUNNING", vm.stateReason);
  return vm;
}

before(async () => {
  const root = mkdtempSync(join(tmpdir(), "microvms-s3-"));
  scratch.push(root);
  s3 = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: root });
  const { port } = await s3.run();
  const endpoint = `http://127.0.0.1:${port}`;
  t = await startVmTestServer({
    MICROVMS_S3_ENDPOINT: endpoint,
    MICROVMS_S3_ACCESS_KEY_ID: "S3RVER",
    MICROVMS_S3_SECRET_ACCESS_KEY: "S3RVER",
  });
  g = Guests.of(t);
  // The artifact: the test app as a tar.gz in a bucket, put there with the AWS SDK.
  const app = writeTestApp();
  scratch.push(app);
  const archive = join(root, "app.tar.gz");
  await createTar({ gzip: true, cwd: app, file: archive, portable: true }, ["."]);
  const client = new S3Client({ endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" } });
  await client.send(new CreateBucketCommand({ Bucket: "artifacts" }));
  await client.send(new PutObjectCommand({ Bucket: "artifacts", Key: "apps/web/v1.tar.gz", Body: readFileSync(archive) }));
  client.destroy();
});

after(async () => {
  await t?.stop();
  await s3?.close();
  await registry?.stop();
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(qemuProcesses(t.dataDir), []);
});

describe("code artifacts", { concurrency: true }, () => {
  test("an image built from an S3 object runs", async () => {
    const vm = await buildAndRun("from-s3", "s3://artifacts/apps/web/v1.tar.gz", { environmentVariables: { GREETING: "from S3" } });
    assert.equal(await g.get(vm, "/cgi-bin/greet"), "from S3");
    await t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId });
  });

  test("an image built from an OCI image in a registry runs its entrypoint with its environment", async () => {
    const work = mkdtempSync(join(tmpdir(), "microvms-oci-"));
    scratch.push(work);
    registry = await startRegistryIn(join(work, "registry"));
    const reference = `${registry.host}/web:1`;
    await pushImage(await webImageLayout(join(work, "image")), "1", `${registry.host}/web`, work);
    const vm = await buildAndRun("from-oci", reference, { environmentVariables: { EXTRA: "from the image" } });
    // Entrypoint, command, working directory and environment come from the OCI image; environmentVariables add to it.
    assert.equal(await g.get(vm, "/cgi-bin/env"), "from OCI|from the image|1000");
    await t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId });
  });

  test("a missing S3 object fails the build with a reason", async () => {
    await t.client.call("CreateMicrovmImage", {
      name: "s3-missing",
      baseImageArn: BUSYBOX,
      buildRoleArn: BUILD_ROLE,
      codeArtifact: { uri: "s3://artifacts/nope.zip" },
    });
    const version = await eventually(
      async () => {
        const v: Obj = await t.client.call("GetMicrovmImageVersion", { imageIdentifier: "s3-missing", imageVersion: "1" });
        return v.state === "FAILED" || v.state === "SUCCESSFUL" ? v : undefined;
      },
      "the build to fail",
      60_000,
    );
    assert.equal(version.state, "FAILED");
    assert.match(version.stateReason, /s3:\/\/artifacts\/nope\.zip does not exist/);
  });
});

/**
 * An OCI image of two layers: BusyBox (static, from the host), then the app,
 * served by BusyBox httpd as the image's entrypoint, in its working directory.
 */
async function webImageLayout(dir: string): Promise<string> {
  const layout = new OciLayout(join(dir, "layout"));
  await layout.init();
  const base = join(dir, "base");
  mkdirSync(join(base, "bin"), { recursive: true });
  copyFileSync("/bin/busybox", join(base, "bin", "busybox"));
  chmodSync(join(base, "bin", "busybox"), 0o755);
  for (const applet of ["sh", "httpd", "id", "pwd", "cat"]) symlinkSync("busybox", join(base, "bin", applet));
  const app = join(dir, "app");
  mkdirSync(join(app, "app", "www", "cgi-bin"), { recursive: true });
  writeFileSync(
    join(app, "app", "www", "cgi-bin", "env"),
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"$GREETING|$EXTRA|$(id -u)\"\n",
    { mode: 0o755 },
  );
  const layers = [await tarLayer(layout, base), await tarLayer(layout, app)];
  const config = await layout.json(
    {
      architecture: "amd64",
      os: "linux",
      config: {
        Entrypoint: ["/bin/httpd", "-f", "-p", "8080"],
        // Relative: found only if the working directory is applied.
        Cmd: ["-h", "www"],
        WorkingDir: "/app",
        Env: ["PATH=/bin", "GREETING=from OCI"],
      },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
    },
    mediaTypes.config,
  );
  const manifest = await layout.json({ schemaVersion: 2, mediaType: mediaTypes.manifest, config, layers: layers.map((l) => l.layer) }, mediaTypes.manifest);
  await layout.tag("1", manifest);
  return layout.dir;
}
