import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { pathToFileURL } from "node:url";
import { resolveConfig } from "../../src/config/config.js";
import { openStore } from "../../src/store/open.js";
import { MicrovmsClient } from "../../src/client/client.js";
import { BUILD_ROLE, BUSYBOX, eventually, startVmTestServer, testCacheDir } from "../support/server.js";
import { callEndpoint, Guests, qemuProcesses, spawnServe, writeSnapshotApp, type Obj } from "./support.js";

/**
 * Builds cut short by the service stopping: never left IN_PROGRESS, never a
 * QEMU left behind, and what a crash leaves is settled at the next start.
 */
const scratch: string[] = [];
after(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

test("a build under way when the service stops is FAILED with the reason, and its VM is gone", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "microvms-restart-"));
  const app = mkdtempSync(join(tmpdir(), "microvms-app-"));
  scratch.push(dataDir, app);
  // An initialisation that outlasts the test: the build is still booting it when the service stops.
  writeFileSync(join(app, "bootstrap"), "#!/bin/sh\nsleep 600\nexec httpd -f -p 8080\n", { mode: 0o755 });

  const first = await startVmTestServer({}, dataDir);
  await first.client.call("CreateMicrovmImage", { name: "slow", baseImageArn: BUSYBOX, buildRoleArn: BUILD_ROLE, codeArtifact: { uri: pathToFileURL(app).href } });
  await eventually(
    async () => ((await first.client.call("GetMicrovmImageVersion", { imageIdentifier: "slow", imageVersion: "1" })).state === "IN_PROGRESS" ? true : undefined),
    "the build to start",
    60_000,
  );
  await eventually(async () => (qemuProcesses(dataDir).length > 0 ? true : undefined), "the build's VM", 60_000);
  await first.close();
  assert.deepEqual(qemuProcesses(dataDir), []);

  // A stop records the outcome.
  const store = await openStore(resolveConfig({ dataDir }));
  const [build] = await store.buildsInState(["FAILED"]);
  assert.match(String(build?.stateReason), /interrupted: the service shut down/);
  // A crash would have left it IN_PROGRESS: put it back so, and start again.
  await store.transitionBuild(build!.buildId, ["FAILED"], "IN_PROGRESS", { stateReason: null, updatedAt: new Date() });
  await store.transitionVersion(build!.imageId, 1, ["FAILED"], "IN_PROGRESS", { stateReason: null, updatedAt: new Date() });
  await store.transitionImage(build!.imageId, ["CREATE_FAILED"], "CREATING", { updatedAt: new Date() });
  await store.close();

  const second = await startVmTestServer({}, dataDir);
  try {
    const version = await second.client.call("GetMicrovmImageVersion", { imageIdentifier: "slow", imageVersion: "1" });
    assert.equal(version.state, "FAILED");
    assert.match(String(version.stateReason), /interrupted by a restart of the service/);
    const image = await second.client.call("GetMicrovmImage", { imageIdentifier: "slow" });
    assert.deepEqual([image.state, image.latestFailedImageVersion], ["CREATE_FAILED", "1"]);
  } finally {
    await second.close();
  }
});

test("a suspended MicroVM survives a restart of the service and resumes where it was", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "microvms-restart-"));
  const app = writeSnapshotApp();
  scratch.push(dataDir, app);
  const first = await startVmTestServer({}, dataDir);
  let vm: Obj;
  let auth: Record<string, string>;
  try {
    const g = Guests.of(first);
    const version = await g.createImage("counter", pathToFileURL(app).href, { resources: [{ minimumMemoryInMiB: 256 }] });
    assert.equal(version.state, "SUCCESSFUL", version.stateReason);
    vm = await g.run({ imageIdentifier: "counter" }, ["RUNNING", "TERMINATED"]);
    assert.equal(vm.state, "RUNNING", vm.stateReason);
    auth = { "X-aws-proxy-auth": await g.token(vm.microvmId) };
    assert.deepEqual([await g.get(vm, "/cgi-bin/count"), await g.get(vm, "/cgi-bin/count")], ["1", "2"]);
    await first.client.call("SuspendMicrovm", { microvmIdentifier: vm.microvmId });
    await g.untilState(vm.microvmId, ["SUSPENDED"]);
  } finally {
    await first.close();
  }

  const second = await startVmTestServer({}, dataDir);
  try {
    const g = Guests.of(second);
    assert.equal((await second.client.call("GetMicrovm", { microvmIdentifier: vm.microvmId })).state, "SUSPENDED");
    await second.client.call("ResumeMicrovm", { microvmIdentifier: vm.microvmId });
    const resumed = await g.untilState(vm.microvmId, ["RUNNING", "TERMINATED"]);
    assert.equal(resumed.state, "RUNNING", resumed.stateReason);
    // Its memory is as it was, and a token issued before the restart still works (the proxy moved port: the endpoint is the new one).
    const answer = await callEndpoint(resumed.endpoint, second.server.proxyUrl, "/cgi-bin/count", auth);
    assert.deepEqual([answer.status, answer.body.trim()], [200, "3"]);
    await second.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId });
    await g.untilState(vm.microvmId, ["TERMINATED"]);
  } finally {
    await second.close();
  }
  assert.deepEqual(qemuProcesses(dataDir), []);
});

