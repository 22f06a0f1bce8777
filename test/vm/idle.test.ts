import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { startVmTestServer, type TestServer } from "../support/server.js";
import { callEndpoint, Guests, qemuProcesses, writeSnapshotApp, type Obj } from "./support.js";

/**
 * The idle policy with real guests. Its minimum idle period is 60 s, so these
 * few tests run side by side (and beside the other suites): a MicroVM left
 * alone suspends itself and wakes on the next request with its memory intact;
 * without auto-resume the request is refused; the suspended period ends it.
 */
const IDLE_WAIT_MS = 150_000;
let t: TestServer;
let g: Guests;
let appDir: string;

before(async () => {
  t = await startVmTestServer();
  g = Guests.of(t);
  appDir = writeSnapshotApp();
  const version = await g.createImage("idle", pathToFileURL(appDir).href, { resources: [{ minimumMemoryInMiB: 256 }] });
  assert.equal(version.state, "SUCCESSFUL", version.stateReason);
});

after(async () => {
  await t?.stop();
  rmSync(appDir, { recursive: true, force: true });
  assert.deepEqual(qemuProcesses(t.dataDir), []);
});

const runWith = async (idlePolicy: Obj) => {
  const vm = await g.run({ imageIdentifier: "idle", idlePolicy }, ["RUNNING", "TERMINATED"]);
  assert.equal(vm.state, "RUNNING", vm.stateReason);
  return vm;
};

const settles = (microvmId: string, states: string[]) =>
  g.untilState(microvmId, states).catch(() => assert.fail(`MicroVM ${microvmId} did not reach ${states.join("/")}`));

describe("the idle policy", { concurrency: true }, () => {
  test("an idle MicroVM suspends itself, and a request resumes it with its memory intact", async () => {
    const vm = await runWith({ maxIdleDurationSeconds: 60, suspendedDurationSeconds: 3600, autoResumeEnabled: true });
    const auth = { "X-aws-proxy-auth": await g.token(vm.microvmId) };
    assert.equal((await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/count", auth)).body.trim(), "1");
    const suspended = await eventuallyState(vm.microvmId, ["SUSPENDED"]);
    assert.match(suspended.stateReason, /No requests reached the MicroVM for 60 seconds/);
    assert.deepEqual(qemuProcesses(vm.microvmId), []);
    // The request waits for the resume and is answered, as if the MicroVM never slept.
    const answer = await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/count", auth);
    assert.deepEqual([answer.status, answer.body.trim()], [200, "2"]);
    const running = await t.client.call("GetMicrovm", { microvmIdentifier: vm.microvmId });
    assert.deepEqual([running.state, running.startedAt], ["RUNNING", vm.startedAt]);
    await t.client.call("TerminateMicrovm", { microvmIdentifier: vm.microvmId });
    await settles(vm.microvmId, ["TERMINATED"]);
  });

  test("without auto-resume a request to a suspended MicroVM is refused, and the suspended period ends it", async () => {
    const vm = await runWith({ maxIdleDurationSeconds: 60, suspendedDurationSeconds: 5, autoResumeEnabled: false });
    const auth = { "X-aws-proxy-auth": await g.token(vm.microvmId) };
    await eventuallyState(vm.microvmId, ["SUSPENDED"]);
    const refused = await callEndpoint(vm.endpoint, t.server.proxyUrl, "/cgi-bin/count", auth);
    assert.equal(refused.status, 503);
    assert.match(JSON.parse(refused.body).message, /is SUSPENDED/);
    const ended = await eventuallyState(vm.microvmId, ["TERMINATED"]);
    assert.match(ended.stateReason, /stayed suspended for 5 seconds/);
  });

  test("suspendedDurationSeconds 0 ends an idle MicroVM instead of suspending it", async () => {
    const vm = await runWith({ maxIdleDurationSeconds: 60, suspendedDurationSeconds: 0, autoResumeEnabled: true });
    const ended = await eventuallyState(vm.microvmId, ["TERMINATED"]);
    assert.match(ended.stateReason, /idle policy ends it then/);
    assert.deepEqual(qemuProcesses(vm.microvmId), []);
  });
});

/** Waits out an idle period (60 s and then some), without touching the endpoint. */
async function eventuallyState(microvmId: string, states: string[]): Promise<Obj> {
  const deadline = Date.now() + IDLE_WAIT_MS;
  for (;;) {
    const m: Obj = await t.client.call("GetMicrovm", { microvmIdentifier: microvmId });
    if (states.includes(m.state)) return m;
    if (Date.now() > deadline) assert.fail(`MicroVM ${microvmId} is still ${m.state}`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
