import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { describe, it } from "node:test";
import type { MicrovmRecord } from "../../src/store/records.js";
import type { FakeDriver } from "./fake-driver.js";
import { allHooks, exists, withWorld, type World } from "./world.js";

/**
 * src/engine/reconcile.ts: a new VmEngine over the store and data directory a
 * previous run of the server left, after each kind of crash. The records are
 * written as that run left them; the new driver says which of its VMs still
 * live (adoptable, or alive but not adoptable). Every VM of the previous run
 * that is not adopted must be stopped (killLeftover), none left behind.
 */

const idle = { idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 300, autoResumeEnabled: true } };

/** The disk a MicroVM that ran has. */
async function writeDisk(w: World, microvmId: string): Promise<void> {
  const files = w.files(microvmId);
  await files.create();
  await writeFile(files.disk, "qcow2 overlay\n");
}

/** killLeftover was asked about `microvm`'s run directory; `adopted` says whether its VM was adopted instead. */
function assertSettledLeftover(driver: FakeDriver, w: World, microvm: MicrovmRecord, adopted: boolean): void {
  const runDir = w.files(microvm.microvmId).runDir;
  const adoptedVms = driver.callsOf("adopt").filter((c) => c.runDir === runDir && c.adopted);
  assert.equal(adoptedVms.length, adopted ? 1 : 0, `adopted ${microvm.microvmId}`);
  const killed = driver.callsOf("killLeftover").filter((c) => c.runDir === runDir);
  assert.equal(killed.length, adopted ? 0 : 1, `killLeftover for ${microvm.microvmId} (${microvm.state})`);
}