test("after kill -9 of `microvms serve`, the next start adopts every running VM and ends those that died", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "microvms-restart-"));
  const app = writeSnapshotApp();
  scratch.push(dataDir, app);
  const serve = await spawnServe(dataDir, testCacheDir);
  let kept: Obj;
  let lost: Obj;
  let keptPid: number;
  try {
    const g = new Guests(new MicrovmsClient({ endpoint: serve.apiUrl }), serve.proxyUrl);
    const version = await g.createImage("counter", pathToFileURL(app).href, { resources: [{ minimumMemoryInMiB: 256 }] });
    assert.equal(version.state, "SUCCESSFUL", version.stateReason);
    [kept, lost] = await Promise.all([
      g.run({ imageIdentifier: "counter" }, ["RUNNING", "TERMINATED"]),
      g.run({ imageIdentifier: "counter" }, ["RUNNING", "TERMINATED"]),
    ]);
    for (const vm of [kept!, lost!]) assert.equal(vm.state, "RUNNING", vm.stateReason);
    assert.equal(await g.get(kept!, "/cgi-bin/count"), "1");
    [keptPid] = qemuProcesses(kept!.microvmId) as [number];
  } finally {
    serve.kill();
    await serve.exited;
  }
  // The VMs outlive the server; one of them dies while no server watches.
  assert.deepEqual(qemuProcesses(kept!.microvmId), [keptPid!]);
  for (const pid of qemuProcesses(lost!.microvmId)) process.kill(pid, "SIGKILL");

  const second = await startVmTestServer({}, dataDir);
  try {
    const g = Guests.of(second);
    const adopted: Obj = await second.client.call("GetMicrovm", { microvmIdentifier: kept!.microvmId });
    assert.equal(adopted.state, "RUNNING");
    // The same VM, with its memory: the counter goes on, through the new server's endpoint.
    assert.equal(await g.get(adopted, "/cgi-bin/count"), "2");
    assert.deepEqual(qemuProcesses(kept!.microvmId), [keptPid!]);
    await g.get(adopted, "/cgi-bin/log?after-adoption");
    await eventually(
      async () => (readFileSync(join(dataDir, "microvms", kept!.microvmId, "output.log"), "utf8").includes("after-adoption") ? true : undefined),
      "the adopted VM's output",
    );
    const dead = await g.untilState(lost!.microvmId, ["TERMINATED"]);
    assert.match(dead.stateReason, /did not survive/);
    await second.client.call("TerminateMicrovm", { microvmIdentifier: kept!.microvmId });
    await g.untilState(kept!.microvmId, ["TERMINATED"]);
    assert.deepEqual(qemuProcesses(kept!.microvmId), []);
  } finally {
    await second.stop();
  }
});

test("`microvms serve` starts on a fresh machine: guest files built, acceleration probed, then serving", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "microvms-fresh-"));
  scratch.push(dataDir);
  // A cache of its own: nothing built or probed before (a QEMU that fails the KVM probe must not end the server).
  const serve = await spawnServe(dataDir, join(dataDir, "cache"));
  try {
    const answer = await new MicrovmsClient({ endpoint: serve.apiUrl }).call("ListManagedMicrovmImages", {});
    assert.ok((answer.items as unknown[]).length >= 4);
  } finally {
    serve.kill();
    await serve.exited;
  }
});
