import assert from "node:assert/strict";
import { readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { eventually, startVmTestServer, type TestServer } from "../support/server.js";
import { callEndpoint, Guests, qemuProcesses, writeSnapshotApp, type Obj } from "./support.js";

/**
 * Snapshot builds and hooks with real guests: the application initialises once
 * at build time, the ready and validate hooks run before the snapshot, and
 * every MicroVM restores it (state made before the snapshot is there at once)
 * and gets the run hook with its own payload.
 */

let t: TestServer;
let g: Guests;
let appDir: string;

const hooks = (extra: Obj = {}) => ({
  port: 9000,
  microvmImageHooks: { ready: "ENABLED", validate: "ENABLED", ...extra.image },
  microvmHooks: { run: "ENABLED", runTimeoutInSeconds: 3, suspend: "ENABLED", resume: "ENABLED", terminate: "ENABLED", ...extra.microvm },
});

const build = (name: string, extra: Obj = {}) =>
  g.createImage(name, pathToFileURL(appDir).href, {
    additionalOsCapabilities: ["ALL"],
    resources: [{ minimumMemoryInMiB: 256 }],
    hooks: hooks(),
    ...extra,
  });

before(async () => {
  t = await startVmTestServer();
  g = Guests.of(t);
  appDir = writeSnapshotApp();
});

after(async () => {
  await t?.stop();
  rmSync(appDir, { recursive: true, force: true });
  assert.deepEqual(qemuProcesses(t.dataDir), []);
});

describe("snapshot builds", { concurrency: true }, () => {
  let version: Obj;
  before(async () => {
    version = await build("snap");
  });

  test("MicroVMs start from the snapshot: initialised once, independent, each with its run payload", async () => {
    assert.equal(version.state, "SUCCESSFUL", version.stateReason);
    const [summary] = (await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: "snap", imageVersion: "1" })).items as Obj[];
    const buildInfo: Obj = await t.client.call("GetMicrovmImageBuild", { imageIdentifier: "snap", imageVersion: "1", buildId: summary!.buildId });
    const sizes = buildInfo.snapshotBuild;
    assert.ok(sizes.codeInstallSizeInBytes > 0 && sizes.diskSnapshotSizeInBytes > 0, JSON.stringify(sizes));
    // Guest RAM in the snapshot: what the guest touched, not all of its 256 MiB.
    assert.ok(sizes.memorySnapshotSizeInBytes > 1 << 20 && sizes.memorySnapshotSizeInBytes < 256 << 20, JSON.stringify(sizes));
    // The application's initialisation ran once, during the build.
    const buildOutput = readFileSync(join(t.dataDir, "builds", summary!.buildId, "output.log"), "utf8");
    assert.match(buildOutput, /initialized at [0-9a-f]{16}/);

    const [a, b] = await Promise.all([
      g.run({ imageIdentifier: "snap", runHookPayload: "tenant-a" }, ["RUNNING", "TERMINATED"]),
      g.run({ imageIdentifier: "snap", runHookPayload: "tenant-b" }, ["RUNNING", "TERMINATED"]),
    ]);
    for (const vm of [a!, b!]) assert.equal(vm.state, "RUNNING", vm.stateReason);
    // State made before the snapshot is there at once, the same in both.
    const stamp = await g.get(a!, "/cgi-bin/initialized");
    assert.match(stamp, /^[0-9a-f]{16}$/);
    assert.equal(await g.get(b!, "/cgi-bin/initialized"), stamp);
    assert.ok(buildOutput.includes(`initialized at ${stamp}`));
    // The hooks ran in order: ready and validate at build time, run after the restore.
    assert.deepEqual((await g.get(a!, "/cgi-bin/hooks")).split("\n"), ["ready", "validate", "run"]);
    assert.equal(await g.get(a!, "/cgi-bin/payload"), "tenant-a");
    assert.equal(await g.get(b!, "/cgi-bin/payload"), "tenant-b");
    // Memory and disk are each MicroVM's own.
    assert.deepEqual([await g.get(a!, "/cgi-bin/count"), await g.get(a!, "/cgi-bin/count"), await g.get(b!, "/cgi-bin/count")], ["1", "2", "1"]);
    assert.equal(await g.get(a!, "/cgi-bin/mark?from-a"), "marked");
    assert.equal(await g.get(a!, "/cgi-bin/read-mark"), "from-a");
    assert.equal(await g.get(b!, "/cgi-bin/read-mark"), "none");

    // The terminate hook runs before the VM stops.
    await Promise.all([a!, b!].map((vm) => t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId })));
    await eventually(async () => ((await t.client.call("GetMicrovm", { microvmIdentifier: a!.microvmId })).state === "TERMINATED" ? true : undefined), "A to end");
    assert.match(readFileSync(join(t.dataDir, "microvms", a!.microvmId, "output.log"), "utf8"), /hook terminate called/);
    // Restores did not re-run the initialisation.
    assert.doesNotMatch(readFileSync(join(t.dataDir, "microvms", a!.microvmId, "output.log"), "utf8"), /initialized at/);
  });

  test("a suspended MicroVM holds no process and resumes with its memory and disk intact", async () => {
    const vm = await g.run({ imageIdentifier: "snap", runHookPayload: "sleeper" }, ["RUNNING", "TERMINATED"]);
    assert.equal(vm.state, "RUNNING", vm.stateReason);
    const auth = { "X-aws-proxy-auth": await g.token(vm.microvmId) };
    assert.deepEqual([await g.get(vm, "/cgi-bin/count"), await g.get(vm, "/cgi-bin/count")], ["1", "2"]);
    assert.equal(await g.get(vm, "/cgi-bin/mark?before-suspend"), "marked");

    await t.client.call("SuspendMicrovm", { microvmIdentifier: vm.microvmId });
    await g.untilState(vm.microvmId, ["SUSPENDED"]);
    assert.deepEqual(qemuProcesses(vm.microvmId), [], "a suspended MicroVM has no QEMU process");
    assert.ok(statSync(join(t.dataDir, "microvms", vm.microvmId, "suspended.state")).size > 1 << 20, "its memory is on disk");
    assert.equal((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/count", auth)).status, 503);
    await assert.rejects(t.client.call("SuspendMicrovm", { microvmIdentifier: vm.microvmId }), /ConflictException.*SUSPENDED/);

    await t.client.call("ResumeMicrovm", { microvmIdentifier: vm.microvmId });
    const resumed = await g.untilState(vm.microvmId, ["RUNNING", "TERMINATED"]);
    assert.equal(resumed.state, "RUNNING", resumed.stateReason);
    assert.deepEqual(resumed.startedAt, vm.startedAt);
    // The counter in guest memory goes on; the disk kept what was written; tokens from before still work.
    assert.equal((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/count", auth)).body.trim(), "3");
    assert.equal(await g.get(vm, "/cgi-bin/read-mark"), "before-suspend");
    assert.deepEqual((await g.get(vm, "/cgi-bin/hooks")).split("\n"), ["ready", "validate", "run", "suspend", "resume"]);
    await t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId });
    await g.untilState(vm.microvmId, ["TERMINATED"]);
    assert.deepEqual(qemuProcesses(vm.microvmId), []);
  });

  test("a run hook that fails or times out terminates the MicroVM with the reason", async () => {
    const [failed, slow] = await Promise.all([
      g.run({ imageIdentifier: "snap", runHookPayload: "please fail" }, ["RUNNING", "TERMINATED"]),
      g.run({ imageIdentifier: "snap", runHookPayload: "be slow" }, ["RUNNING", "TERMINATED"]),
    ]);
    assert.equal(failed!.state, "TERMINATED");
    assert.match(failed!.stateReason, /run hook \(POST \/run on port 9000\) answered HTTP 500/);
    assert.equal(slow!.state, "TERMINATED");
    assert.match(slow!.stateReason, /run hook \(POST \/run on port 9000\) did not answer within 3 s/);
    for (const vm of [failed!, slow!]) assert.deepEqual(qemuProcesses(vm.microvmId), []);
  });
});

