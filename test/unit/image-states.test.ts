import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { buildStates, ImageLifecycle, imageStates, versionStates } from "../../src/lifecycle/image-states.js";
import { decide } from "../../src/lifecycle/state-table.js";
import { migrate } from "../../src/store/migrations.js";
import type { BuildRecord, ImageRecord, VersionRecord } from "../../src/store/records.js";
import { SqliteDriver } from "../../src/store/sqlite-driver.js";
import { SqlStore } from "../../src/store/sql-store.js";

describe("image, version and build state tables", () => {
  it("moves builds PENDING → IN_PROGRESS → SUCCESSFUL or FAILED, and never back", () => {
    assert.deepEqual(decide(buildStates, "start", "PENDING"), { kind: "move", to: "IN_PROGRESS" });
    assert.deepEqual(decide(buildStates, "succeed", "IN_PROGRESS"), { kind: "move", to: "SUCCESSFUL" });
    assert.deepEqual(decide(buildStates, "fail", "PENDING"), { kind: "move", to: "FAILED" });
    for (const t of ["start", "succeed", "fail"] as const) {
      for (const settled of ["SUCCESSFUL", "FAILED"] as const) assert.equal(decide(buildStates, t, settled).kind, "forbidden", `${t} from ${settled}`);
    }
  });

  it("lets a deleted version stay deleted, and deleting it again is done", () => {
    for (const t of ["start", "succeed", "fail"] as const) assert.equal(decide(versionStates, t, "DELETED").kind, "forbidden", t);
    assert.equal(decide(versionStates, "delete", "DELETED").kind, "done");
    assert.deepEqual(decide(versionStates, "delete", "SUCCESSFUL"), { kind: "move", to: "DELETED" });
  });

  it("settles an image by what it was doing: creating or updating", () => {
    assert.deepEqual(decide(imageStates, "built", "CREATING"), { kind: "move", to: "CREATED" });
    assert.deepEqual(decide(imageStates, "built", "UPDATING"), { kind: "move", to: "UPDATED" });
    assert.deepEqual(decide(imageStates, "failed", "CREATING"), { kind: "move", to: "CREATE_FAILED" });
    assert.deepEqual(decide(imageStates, "failed", "UPDATING"), { kind: "move", to: "UPDATE_FAILED" });
    assert.equal(decide(imageStates, "built", "DELETED").kind, "forbidden");
    assert.equal(decide(imageStates, "update", "DELETED").kind, "forbidden");
  });
});

describe("ImageLifecycle", () => {
  async function withStore(work: (store: SqlStore, records: { image: ImageRecord; version: VersionRecord; build: BuildRecord }) => Promise<void>) {
    const driver = new SqliteDriver(":memory:");
    await migrate(driver);
    const store = SqlStore.over(driver);
    const now = new Date();
    const image: ImageRecord = { accountId: "000000000000", region: "us-east-1", imageId: "img", name: "app", state: "CREATING", tags: {}, createdAt: now, updatedAt: now };
    const version: VersionRecord = {
      imageId: "img",
      version: 1,
      state: "PENDING",
      status: "ACTIVE",
      config: { baseImageArn: "arn:aws:lambda:us-east-1:aws:microvm-image:busybox", buildRoleArn: "arn:aws:iam::000000000000:role/b", codeArtifact: { uri: "file:///x" } },
      createdAt: now,
      updatedAt: now,
    };
    const build: BuildRecord = { buildId: "b1", imageId: "img", version: 1, architecture: "X86_64", chipset: "INTEL", chipsetGeneration: "g", buildState: "PENDING", createdAt: now, updatedAt: now };
    await store.insertImage(image);
    await store.insertVersion(version);
    await store.insertBuild(build);
    try {
      await work(store, { image, version, build });
    } finally {
      await store.close();
    }
  }

  it("decides from the stored state when the caller's record is stale", () =>
    withStore(async (store, { build }) => {
      const states = new ImageLifecycle(store);
      assert.equal(await states.build(build, "start", { updatedAt: new Date() }), "moved");
      // `build` still says PENDING; the store says IN_PROGRESS, from which succeed moves.
      assert.equal(await states.build(build, "succeed", { snapshotBuild: { memorySnapshotSizeInBytes: 1 }, updatedAt: new Date() }), "moved");
      assert.equal((await store.findBuild("img", 1, "b1"))?.buildState, "SUCCESSFUL");
      assert.equal(await states.build(build, "fail", { stateReason: "late", updatedAt: new Date() }), "forbidden");
      assert.equal((await store.findBuild("img", 1, "b1"))?.stateReason, undefined);
    }));

  it("keeps a version deleted while its build settles, and the image as it was", () =>
    withStore(async (store, { image, version }) => {
      const states = new ImageLifecycle(store);
      assert.equal(await states.version(version, "delete", { updatedAt: new Date() }), "moved");
      assert.equal(await states.version(version, "succeed", { updatedAt: new Date() }), "forbidden");
      assert.equal((await store.findVersion("img", 1))?.state, "DELETED");
      assert.equal(await states.image(image, "delete", { deletedAt: new Date(), updatedAt: new Date() }), "moved");
      assert.equal(await states.image(image, "built", { updatedAt: new Date() }), "forbidden");
      assert.equal(await states.image(image, "delete", { deletedAt: new Date(), updatedAt: new Date() }), "done");
    }));

  it("serializes racing writers: exactly one of two starts moves", () =>
    withStore(async (store, { build }) => {
      const states = new ImageLifecycle(store);
      const outcomes = await Promise.all([states.build(build, "start", { updatedAt: new Date() }), states.build(build, "start", { updatedAt: new Date() })]);
      assert.equal(outcomes.filter((o) => o === "moved").length, 1);
    }));
});
