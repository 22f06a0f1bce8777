import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { VmError } from "../../src/drivers/driver.js";
import { TargetUnavailable } from "../../src/engine/endpoint-targets.js";
import { allHooks, assertNoHostDetail, exists, withWorld } from "./world.js";

/**
 * The engine's actions (src/engine/actions) with a FakeDriver: what reaches the
 * driver and the hooks, in which order, and what the store says after.
 */

describe("the engine's queue", () => {
  it("carries out run, suspend and resume of one MicroVM in order", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const { microvmId: id } = await w.running();
      await w.suspend(id);
      await w.until(id, "SUSPENDED");
      await w.resume(id);
      await w.until(id, "RUNNING");
      assert.deepEqual(w.driver.ops(id), ["restore", "snapshot", "stop", "restore"]);
      assert.deepEqual(w.driver.hooks.paths(id), ["/run", "/suspend", "/resume"]);
      const files = w.files(id);
      const snapshot = w.builder.snapshotOf(w.buildId);
      const [run, resume] = w.driver.callsOf("restore", id);
      assert.equal(run?.statePath, snapshot.statePath);
      assert.equal(run?.memoryInState, false);
      assert.deepEqual(run?.spec.disk, { path: files.disk, format: "qcow2", backing: snapshot.disk });
      assert.deepEqual(run?.spec.memory, { path: snapshot.memoryPath, share: false });
      assert.equal(run?.spec.runDir, files.runDir);
      assert.deepEqual(w.driver.callsOf("snapshot", id).map((s) => [s.statePath, s.withMemory]), [[files.partialSuspendedState, true]]);
      assert.equal(resume?.statePath, files.suspendedState);
      assert.equal(resume?.memoryInState, true);
      assert.deepEqual(resume?.spec.disk, { path: files.disk, format: "qcow2" });
      assert.deepEqual(w.driver.running().map((vm) => vm.name), [id]);
    }));

  it("runs work recorded during a suspension only once the suspension is done", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const { microvmId: id } = await w.running();
      const save = w.driver.hold("snapshot");
      await w.suspend(id);
      await save.reached;
      await w.terminate(id);
      await w.quiet();
      // The termination waits its turn: nothing of it has happened while the save is under way.
      assert.equal((await w.get(id)).state, "TERMINATING");
      assert.deepEqual(w.driver.ops(id), ["restore", "snapshot"]);
      assert.deepEqual(w.driver.hooks.paths(id), ["/run", "/suspend"]);
      save.open();
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "Terminated by TerminateMicrovm.");
      assert.deepEqual(w.driver.ops(id), ["restore", "snapshot", "stop"]);
      assert.deepEqual(w.driver.running(), []);
      assert.equal(await exists(w.files(id).suspendedState), false);
      assert.equal(await exists(w.files(id).disk), false);
    }));

  it("lets two MicroVMs proceed independently: one waiting for its restore holds up no other", () =>
    withWorld({}, async (w) => {
      const slow = w.driver.hold("restore");
      const { microvmId: a } = await w.run();
      await slow.reached;
      const { microvmId: b } = await w.running();
      await w.suspend(b);
      await w.until(b, "SUSPENDED");
      await w.resume(b);
      await w.until(b, "RUNNING");
      assert.equal((await w.get(a)).state, "STARTING");
      assert.deepEqual(w.driver.ops(a), ["restore"]);
      slow.open();
      await w.until(a, "RUNNING");
      assert.deepEqual(w.driver.ops(a), ["restore"]);
      assert.deepEqual(w.driver.ops(b), ["restore", "snapshot", "stop", "restore"]);
      assert.deepEqual(w.driver.running().map((vm) => vm.name).sort(), [a, b].sort());
    }));
});

