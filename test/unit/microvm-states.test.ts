import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MicrovmStateValues } from "../../src/api/generated/types.js";
import { ServiceError } from "../../src/domain/service-errors.js";
import { MicrovmLifecycle, microvmState, microvmStates, type MicrovmTransition } from "../../src/lifecycle/microvm-states.js";
import { decide } from "../../src/lifecycle/state-table.js";
import { migrate } from "../../src/store/migrations.js";
import { SqliteDriver } from "../../src/store/sqlite-driver.js";
import { SqlStore } from "../../src/store/sql-store.js";
import type { MicrovmPhase, MicrovmRecord } from "../../src/store/records.js";

describe("MicroVM state table", () => {
  const phases: MicrovmPhase[] = ["STARTING", "RESUMING", "RUNNING", "SUSPENDING", "SUSPENDED", "TERMINATING", "TERMINATED"];

  it("allows exactly the documented transitions", () => {
    const live = { STARTING: "TERMINATED", RESUMING: "TERMINATED", RUNNING: "TERMINATED", SUSPENDING: "TERMINATED", SUSPENDED: "TERMINATED", TERMINATING: "TERMINATED" } as const;
    const expected: Record<MicrovmTransition, Partial<Record<MicrovmPhase, MicrovmPhase | "done">>> = {
      suspend: { RUNNING: "SUSPENDING" },
      resume: { SUSPENDED: "RESUMING" },
      terminate: { STARTING: "TERMINATING", RESUMING: "TERMINATING", RUNNING: "TERMINATING", SUSPENDING: "TERMINATING", SUSPENDED: "TERMINATING", TERMINATING: "done", TERMINATED: "done" },
      started: { STARTING: "RUNNING" },
      resumed: { RESUMING: "RUNNING" },
      suspended: { SUSPENDING: "SUSPENDED" },
      terminated: { TERMINATING: "TERMINATED" },
      failed: live,
    };
    for (const transition of Object.keys(microvmStates) as MicrovmTransition[]) {
      for (const state of phases) {
        const want = expected[transition][state];
        const got = decide(microvmStates, transition, state);
        if (want === undefined) assert.equal(got.kind, "forbidden", `${transition} from ${state}`);
        else if (want === "done") assert.equal(got.kind, "done", `${transition} from ${state}`);
        else assert.deepEqual(got, { kind: "move", to: want }, `${transition} from ${state}`);
      }
    }
  });

  it("never leaves TERMINATED", () => {
    for (const transition of Object.keys(microvmStates) as MicrovmTransition[]) {
      assert.notEqual(decide(microvmStates, transition, "TERMINATED").kind, "move", transition);
    }
  });

  it("shows starting and resuming as PENDING, and every other phase as itself", () => {
    assert.deepEqual(
      phases.map(microvmState),
      ["PENDING", "PENDING", "RUNNING", "SUSPENDING", "SUSPENDED", "TERMINATING", "TERMINATED"],
    );
    for (const state of MicrovmStateValues) assert.ok(phases.map(microvmState).includes(state), state);
  });
});

/** A test double of the engine: it reports what a VM driver would, through the lifecycle. */
async function withLifecycle(work: (lifecycle: MicrovmLifecycle, microvm: MicrovmRecord, store: SqlStore) => Promise<void>) {
  const driver = new SqliteDriver(":memory:");
  await migrate(driver);
  const store = SqlStore.over(driver);
  const now = new Date();
  const owner = { accountId: "000000000000", region: "us-east-1" };
  await store.insertImage({ ...owner, imageId: "img", name: "app", state: "CREATED", tags: {}, createdAt: now, updatedAt: now });
  const microvm: MicrovmRecord = {
    ...owner,
    microvmId: "mvm-00000000000000001",
    imageId: "img",
    imageName: "app",
    imageVersion: 1,
    state: "STARTING",
    config: { maximumDurationInSeconds: 60 },
    createdAt: now,
    updatedAt: now,
  };
  await store.insertMicrovm(microvm);
  try {
    await work(new MicrovmLifecycle(store), microvm, store);
  } finally {
    await store.close();
  }
}

