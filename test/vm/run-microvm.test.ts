import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { TokenAuthority } from "../../src/tokens/endpoint-token.js";
import { BUILD_ROLE, BUSYBOX, eventually, startVmTestServer, type TestServer } from "../support/server.js";
import { callEndpoint, Guests, qemuProcesses, writeTestApp, type Obj } from "./support.js";

/**
 * Real MicroVMs: images built on the BusyBox base, booted under QEMU (KVM where
 * it works, TCG here), reached through the endpoint proxy. The tests run
 * concurrently so that the guests boot side by side.
 */
const BUILD_TIMEOUT = 180_000;

let t: TestServer;
let appDir: string;
const scratch: string[] = [];

let g: Guests;
const outputOf = (microvmId: string) => readFileSync(join(t.dataDir, "microvms", microvmId, "output.log"), "utf8");

before(async () => {
  t = await startVmTestServer();
  g = Guests.of(t);
  appDir = writeTestApp();
  scratch.push(appDir);
});

after(async () => {
  await t?.stop();
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
  // No QEMU outlives the server that started it.
  assert.deepEqual(qemuProcesses(t.dataDir), []);
});

describe("real MicroVMs under QEMU", { concurrency: true }, () => {
  let web: Obj;
  before(async () => {
    web = await g.createImage("web", pathToFileURL(appDir).href, {
      environmentVariables: { GREETING: "Hello from a MicroVM" },
      resources: [{ minimumMemoryInMiB: 256 }],
    });
  });

  test("an image builds from a directory on the busybox base", async () => {
    assert.equal(web.state, "SUCCESSFUL", web.stateReason);
    assert.equal(web.status, "ACTIVE");
    const image = await t.client.call("GetMicrovmImage", { imageIdentifier: "web" });
    assert.equal(image.state, "CREATED");
    assert.equal(image.latestActiveImageVersion, "1");
    const builds = (await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: "web", imageVersion: "1" })).items as Obj[];
    assert.equal(builds.length, 1);
    assert.equal(builds[0]!.buildState, "SUCCESSFUL");
    const build: Obj = await t.client.call("GetMicrovmImageBuild", { imageIdentifier: "web", imageVersion: "1", buildId: builds[0]!.buildId });
    assert.ok(build.snapshotBuild.codeInstallSizeInBytes > 0);
    assert.ok(build.snapshotBuild.diskSnapshotSizeInBytes > build.snapshotBuild.codeInstallSizeInBytes);
  });

  test("UpdateMicrovmImage builds the next version and the image becomes UPDATED", async () => {
    const first = await g.createImage("updated", pathToFileURL(appDir).href);
    assert.equal(first.state, "SUCCESSFUL", first.stateReason);
    const update = await t.client.call("UpdateMicrovmImage", {
      imageIdentifier: "updated",
      baseImageArn: BUSYBOX,
      buildRoleArn: BUILD_ROLE,
      codeArtifact: { uri: pathToFileURL(appDir).href },
      environmentVariables: { GREETING: "version two" },
    });
    assert.deepEqual([update.state, update.imageVersion], ["UPDATING", "2"]);
    const image = await eventually(
      async () => {
        const i = await t.client.call("GetMicrovmImage", { imageIdentifier: "updated" });
        return i.state === "UPDATING" ? undefined : i;
      },
      "the update to build",
      BUILD_TIMEOUT,
    );
    assert.deepEqual([image.state, image.latestActiveImageVersion], ["UPDATED", "2"]);

    // Deleting a version frees its snapshot; the other version keeps its own.
    const buildDir = async (version: string) => {
      const [build] = (await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: "updated", imageVersion: version })).items as Obj[];
      return join(t.dataDir, "builds", build!.buildId);
    };
    const [one, two] = [await buildDir("1"), await buildDir("2")];
    assert.ok(existsSync(join(one, "memory.ram")) && existsSync(join(two, "memory.ram")));
    await t.client.call("DeleteMicrovmImageVersion", { imageIdentifier: "updated", imageVersion: "1" });
    await eventually(async () => (existsSync(one) ? undefined : true), "version 1's files to go");
    assert.ok(existsSync(join(two, "disk.ext4")));
  });

  test("a MicroVM runs the image and answers through its endpoint", async () => {
    const vm = await g.run({ imageIdentifier: "web" }, ["RUNNING", "TERMINATED"]);
    assert.equal(vm.state, "RUNNING", vm.stateReason);
    assert.ok(vm.startedAt);
    assert.match(vm.endpoint, new RegExp(`^https://${vm.microvmId}\\.microvms\\.localhost:\\d+$`));
    const auth = { "X-aws-proxy-auth": await g.token(vm.microvmId) };

    const greet = await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/greet", auth);
    assert.deepEqual([greet.status, greet.body.trim()], [200, "Hello from a MicroVM"]);
    // The endpoint is HTTPS with a certificate from the server's CA (`microvms ca`), on the same port.
    const ca = readFileSync(join(t.dataDir, "tls", "ca.pem"), "utf8");
    const secure = await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/greet", auth, ca);
    assert.deepEqual([secure.status, secure.body.trim()], [200, "Hello from a MicroVM"]);
    // Unprivileged without additionalOsCapabilities ["ALL"].
    assert.equal((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/uid", auth)).body.trim(), "1000");
    // resources[0].minimumMemoryInMiB is the guest's memory (less what the firmware and kernel keep).
    const kib = Number(/MemTotal:\s+(\d+)/.exec((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/memory", auth)).body)?.[1]);
    assert.ok(kib > 200 * 1024 && kib <= 256 * 1024, `MemTotal ${kib} kB`);
    // The application's output is kept on the host.
    await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/log?hello-output", auth);
    await eventually(async () => (outputOf(vm.microvmId).includes("to stderr: hello-output") ? true : undefined), "the output log");
    // The application started (and printed this) once, in the build that made the snapshot.
    const [build] = (await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: "web", imageVersion: "1" })).items as Obj[];
    assert.match(readFileSync(join(t.dataDir, "builds", build!.buildId, "output.log"), "utf8"), /bootstrap starting as 1000/);

    // Terminate: the VM stops, the endpoint answers 404, a second terminate changes nothing.
    await t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId });
    const ended = await g.untilState(vm.microvmId, ["TERMINATED"]);
    assert.ok(ended.terminatedAt);
    assert.deepEqual(qemuProcesses(vm.microvmId), []);
    assert.equal((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/greet", auth)).status, 404);
    await t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId });
    assert.equal((await t.client.call("GetMicrovm", { microvmIdentifier: vm.microvmId })).state, "TERMINATED");
  });

  test("the endpoint refuses bad tokens, and refused requests never reach the guest", async () => {
    const vm = await g.run({ imageIdentifier: "web" }, ["RUNNING", "TERMINATED"]);
    assert.equal(vm.state, "RUNNING", vm.stateReason);
    const good = await g.token(vm.microvmId);
    const key = Buffer.from(await t.server.store.setting("endpoint-token-key", () => "unused"), "base64");
    const authority = new TokenAuthority(key);
    const now = Math.floor(Date.now() / 1000);
    const claims = { kind: "endpoint" as const, accountId: "000000000000", region: "us-east-1", microvmId: vm.microvmId, ports: [{ from: 8080, to: 8080 }], issuedAt: now - 7200, expiresAt: now - 3600 };
    const refusals: [string, Record<string, string>, number][] = [
      ["missing", {}, 401],
      ["forged", { "X-aws-proxy-auth": good.slice(0, -4) + (good.endsWith("AAAA") ? "BBBB" : "AAAA") }, 403],
      ["expired", { "X-aws-proxy-auth": authority.issue(claims) }, 403],
      ["other-microvm", { "X-aws-proxy-auth": authority.issue({ ...claims, microvmId: "mvm-0000000000000000", expiresAt: now + 600 }) }, 403],
      ["other-port", { "X-aws-proxy-auth": good, "X-aws-proxy-port": "9000" }, 403],
      ["bad-port", { "X-aws-proxy-auth": good, "X-aws-proxy-port": "http" }, 400],
    ];
    for (const [marker, headers, status] of refusals) {
      const answer = await callEndpoint(vm.endpoint, t.server.proxyUrl, `/cgi-bin/log?${marker}`, headers);
      assert.equal(answer.status, status, `${marker}: ${answer.body}`);
      assert.ok(answer.headers["x-amzn-errortype"], marker);
      assert.ok(JSON.parse(answer.body).message, marker);
    }
    // The same path with a good token reaches the guest, so the absence of the others means something.
    assert.equal((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/log?accepted", { "X-aws-proxy-auth": good })).status, 200);
    await eventually(async () => (outputOf(vm.microvmId).includes("to stderr: accepted") ? true : undefined), "the accepted request");
    for (const [marker] of refusals) assert.doesNotMatch(outputOf(vm.microvmId), new RegExp(`to stderr: ${marker}`));
    // A port range covering 8080 works; a token for all ports too.
    const range = await g.token(vm.microvmId, [{ range: { startPort: 8000, endPort: 8100 } }]);
    assert.equal((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/greet", { "X-aws-proxy-auth": range })).status, 200);
    await t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId });
    await g.untilState(vm.microvmId, ["TERMINATED"]);
  });

  test("the guest reaches the network only with INTERNET_EGRESS", async () => {
    // A server on the host's loopback, which QEMU user networking shows the guest as 10.0.2.2.
    const host: Server = createServer((_req, res) => res.end("host-answer"));
    await new Promise<void>((resolve) => host.listen(0, "127.0.0.1", resolve));
    const port = (host.address() as { port: number }).port;
    try {
      const [closed, open] = await Promise.all([
        g.run({ imageIdentifier: "web" }, ["RUNNING", "TERMINATED"]),
        g.run({ imageIdentifier: "web", egressNetworkConnectors: ["INTERNET_EGRESS"] }, ["RUNNING", "TERMINATED"]),
      ]);
      for (const vm of [closed, open]) assert.equal(vm.state, "RUNNING", vm.stateReason);
      const reach = async (vm: Obj) =>
        (await callEndpoint(vm.endpoint, t.server.proxyUrl, `/cgi-bin/reach?${port}`, { "X-aws-proxy-auth": await g.token(vm.microvmId) })).body.trim();
      assert.equal(await reach(closed), "unreachable");
      assert.equal(await reach(open), "reachable");
      await Promise.all([closed, open].map((vm) => t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId })));
    } finally {
      host.close();
    }
  });

  test("additionalOsCapabilities [\"ALL\"] runs the application as root", async () => {
    const version = await g.createImage("privileged", pathToFileURL(appDir).href, { additionalOsCapabilities: ["ALL"] });
    assert.equal(version.state, "SUCCESSFUL", version.stateReason);
    const vm = await g.run({ imageIdentifier: "privileged" }, ["RUNNING", "TERMINATED"]);
    assert.equal(vm.state, "RUNNING", vm.stateReason);
    const auth = { "X-aws-proxy-auth": await g.token(vm.microvmId) };
    const uid = await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/uid", auth);
    assert.equal(uid.body.trim(), "0");

    // A VM that dies under the MicroVM (here: its QEMU killed) ends it with a reason.
    const [pid] = qemuProcesses(vm.microvmId);
    assert.ok(pid, "the MicroVM's QEMU process");
    process.kill(pid, "SIGKILL");
    const ended = await g.untilState(vm.microvmId, ["TERMINATED"]);
    assert.match(ended.stateReason, /stopped unexpectedly .*signal SIGKILL/);
    assert.equal((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/uid", auth)).status, 404);
  });

  test("maximumDurationInSeconds ends the MicroVM", async () => {
    const vm = await g.run({ imageIdentifier: "web", maximumDurationInSeconds: 2 }, ["TERMINATED"]);
    assert.match(vm.stateReason, /maximum duration of 2 seconds/);
    assert.ok(vm.terminatedAt);
    assert.deepEqual(qemuProcesses(vm.microvmId), []);
  });

  test("an application that exits ends its MicroVM with the reason", async () => {
    // It serves until asked to quit (GET /cgi-bin/quit), then exits with 3.
    const quitter = writeTestApp({ quit: "touch /tmp/quit; echo bye" });
    scratch.push(quitter);
    writeFileSync(
      join(quitter, "bootstrap"),
      "#!/bin/sh\nhttpd -p 8080 -h /var/task/www\nwhile [ ! -f /tmp/quit ]; do sleep 0.2; done\necho 'giving up'\nexit 3\n",
      { mode: 0o755 },
    );
    const version = await g.createImage("quitter", pathToFileURL(quitter).href);
    assert.equal(version.state, "SUCCESSFUL", version.stateReason);
    const vm = await g.run({ imageIdentifier: "quitter" }, ["RUNNING", "TERMINATED"]);
    assert.equal(vm.state, "RUNNING", vm.stateReason);
    await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/quit", { "X-aws-proxy-auth": await g.token(vm.microvmId) });
    const ended = await g.untilState(vm.microvmId, ["TERMINATED"]);
    assert.match(ended.stateReason, /exited with code 3/);
    assert.match(outputOf(vm.microvmId), /giving up/);
    assert.deepEqual(qemuProcesses(vm.microvmId), []);
  });
});

describe("builds that fail", { concurrency: true }, () => {
  async function failedBuild(name: string, uri: string): Promise<string> {
    const version = await g.createImage(name, uri);
    assert.equal(version.state, "FAILED");
    const image = await t.client.call("GetMicrovmImage", { imageIdentifier: name });
    assert.equal(image.state, "CREATE_FAILED");
    assert.equal(image.latestFailedImageVersion, "1");
    assert.equal(image.latestActiveImageVersion, undefined);
    const [build] = (await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: name, imageVersion: "1" })).items as Obj[];
    assert.equal(build!.buildState, "FAILED");
    return String(version.stateReason);
  }

  test("a missing artifact, and a failed version cannot be run", async () => {
    assert.match(await failedBuild("missing", "file:///nonexistent/app.zip"), /does not exist/);
    await assert.rejects(t.client.call("RunMicrovm", { imageIdentifier: "missing", imageVersion: "1" }), /failed to build: .*does not exist\.$/);
  });

  test("an artifact that is not an archive", async () => {
    const dir = mkdtempSync(join(tmpdir(), "microvms-app-"));
    scratch.push(dir);
    writeFileSync(join(dir, "app.zip"), "just text");
    assert.match(await failedBuild("text", pathToFileURL(join(dir, "app.zip")).href), /not a directory, a zip or a tar/);
  });

  test("an application that exits during the build", async () => {
    const dir = mkdtempSync(join(tmpdir(), "microvms-app-"));
    scratch.push(dir);
    writeFileSync(join(dir, "bootstrap"), "#!/bin/sh\necho 'giving up'\nexit 3\n", { mode: 0o755 });
    assert.match(await failedBuild("exits-early", pathToFileURL(dir).href), /did not start listening on port 8080: The application exited with code 3/);
  });

  test("an artifact without bootstrap", async () => {
    const dir = mkdtempSync(join(tmpdir(), "microvms-app-"));
    scratch.push(dir);
    writeFileSync(join(dir, "index.js"), "console.log('hi')");
    assert.match(await failedBuild("nobootstrap", pathToFileURL(dir).href), /no bootstrap/);
  });
});
