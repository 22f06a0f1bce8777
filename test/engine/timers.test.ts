import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { allHooks, exists, withWorld } from "./world.js";

/**
 * The timers of src/engine/policies.ts under a ManualClock: the idle policy
 * (suspend, or terminate with suspendedDurationSeconds 0), the suspended
 * period and maximumDurationInSeconds, in seconds of test instead of minutes.
 */

const idlePolicy = (maxIdleDurationSeconds: number, suspendedDurationSeconds: number, autoResumeEnabled = false) => ({
  idlePolicy: { maxIdleDurationSeconds, suspendedDurationSeconds, autoResumeEnabled },
});

describe("the idle policy", () => {
  it("suspends a RUNNING MicroVM that saw no traffic for maxIdleDurationSeconds: SUSPENDING, then SUSPENDED", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const { microvmId: id } = await w.running(idlePolicy(60, 3600));
      const save = w.driver.hold("snapshot");
      w.clock.advanceSeconds(59);
      await w.quiet();
      assert.equal((await w.get(id)).state, "RUNNING");
      w.clock.advanceSeconds(1);
      const suspending = await w.until(id, "SUSPENDING", { settle: false });
      assert.match(suspending.stateReason ?? "", /No requests reached the MicroVM for 60 seconds\. Suspended by its idle policy\./);
      await save.reached;
      save.open();
      const suspended = await w.until(id, "SUSPENDED");
      assert.equal(suspended.stateReason, suspending.stateReason);
      assert.deepEqual(w.driver.ops(id), ["restore", "snapshot", "stop"]);
      assert.deepEqual(w.driver.hooks.paths(id), ["/run", "/suspend"]);
      assert.deepEqual(w.driver.running(), []);
    }));

  it("counts idleness from the last traffic: activity pushes the deadline on", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running(idlePolicy(60, 3600));
      w.clock.advanceSeconds(30);
      w.engine.targets.activity(id);
      w.clock.advanceSeconds(59); // 89 s after the start, 59 s after the traffic
      await w.quiet();
      assert.equal((await w.get(id)).state, "RUNNING");
      assert.deepEqual(w.driver.ops(id), ["restore"]);
      w.clock.advanceSeconds(1);
      await w.until(id, "SUSPENDED");
    }));

  it("terminates an idle MicroVM instead of suspending it when suspendedDurationSeconds is 0", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running(idlePolicy(60, 0));
      w.clock.advanceSeconds(60);
      const ended = await w.until(id, "TERMINATED");
      assert.match(ended.stateReason ?? "", /No requests reached the MicroVM for 60 seconds\. Its idle policy ends it then \(suspendedDurationSeconds 0\)\./);
      assert.deepEqual(w.driver.ops(id), ["restore", "stop"]);
      assert.deepEqual(w.driver.running(), []);
      assert.deepEqual(w.clock.deadlines(), []);
    }));

  it("terminates a MicroVM that stays SUSPENDED for suspendedDurationSeconds", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running(idlePolicy(60, 300));
      w.clock.advanceSeconds(60);
      await w.until(id, "SUSPENDED");
      w.clock.advanceSeconds(299);
      await w.quiet();
      assert.equal((await w.get(id)).state, "SUSPENDED");
      w.clock.advanceSeconds(1);
      const ended = await w.until(id, "TERMINATED");
      assert.match(ended.stateReason ?? "", /stayed suspended for 300 seconds, as long as its idle policy allows/);
      assert.equal(await exists(w.files(id).suspendedState), false);
      assert.equal(await exists(w.files(id).disk), false);
      assert.deepEqual(w.driver.ops(id), ["restore", "snapshot", "stop"]);
      assert.deepEqual(w.clock.deadlines(), []);
    }));

  it("leaves alone a MicroVM that a request woke before its suspended period ended (the timer acts only from SUSPENDED)", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running(idlePolicy(60, 100, true));
      w.clock.advanceSeconds(60);
      const suspended = await w.until(id, "SUSPENDED");
      const restore = w.driver.hold("restore");
      const woken = w.engine.targets.wake(suspended, 3_600_000); // the wait is counted on the manual clock, which moves on below
      await restore.reached;
      assert.equal((await w.get(id)).state, "RESUMING");
      // The suspended period ends while the resume is under way: its timer finds the MicroVM no longer SUSPENDED.
      w.clock.advanceSeconds(100);
      await w.quiet();
      assert.equal((await w.get(id)).state, "RESUMING");
      restore.open();
      const running = await woken;
      await w.settled(id);
      assert.equal(running?.state, "RUNNING");
      assert.equal(running?.stateReason, undefined);
      await w.quiet();
      assert.equal((await w.get(id)).state, "RUNNING");
      // The idle timer is armed again from the resume.
      w.clock.advanceSeconds(60);
      await w.until(id, "SUSPENDED");
    }));

  it("stops counting idleness once the MicroVM is suspended, and again from its resume", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running(idlePolicy(60, 3600));
      w.clock.advanceSeconds(10);
      await w.suspend(id);
      await w.until(id, "SUSPENDED");
      w.clock.advanceSeconds(600);
      await w.resume(id);
      const resumed = await w.until(id, "RUNNING");
      assert.equal(resumed.stateReason, undefined);
      w.clock.advanceSeconds(59);
      await w.quiet();
      assert.equal((await w.get(id)).state, "RUNNING");
      w.clock.advanceSeconds(1);
      const again = await w.until(id, "SUSPENDED");
      assert.match(again.stateReason ?? "", /No requests reached the MicroVM for 60 seconds/);
    }));
});

describe("maximumDurationInSeconds", () => {
  it("terminates a RUNNING MicroVM, after its terminate hook", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const { microvmId: id } = await w.running({ maximumDurationInSeconds: 120 });
      w.clock.advanceSeconds(119);
      await w.quiet();
      assert.equal((await w.get(id)).state, "RUNNING");
      w.clock.advanceSeconds(1);
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "The MicroVM reached its maximum duration of 120 seconds.");
      assert.deepEqual(w.driver.hooks.paths(id), ["/run", "/terminate"]);
      assert.deepEqual(w.driver.ops(id), ["restore", "stop"]);
      assert.deepEqual(w.driver.running(), []);
      assert.deepEqual(w.clock.deadlines(), []);
    }));

  it("terminates a SUSPENDED MicroVM: the duration counts while suspended", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running({ maximumDurationInSeconds: 300, ...idlePolicy(60, 3600) });
      w.clock.advanceSeconds(60);
      await w.until(id, "SUSPENDED");
      w.clock.advanceSeconds(239);
      await w.quiet();
      assert.equal((await w.get(id)).state, "SUSPENDED");
      w.clock.advanceSeconds(1);
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "The MicroVM reached its maximum duration of 300 seconds.");
      assert.equal(await exists(w.files(id).suspendedState), false);
      assert.deepEqual(w.clock.deadlines(), []);
    }));

  it("counts from the first start through a suspension and a resume", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running({ maximumDurationInSeconds: 300 });
      w.clock.advanceSeconds(100);
      await w.suspend(id);
      await w.until(id, "SUSPENDED");
      w.clock.advanceSeconds(100);
      await w.resume(id);
      await w.until(id, "RUNNING");
      w.clock.advanceSeconds(99);
      await w.quiet();
      assert.equal((await w.get(id)).state, "RUNNING");
      w.clock.advanceSeconds(1);
      const ended = await w.until(id, "TERMINATED");
      assert.equal(ended.stateReason, "The MicroVM reached its maximum duration of 300 seconds.");
    }));
});