describe("terminating a start under way", () => {
  it("gives up a start whose restore hangs: TERMINATED, its VM stopped, and no run hook sent", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const restore = w.driver.hold("restore");
      const { microvmId: id } = await w.run({ runHookPayload: "payload" });
      await restore.reached;
      await w.terminate(id);
      await w.quiet();
      assert.equal((await w.get(id)).state, "TERMINATING");
      restore.open();
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "Terminated by TerminateMicrovm.");
      assert.equal(w.driver.vm(id).state, "stopped");
      assert.deepEqual(w.driver.running(), []);
      assert.deepEqual(w.driver.hooks.paths(id), ["/terminate"]);
      await assert.rejects(w.engine.targets.connect(id, 8080), TargetUnavailable);
      assert.equal(await exists(w.files(id).disk), false);
      assert.equal(await exists(w.files(id).runDir), false);
      assert.deepEqual(w.clock.deadlines(), []);
    }));

  it("gives up a start waiting for its version's build: TERMINATED, and the build's end starts nothing", () =>
    withWorld({ buildState: "PENDING" }, async (w) => {
      const { microvmId: id } = await w.run();
      await w.quiet();
      assert.equal((await w.get(id)).state, "STARTING");
      await w.terminate(id);
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "Terminated by TerminateMicrovm.");
      await w.settleBuild("SUCCESSFUL");
      await w.quiet();
      assert.deepEqual(w.driver.ops(id), []);
      assert.equal((await w.get(id)).state, "TERMINATED");
    }));

  it("runs a MicroVM that waited PENDING once its version's build succeeds", () =>
    withWorld({ buildState: "PENDING" }, async (w) => {
      const { microvmId: id } = await w.run();
      await w.quiet();
      assert.deepEqual(w.driver.ops(id), []);
      await w.settleBuild("SUCCESSFUL");
      await w.until(id, "RUNNING");
      assert.deepEqual(w.driver.ops(id), ["restore"]);
    }));

  it("ends a MicroVM whose version's build fails with the build's reason", () =>
    withWorld({ buildState: "PENDING" }, async (w) => {
      const { microvmId: id } = await w.run();
      await w.quiet();
      await w.settleBuild("FAILED", "The validate hook answered HTTP 500.");
      const ended = await w.until(id, "TERMINATED");
      assert.match(ended.stateReason ?? "", /failed to build: The validate hook answered HTTP 500/);
      assert.deepEqual(w.driver.ops(id), []);
    }));
});

describe("the run hook", () => {
  it("is sent the runHookPayload before the MicroVM is RUNNING", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const seen: string[] = [];
      w.driver.hooks.onCall = async (call) => {
        seen.push(`${call.path} while ${(await w.get(call.vm)).state}`);
      };
      const { microvmId: id } = await w.run({ runHookPayload: '{"job":42}' });
      const running = await w.until(id, "RUNNING");
      assert.deepEqual(
        w.driver.hooks.calls.map((c) => [c.vm, c.path, c.body]),
        [[id, "/run", '{"job":42}']],
      );
      assert.deepEqual(seen, ["/run while STARTING"]);
      assert.deepEqual(w.driver.vm(id).forwarded, [8080]);
      assert.equal(running.stateReason, undefined);
    }));

  it("ends the MicroVM TERMINATED when it fails, with a reason free of host detail", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      w.driver.hooks.status.run = 500;
      const { microvmId: id } = await w.run({ runHookPayload: "x" });
      const ended = await w.until(id, "TERMINATED");
      assert.match(ended.stateReason ?? "", /run hook .*answered HTTP 500/);
      assertNoHostDetail(ended.stateReason, w);
      assert.deepEqual(w.driver.running(), []);
      assert.deepEqual(w.driver.ops(id), ["restore", "stop"]);
      assert.equal(await exists(w.files(id).disk), false);
      assert.deepEqual(w.clock.deadlines(), []);
    }));

  it("ends the MicroVM TERMINATED when nothing listens for it", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      w.driver.hooksReachable = false;
      const { microvmId: id } = await w.run();
      const ended = await w.until(id, "TERMINATED");
      assert.match(ended.stateReason ?? "", /run hook .*could not connect/);
      assertNoHostDetail(ended.stateReason, w);
      assert.deepEqual(w.driver.running(), []);
    }));

  it("is not sent when the version does not enable it", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running({ runHookPayload: "x" });
      assert.deepEqual(w.driver.hooks.calls, []);
      assert.deepEqual(w.driver.vm(id).forwarded, []);
    }));
});