describe("MicrovmLifecycle", () => {
  it("walks a MicroVM through run, suspend, resume and terminate", () =>
    withLifecycle(async (lifecycle, microvm, store) => {
      let m = (await lifecycle.apply(microvm, "started")).microvm;
      for (const step of ["suspend", "suspended", "resume", "resumed", "terminate", "terminated"] as const) {
        m = (await lifecycle.apply(m, step)).microvm;
      }
      const stored = await store.findMicrovm(microvm, microvm.microvmId);
      assert.equal(stored?.state, "TERMINATED");
      assert.ok(stored?.terminatedAt instanceof Date);
    }));

  it("answers a forbidden action with a ConflictException naming the state", () =>
    withLifecycle(async (lifecycle, microvm) => {
      await assert.rejects(lifecycle.apply(microvm, "suspend"), (e: unknown) => {
        assert.ok(e instanceof ServiceError);
        assert.equal(e.errorType, "ConflictException");
        assert.match(e.message, /is PENDING; SuspendMicrovm is not allowed/);
        assert.equal(e.members.resourceId, microvm.microvmId);
        return true;
      });
    }));

  it("decides from the stored state when a stale record lost a race", () =>
    withLifecycle(async (lifecycle, microvm) => {
      await lifecycle.apply(microvm, "terminate");
      // `microvm` still says STARTING; the store says TERMINATING, where terminate is already done.
      const again = await lifecycle.apply(microvm, "terminate");
      assert.equal(again.moved, false);
      assert.equal(again.microvm.state, "TERMINATING");
      await assert.rejects(lifecycle.apply(microvm, "started"), /is TERMINATING/);
    }));

  it("lets a timer act only from the state it saw (onlyFrom), not from one a request moved to meanwhile", () =>
    withLifecycle(async (lifecycle, microvm) => {
      const { microvm: running } = await lifecycle.apply(microvm, "started");
      const { microvm: suspending } = await lifecycle.apply(running, "suspend");
      const { microvm: suspended } = await lifecycle.apply(suspending, "suspended");
      await lifecycle.apply(suspended, "resume"); // a request woke it: RESUMING now
      // The suspended-period timer still holds the SUSPENDED record; terminate would be allowed from RESUMING.
      const late = await lifecycle.apply(suspended, "terminate", {}, { onlyFrom: ["SUSPENDED"] });
      assert.equal(late.moved, false);
      assert.equal(late.microvm.state, "RESUMING");
    }));

  it("clears the reason a previous state left when asked to (stateReason: null)", () =>
    withLifecycle(async (lifecycle, microvm, store) => {
      const { microvm: running } = await lifecycle.apply(microvm, "started");
      const { microvm: suspending } = await lifecycle.apply(running, "suspend", { stateReason: "idle" });
      const { microvm: suspended } = await lifecycle.apply(suspending, "suspended");
      const { microvm: resuming } = await lifecycle.apply(suspended, "resume");
      assert.equal((await store.findMicrovm(microvm, microvm.microvmId))?.stateReason, "idle");
      const { microvm: resumed } = await lifecycle.apply(resuming, "resumed", { stateReason: null });
      assert.equal(resumed.stateReason, undefined);
      assert.equal((await store.findMicrovm(microvm, microvm.microvmId))?.stateReason, undefined);
    }));

  it("serializes concurrent transitions: exactly one of two racing terminates moves", () =>
    withLifecycle(async (lifecycle, microvm) => {
      const results = await Promise.all([lifecycle.apply(microvm, "terminate"), lifecycle.apply(microvm, "terminate")]);
      assert.equal(results.filter((r) => r.moved).length, 1);
    }));
});