describe("build hooks that fail", { concurrency: true }, () => {
  test("a failing ready hook fails the build", async () => {
    const v = await build("ready-fails", { environmentVariables: { HOOK_READY: "fail" } });
    assert.equal(v.state, "FAILED");
    assert.match(v.stateReason, /ready hook \(POST \/ready on port 9000\) answered HTTP 500: ready refused/);
    const image = await t.client.call("GetMicrovmImage", { imageIdentifier: "ready-fails" });
    assert.deepEqual([image.state, image.latestFailedImageVersion], ["CREATE_FAILED", "1"]);
  });

  test("a ready hook that times out fails the build", async () => {
    const v = await build("ready-slow", {
      environmentVariables: { HOOK_READY: "slow" },
      hooks: hooks({ image: { readyTimeoutInSeconds: 2 } }),
    });
    assert.equal(v.state, "FAILED");
    assert.match(v.stateReason, /ready hook \(POST \/ready on port 9000\) did not answer within 2 s/);
  });

  test("a failing validate hook fails the build", async () => {
    const v = await build("validate-fails", { environmentVariables: { HOOK_VALIDATE: "fail" } });
    assert.equal(v.state, "FAILED");
    assert.match(v.stateReason, /validate hook \(POST \/validate on port 9000\) answered HTTP 500: validate refused/);
  });

  test("a validate hook that times out fails the build", async () => {
    const v = await build("validate-slow", {
      environmentVariables: { HOOK_VALIDATE: "slow" },
      hooks: hooks({ image: { validateTimeoutInSeconds: 2 } }),
    });
    assert.equal(v.state, "FAILED");
    assert.match(v.stateReason, /validate hook \(POST \/validate on port 9000\) did not answer within 2 s/);
  });
});