describe("failures", () => {
  it("a restore that fails ends the MicroVM TERMINATED with a reason free of host detail", () =>
    withWorld({}, async (w) => {
      w.driver.fail("restore", new VmError(`qemu-system-x86_64: could not open ${w.dataDir}/builds/x/state.bin: No such file or directory`));
      const { microvmId: id } = await w.run();
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "The MicroVM could not start.");
      assertNoHostDetail(ended.stateReason, w);
      assert.deepEqual(w.driver.running(), []);
    }));

  it("a VM that ends on its own while RUNNING makes the MicroVM TERMINATED with the reason", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const { microvmId: id } = await w.running({ idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 60, autoResumeEnabled: true } });
      w.driver.vm(id).crash("The application exited with status 3.", 3);
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "The application exited with status 3.");
      assert.ok(ended.terminatedAt instanceof Date);
      assert.deepEqual(w.driver.running(), []);
      assert.equal(await exists(w.files(id).disk), false);
      assert.equal(await exists(w.files(id).runDir), false);
      // Its idle and maximum-duration timers went with it.
      assert.deepEqual(w.clock.deadlines(), []);
      assert.deepEqual(w.driver.hooks.paths(id), ["/run"]);
    }));

  it("a suspension that fails ends the MicroVM TERMINATED with a reason free of host detail", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const { microvmId: id } = await w.running();
      w.driver.fail("snapshot", new VmError(`QEMU could not write ${w.files(id).partialSuspendedState}: No space left on device (ENOSPC)`));
      await w.suspend(id);
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "The MicroVM could not be suspended.");
      assertNoHostDetail(ended.stateReason, w);
      assert.deepEqual(w.driver.running(), []);
      assert.equal(await exists(w.files(id).suspendedState), false);
      assert.equal(await exists(w.files(id).partialSuspendedState), false);
      assert.equal(await exists(w.files(id).disk), false);
    }));
});

describe("suspend and resume", () => {
  it("suspends to the suspended state and stops the VM; a resume restores from it and clears the suspension's reason", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const { microvmId: id } = await w.running({ idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 3600, autoResumeEnabled: false } });
      const files = w.files(id);
      w.clock.advanceSeconds(60);
      const suspended = await w.until(id, "SUSPENDED");
      assert.match(suspended.stateReason ?? "", /No requests reached the MicroVM for 60 seconds/);
      assert.equal(await exists(files.suspendedState), true);
      assert.equal(await exists(files.partialSuspendedState), false);
      assert.equal(await exists(files.disk), true);
      assert.equal(await exists(files.runDir), false);
      assert.equal(w.driver.vm(id).state, "stopped");
      assert.deepEqual(w.driver.running(), []);

      await w.resume(id);
      const resumed = await w.until(id, "RUNNING");
      assert.equal(resumed.stateReason, undefined);
      assert.deepEqual(resumed.startedAt, suspended.startedAt);
      const restore = w.driver.callsOf("restore", id).at(-1);
      assert.equal(restore?.statePath, files.suspendedState);
      assert.equal(restore?.memoryInState, true);
      await w.eventually("the suspended state is removed once RUNNING", async () => !(await exists(files.suspendedState)));
      assert.deepEqual(w.driver.hooks.paths(id), ["/run", "/suspend", "/resume"]);
      assert.deepEqual(w.driver.running().map((vm) => vm.name), [id]);
      assert.deepEqual(await w.engine.targets.connect(id, 8080), { host: "127.0.0.1", port: await w.driver.hooks.portFor(id) });
    }));

  it("a request wakes a SUSPENDED MicroVM whose idle policy has autoResumeEnabled", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running({ idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 3600, autoResumeEnabled: true } });
      await w.suspend(id);
      const suspended = await w.until(id, "SUSPENDED");
      await assert.rejects(w.engine.targets.connect(id, 80), TargetUnavailable);
      const woken = await w.engine.targets.wake(suspended, 30_000);
      assert.equal(woken?.state, "RUNNING");
      assert.equal(woken?.stateReason, undefined);
      assert.deepEqual(w.driver.ops(id), ["restore", "snapshot", "stop", "restore"]);
      assert.equal(w.driver.callsOf("restore", id).at(-1)?.statePath, w.files(id).suspendedState);
      assert.equal(typeof (await w.engine.targets.connect(id, 80)).port, "number");
    }));

  it("a wake of a MicroVM that is suspending waits for the suspension, then resumes it", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running({ idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 3600, autoResumeEnabled: true } });
      const save = w.driver.hold("snapshot");
      const suspending = await w.suspend(id);
      await save.reached;
      const woken = w.engine.targets.wake(suspending, 30_000);
      await w.quiet();
      save.open();
      assert.equal((await woken)?.state, "RUNNING");
      assert.deepEqual(w.driver.ops(id), ["restore", "snapshot", "stop", "restore"]);
    }));
});