describe("reconcile after a restart", () => {
  it("adopts a RUNNING MicroVM whose VM survived: it stays RUNNING and its timers go on", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const startedAt = new Date(w.clock.now().getTime() - 200_000);
      const m = await w.insertMicrovm("RUNNING", { maximumDurationInSeconds: 300, ...idle }, { startedAt });
      await writeDisk(w, m.microvmId);
      await w.restart((d) => d.leftBehind(w.files(m.microvmId).runDir, "alive"));
      assertSettledLeftover(w.driver, w, m, true);
      assert.equal((await w.get(m.microvmId)).state, "RUNNING");
      assert.equal(w.driver.vm(m.microvmId).origin, "adopt");
      assert.deepEqual(w.driver.ops(m.microvmId), ["adopt"]);
      // The idle timer runs from the adoption: the adopted VM is suspended after 60 s without traffic.
      w.clock.advanceSeconds(60);
      await w.until(m.microvmId, "SUSPENDED");
      assert.deepEqual(w.driver.ops(m.microvmId), ["adopt", "snapshot", "stop"]);
      assert.deepEqual(w.driver.hooks.paths(m.microvmId), ["/suspend"]);
      // The maximum duration still counts from the recorded startedAt: 300 s after it, 100 s after the restart.
      w.clock.advanceSeconds(40);
      const ended = await w.until(m.microvmId, "TERMINATED");
      assert.equal(ended.stateReason, "The MicroVM reached its maximum duration of 300 seconds.");
      assert.deepEqual(w.driver.remainingLeftovers(), []);
    }));

  it("ends a RUNNING MicroVM whose VM died with the server: TERMINATED, did not survive", () =>
    withWorld({}, async (w) => {
      const gone = await w.insertMicrovm("RUNNING", idle);
      const stuck = await w.insertMicrovm("RUNNING", idle);
      await writeDisk(w, gone.microvmId);
      await writeDisk(w, stuck.microvmId);
      await w.restart((d) => d.leftBehind(w.files(stuck.microvmId).runDir, "unadoptable"));
      for (const m of [gone, stuck]) {
        const ended = await w.until(m.microvmId, "TERMINATED");
        assert.equal(ended.stateReason, "The service restarted and the MicroVM's VM did not survive it.");
        assertSettledLeftover(w.driver, w, m, false);
        assert.equal(await exists(w.files(m.microvmId).disk), false);
      }
      assert.deepEqual(w.driver.remainingLeftovers(), []);
      assert.deepEqual(w.driver.vms, []);
      assert.deepEqual(w.clock.deadlines(), []);
    }));

  it("makes a SUSPENDING MicroVM with a complete suspended state SUSPENDED, its timers armed", () =>
    withWorld({}, async (w) => {
      const m = await w.insertMicrovm("SUSPENDING", { maximumDurationInSeconds: 28_800, ...idle });
      await w.writeSuspendedFiles(m.microvmId);
      await w.restart();
      const suspended = await w.until(m.microvmId, "SUSPENDED");
      assertSettledLeftover(w.driver, w, m, false);
      assert.equal(await exists(w.files(m.microvmId).suspendedState), true);
      assert.deepEqual(w.driver.vms, []);
      // Its suspended period runs from the reconciliation.
      w.clock.advanceSeconds(299);
      await w.quiet();
      assert.equal((await w.get(m.microvmId)).state, "SUSPENDED");
      w.clock.advanceSeconds(1);
      const ended = await w.until(m.microvmId, "TERMINATED");
      assert.match(ended.stateReason ?? "", /stayed suspended for 300 seconds/);
      assert.ok(suspended.updatedAt.getTime() <= w.clock.now().getTime());
    }));

  it("adopts a SUSPENDING MicroVM whose VM survived and suspends it again", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const m = await w.insertMicrovm("SUSPENDING", idle, { stateReason: "Suspended by its idle policy." });
      await writeDisk(w, m.microvmId);
      const files = w.files(m.microvmId);
      await writeFile(files.partialSuspendedState, "half a state: the save was cut short\n");
      await w.restart((d) => d.leftBehind(files.runDir, "alive"));
      await w.until(m.microvmId, "SUSPENDED");
      assertSettledLeftover(w.driver, w, m, true);
      assert.deepEqual(w.driver.ops(m.microvmId), ["adopt", "snapshot", "stop"]);
      assert.equal(w.driver.vm(m.microvmId).state, "stopped");
      assert.equal(await exists(files.suspendedState), true);
      assert.equal(await exists(files.partialSuspendedState), false);
      assert.deepEqual(w.driver.running(), []);
      assert.deepEqual(w.driver.remainingLeftovers(), []);
    }));

  it("finishes the termination of a TERMINATING MicroVM", () =>
    withWorld({}, async (w) => {
      const m = await w.insertMicrovm("TERMINATING", {}, { stateReason: "Terminated by TerminateMicrovm." });
      await w.writeSuspendedFiles(m.microvmId);
      await w.restart((d) => d.leftBehind(w.files(m.microvmId).runDir, "unadoptable"));
      const ended = await w.until(m.microvmId, "TERMINATED");
      assert.equal(ended.stateReason, "Terminated by TerminateMicrovm.");
      assertSettledLeftover(w.driver, w, m, false);
      assert.equal(await exists(w.files(m.microvmId).disk), false);
      assert.equal(await exists(w.files(m.microvmId).suspendedState), false);
      assert.deepEqual(w.driver.remainingLeftovers(), []);
      assert.deepEqual(w.driver.vms, []);
    }));

  it("starts a STARTING MicroVM again, from its image's snapshot", () =>
    withWorld({ hooks: allHooks }, async (w) => {
      const m = await w.insertMicrovm("STARTING", { runHookPayload: "again" });
      await w.restart((d) => d.leftBehind(w.files(m.microvmId).runDir, "unadoptable"));
      await w.until(m.microvmId, "RUNNING");
      assertSettledLeftover(w.driver, w, m, false);
      assert.deepEqual(w.driver.ops(m.microvmId), ["killLeftover", "restore"]);
      assert.equal(w.driver.callsOf("restore", m.microvmId)[0]?.statePath, w.builder.snapshotOf(w.buildId).statePath);
      assert.deepEqual(w.driver.hooks.calls.map((c) => [c.path, c.body]), [["/run", "again"]]);
      assert.deepEqual(w.driver.remainingLeftovers(), []);
    }));

  it("adopts a RESUMING MicroVM whose VM runs again: RUNNING, the suspension's reason and state gone", () =>
    withWorld({}, async (w) => {
      const m = await w.insertMicrovm("RESUMING", idle, { stateReason: "No requests reached the MicroVM for 60 seconds. Suspended by its idle policy." });
      await w.writeSuspendedFiles(m.microvmId);
      await w.restart((d) => d.leftBehind(w.files(m.microvmId).runDir, "alive"));
      const running = await w.until(m.microvmId, "RUNNING");
      assert.equal(running.stateReason, undefined);
      assertSettledLeftover(w.driver, w, m, true);
      assert.deepEqual(w.driver.ops(m.microvmId), ["adopt"]);
      await w.eventually("the suspended state is removed", async () => !(await exists(w.files(m.microvmId).suspendedState)));
      // Its idle timer is armed.
      w.clock.advanceSeconds(60);
      await w.until(m.microvmId, "SUSPENDED");
    }));

  for (const leftover of ["none", "unadoptable"] as const) {
    it(`resumes a RESUMING MicroVM without a VM from its suspended state (VM of the previous run: ${leftover})`, () =>
      withWorld({}, async (w) => {
        const m = await w.insertMicrovm("RESUMING", idle, { stateReason: "Suspended by its idle policy." });
        await w.writeSuspendedFiles(m.microvmId);
        const files = w.files(m.microvmId);
        await w.restart((d) => {
          if (leftover === "unadoptable") d.leftBehind(files.runDir, leftover);
        });
        const running = await w.until(m.microvmId, ["RUNNING", "TERMINATED"]);
        assert.equal(running.state, "RUNNING", running.stateReason);
        assert.equal(running.stateReason, undefined);
        assertSettledLeftover(w.driver, w, m, false);
        const restore = w.driver.callsOf("restore", m.microvmId);
        assert.equal(restore.length, 1);
        assert.equal(restore[0]?.statePath, files.suspendedState);
        assert.equal(restore[0]?.memoryInState, true);
        assert.deepEqual(restore[0]?.spec.disk, { path: files.disk, format: "qcow2" });
        assert.deepEqual(w.driver.remainingLeftovers(), []);
        await w.eventually("the suspended state is removed", async () => !(await exists(files.suspendedState)));
      }));
  }

  it("settles every kind at once: each VM adopted or stopped, none left behind", () =>
    withWorld({}, async (w) => {
      const survived = await w.insertMicrovm("RUNNING", idle);
      const died = await w.insertMicrovm("RUNNING", idle);
      const saved = await w.insertMicrovm("SUSPENDING", idle);
      const saving = await w.insertMicrovm("SUSPENDING", idle);
      const suspended = await w.insertMicrovm("SUSPENDED", idle);
      const terminating = await w.insertMicrovm("TERMINATING");
      const starting = await w.insertMicrovm("STARTING");
      const resumed = await w.insertMicrovm("RESUMING", idle);
      const resuming = await w.insertMicrovm("RESUMING", idle);
      for (const m of [survived, died, saving]) await writeDisk(w, m.microvmId);
      for (const m of [saved, suspended, terminating, resumed, resuming]) await w.writeSuspendedFiles(m.microvmId);
      const runDir = (m: MicrovmRecord) => w.files(m.microvmId).runDir;
      await w.restart((d) => {
        for (const m of [survived, saving, resumed]) d.leftBehind(runDir(m), "alive");
        for (const m of [died, saved, suspended, terminating, starting, resuming]) d.leftBehind(runDir(m), "unadoptable");
      });
      const expected: [MicrovmRecord, string, boolean][] = [
        [survived, "RUNNING", true],
        [died, "TERMINATED", false],
        [saved, "SUSPENDED", false],
        [saving, "SUSPENDED", true],
        [suspended, "SUSPENDED", false],
        [terminating, "TERMINATED", false],
        [starting, "RUNNING", false],
        [resumed, "RUNNING", true],
        [resuming, "RUNNING", false],
      ];
      for (const [m, state, adopted] of expected) {
        const now = await w.until(m.microvmId, state as MicrovmRecord["state"]);
        assert.equal(now.state, state, `${m.state} → ${state}`);
        assertSettledLeftover(w.driver, w, m, adopted);
      }
      assert.deepEqual(w.driver.remainingLeftovers(), []);
      assert.deepEqual(w.driver.running().map((vm) => vm.name).sort(), [survived, starting, resumed, resuming].map((m) => m.microvmId).sort());
    }));

  it("adopts, after a clean stop, the VMs the previous engine left running", () =>
    withWorld({}, async (w) => {
      const { microvmId: id } = await w.running(idle);
      const first = w.driver;
      await w.engine.close();
      assert.deepEqual(first.ops(id), ["restore", "detach"]);
      await w.restart((d) => d.leftBehind(w.files(id).runDir, "alive"));
      assert.equal((await w.get(id)).state, "RUNNING");
      assert.deepEqual(w.driver.ops(id), ["adopt"]);
      w.clock.advanceSeconds(60);
      await w.until(id, "SUSPENDED");
    }));
});
