import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { migrate } from "../../src/store/migrations.js";
import { PostgresDriver } from "../../src/store/postgres-driver.js";
import type { SqlDriver } from "../../src/store/sql-driver.js";
import { SqliteDriver } from "../../src/store/sqlite-driver.js";
import { SqlStore } from "../../src/store/sql-store.js";
import { imageCursor, microvmCursor, type Store } from "../../src/store/store.js";
import type { BuildRecord, ImageRecord, MicrovmRecord, VersionRecord } from "../../src/store/records.js";

/**
 * One suite, run against both backends. PostgreSQL comes from the test setup
 * (scripts/test.sh starts a throwaway cluster and sets MICROVMS_TEST_DATABASE_URL);
 * each run gets a database of its own.
 */

const owner = { accountId: "000000000000", region: "us-east-1" };
const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s));

const image = (name: string, s = 0, o = owner): ImageRecord => ({
  ...o,
  imageId: `img-${name}-${randomBytes(4).toString("hex")}`,
  name,
  state: "CREATING",
  tags: { team: "a" },
  createdAt: t(s),
  updatedAt: t(s),
});

const version = (imageId: string, n: number, state: VersionRecord["state"] = "PENDING"): VersionRecord => ({
  imageId,
  version: n,
  state,
  status: "ACTIVE",
  config: {
    baseImageArn: "arn:aws:lambda:us-east-1:aws:microvm-image:busybox",
    buildRoleArn: "arn:aws:iam::000000000000:role/b",
    codeArtifact: { uri: "file:///x" },
    environmentVariables: { A: "1" },
  },
  createdAt: t(n),
  updatedAt: t(n),
});

const microvm = (imageId: string, id: string, s: number): MicrovmRecord => ({
  ...owner,
  microvmId: id,
  imageId,
  imageName: "app",
  imageVersion: 1,
  state: "STARTING",
  config: { maximumDurationInSeconds: 100, idlePolicy: { autoResumeEnabled: true, maxIdleDurationSeconds: 60, suspendedDurationSeconds: 0 } },
  createdAt: t(s),
  startedAt: t(s),
  updatedAt: t(s),
});

function storeSuite(name: string, openDriver: () => Promise<{ driver: SqlDriver; cleanup: () => Promise<void> }>) {
  describe(`store on ${name}`, () => {
    let store: Store;
    let cleanup: () => Promise<void>;
    let driver: SqlDriver;

    before(async () => {
      ({ driver, cleanup } = await openDriver());
      await migrate(driver);
      await migrate(driver); // a second start applies nothing twice
      store = SqlStore.over(driver);
    });
    after(async () => {
      await store.close();
      await cleanup();
    });

    it("keeps image names unique among live images, and reusable after deletion", async () => {
      const first = image("unique");
      assert.equal(await store.insertImage(first), true);
      assert.equal(await store.insertImage(image("unique")), false);
      assert.equal(await store.insertImage(image("unique", 0, { accountId: "111111111111", region: "us-east-1" })), true);
      assert.equal(await store.insertImage(image("unique", 0, { ...owner, region: "eu-west-1" })), true);
      assert.equal(await store.transitionImage(first.imageId, ["CREATED"], "DELETED", { deletedAt: t(5), updatedAt: t(5) }), false);
      assert.equal(await store.transitionImage(first.imageId, ["CREATING"], "DELETED", { deletedAt: t(5), updatedAt: t(5) }), true);
      assert.equal(await store.findImage(owner, "unique"), undefined);
      assert.equal((await store.findDeletedImage(owner, "unique"))?.imageId, first.imageId);
      assert.equal(await store.insertImage(image("unique")), true);
    });

    it("round-trips records: dates, tags and JSON configuration", async () => {
      const img = image("roundtrip", 7);
      await store.insertImage(img);
      const found = await store.findImage(owner, "roundtrip");
      assert.deepEqual(found?.createdAt, t(7));
      assert.deepEqual(found?.tags, { team: "a" });
      const v = version(img.imageId, await store.allocateVersion(img.imageId));
      await store.insertVersion(v);
      assert.deepEqual(await store.findVersion(img.imageId, 1), { ...v, stateReason: undefined });
    });

    it("allocates version numbers 1, 2, 3... without duplicates under concurrency", async () => {
      const img = image("versions");
      await store.insertImage(img);
      const numbers = await Promise.all(Array.from({ length: 8 }, () => store.transaction((tx) => tx.allocateVersion(img.imageId))));
      assert.deepEqual([...numbers].sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7, 8]);
    });

    it("derives the latest active and latest failed versions", async () => {
      const img = image("derived");
      await store.insertImage(img);
      for (const [n, state] of [[1, "SUCCESSFUL"], [2, "FAILED"], [3, "SUCCESSFUL"], [4, "PENDING"]] as const) {
        await store.insertVersion(version(img.imageId, n, state));
      }
      let found = await store.findImage(owner, "derived");
      assert.equal(found?.latestActiveVersion, 3);
      assert.equal(found?.latestFailedVersion, 2);
      await store.updateVersion(img.imageId, 3, { status: "INACTIVE", updatedAt: t(9) });
      found = await store.findImage(owner, "derived");
      assert.equal(found?.latestActiveVersion, 1);
      assert.equal(await store.transitionVersion(img.imageId, 1, ["SUCCESSFUL"], "DELETED", { updatedAt: t(9) }), true);
      assert.deepEqual((await store.listVersions(img.imageId, { limit: 10 })).items.map((v) => v.version), [2, 3, 4]);
      assert.equal((await store.findImage(owner, "derived"))?.latestActiveVersion, undefined);
      // The newest ACTIVE version still building, for a RunMicrovm that names no version.
      assert.equal((await store.newestVersionInStates(img.imageId, ["PENDING", "IN_PROGRESS"]))?.version, 4);
      await store.updateVersion(img.imageId, 4, { status: "INACTIVE", updatedAt: t(9) });
      assert.equal(await store.newestVersionInStates(img.imageId, ["PENDING", "IN_PROGRESS"]), undefined);
    });

    it("pages images in creation order, filtered by a case-sensitive substring", async () => {
      const o = { accountId: "333333333333", region: "us-east-1" };
      for (const [i, n] of ["alpha", "beta", "alphabet", "Alpine", "gamma"].entries()) await store.insertImage(image(n, i, o));
      const names: string[] = [];
      let cursor: (string | number)[] | undefined;
      for (;;) {
        const page = await store.listImages(o, { after: cursor, limit: 2 });
        names.push(...page.items.map((i) => i.name));
        if (!page.more) break;
        cursor = imageCursor(page.items[page.items.length - 1]!);
      }
      assert.deepEqual(names, ["alpha", "beta", "alphabet", "Alpine", "gamma"]);
      assert.deepEqual((await store.listImages(o, { nameFilter: "alp", limit: 10 })).items.map((i) => i.name), ["alpha", "alphabet"]);
      assert.deepEqual((await store.listImages(o, { nameFilter: "%", limit: 10 })).items, []);
    });

    it("filters builds by architecture, chipset and generation", async () => {
      const img = image("builds");
      await store.insertImage(img);
      await store.insertVersion(version(img.imageId, 1));
      const build = (id: string, architecture: BuildRecord["architecture"], chipset: BuildRecord["chipset"]): BuildRecord => ({
        buildId: id, imageId: img.imageId, version: 1, architecture, chipset, chipsetGeneration: "g1", buildState: "PENDING", createdAt: t(1), updatedAt: t(1),
      });
      await store.insertBuild(build("b1", "X86_64", "INTEL"));
      await store.insertBuild(build("b2", "ARM_64", "GRAVITON"));
      assert.deepEqual((await store.listBuilds(img.imageId, 1, { architecture: "ARM_64", limit: 10 })).items.map((b) => b.buildId), ["b2"]);
      assert.deepEqual((await store.listBuilds(img.imageId, 1, { chipset: "INTEL", chipsetGeneration: "g1", limit: 10 })).items.map((b) => b.buildId), ["b1"]);
      assert.equal(await store.transitionBuild("b1", ["IN_PROGRESS"], "SUCCESSFUL", { updatedAt: t(2) }), false);
      assert.equal(await store.transitionBuild("b1", ["PENDING"], "IN_PROGRESS", { stateReason: "reason", updatedAt: t(2) }), true);
      assert.equal((await store.findBuild(img.imageId, 1, "b1"))?.stateReason, "reason");
      // null clears a field; undefined leaves it.
      await store.transitionBuild("b1", ["IN_PROGRESS"], "SUCCESSFUL", { stateReason: null, snapshotBuild: { memorySnapshotSizeInBytes: 42 }, updatedAt: t(2) });
      assert.equal((await store.findBuild(img.imageId, 1, "b1"))?.stateReason, undefined);
      assert.deepEqual((await store.findBuild(img.imageId, 1, "b1"))?.snapshotBuild, { memorySnapshotSizeInBytes: 42 });
      assert.deepEqual((await store.buildsInState(["SUCCESSFUL"])).map((b) => b.buildId), ["b1"]);
      assert.equal((await store.findBuildInState(img.imageId, 1, "SUCCESSFUL"))?.buildId, "b1");
      assert.equal((await store.findBuildInState(img.imageId, undefined, "PENDING"))?.buildId, "b2");
      assert.equal(await store.findBuildInState(img.imageId, 2, "PENDING"), undefined);
    });

    it("moves MicroVMs by compare-and-set, and counts and pages them", async () => {
      const img = image("vms");
      await store.insertImage(img);
      for (let i = 0; i < 3; i++) await store.insertMicrovm(microvm(img.imageId, `mvm-0000000000000000${i}`, i));
      assert.equal(await store.transitionMicrovm("mvm-00000000000000000", ["STARTING"], "RUNNING", { updatedAt: t(10) }), true);
      assert.equal(await store.transitionMicrovm("mvm-00000000000000000", ["STARTING"], "RUNNING", { updatedAt: t(10) }), false);
      await store.transitionMicrovm("mvm-00000000000000001", ["STARTING"], "TERMINATED", { terminatedAt: t(11), stateReason: "gone", updatedAt: t(11) });
      const ended = await store.findMicrovm(owner, "mvm-00000000000000001");
      assert.deepEqual([ended?.state, ended?.terminatedAt, ended?.stateReason], ["TERMINATED", t(11), "gone"]);
      assert.equal(await store.countLiveMicrovms({ imageId: img.imageId }), 2);
      assert.equal(await store.countLiveMicrovms({ imageId: img.imageId, version: 2 }), 0);
      assert.ok((await store.countLiveMicrovms({ owner })) >= 2);
      const first = await store.listMicrovms(owner, { imageId: img.imageId, limit: 2 });
      assert.equal(first.more, true);
      const rest = await store.listMicrovms(owner, { imageId: img.imageId, after: microvmCursor(first.items[1]!), limit: 2 });
      assert.deepEqual(rest.items.map((m) => m.microvmId), ["mvm-00000000000000002"]);
      assert.deepEqual(rest.items[0]?.config.idlePolicy, { autoResumeEnabled: true, maxIdleDurationSeconds: 60, suspendedDurationSeconds: 0 });
      assert.equal(await store.findMicrovm({ ...owner, accountId: "999999999999" }, "mvm-00000000000000002"), undefined);
    });

    it("claims a clientToken once and keeps its first response", async () => {
      const record = { ...owner, operation: "RunMicrovm", token: "tok", requestHash: "h1", response: undefined, createdAt: t(1) };
      assert.equal(await store.claimClientToken(record), undefined);
      await store.saveClientTokenResponse(owner, "RunMicrovm", "tok", { microvmId: "m", startedAt: t(3) });
      const again = await store.claimClientToken({ ...record, requestHash: "h2" });
      assert.equal(again?.requestHash, "h1");
      assert.deepEqual(again?.response, { microvmId: "m", startedAt: t(3) });
      assert.equal(await store.pruneClientTokens(t(2)), 1);
      assert.equal(await store.claimClientToken(record), undefined);
    });

    it("rolls a failed transaction back entirely", async () => {
      const img = image("rollback");
      await assert.rejects(
        store.transaction(async (tx) => {
          await tx.insertImage(img);
          throw new Error("boom");
        }),
        /boom/,
      );
      assert.equal(await store.findImage(owner, "rollback"), undefined);
    });

    it("keeps settings and managed image dates once created", async () => {
      const a = await store.setting("key", () => "first");
      assert.equal(await store.setting("key", () => "second"), a);
      await store.recordManagedImageVersion("busybox", "1", t(1));
      await store.recordManagedImageVersion("busybox", "1", t(50));
      const find = async () => (await store.managedImageVersions()).find((r) => r.name === "busybox" && r.version === "1")!;
      assert.deepEqual([(await find()).createdAt, (await find()).updatedAt], [t(1), t(1)]);
      await store.managedImageVersionBuilt("busybox", "1", t(60));
      await store.managedImageVersionBuilt("busybox", "1", t(55)); // never backwards
      assert.deepEqual([(await find()).createdAt, (await find()).updatedAt], [t(1), t(60)]);
    });
  });
}

storeSuite("SQLite", async () => {
  const dir = mkdtempSync(join(tmpdir(), "microvms-store-"));
  return { driver: new SqliteDriver(join(dir, "test.db")), cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
});

const postgresUrl = process.env.MICROVMS_TEST_DATABASE_URL;
if (postgresUrl) {
  storeSuite("PostgreSQL", async () => {
    const database = `microvms_test_${randomBytes(6).toString("hex")}`;
    const admin = new pg.Client({ connectionString: postgresUrl });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${database}`);
    await admin.end();
    const url = new URL(postgresUrl);
    url.pathname = `/${database}`;
    const driver = await PostgresDriver.connect(url.toString());
    return {
      driver,
      cleanup: async () => {
        const dropper = new pg.Client({ connectionString: postgresUrl });
        await dropper.connect();
        await dropper.query(`DROP DATABASE IF EXISTS ${database}`);
        await dropper.end();
      },
    };
  });
} else if (process.env.CI) {
  throw new Error("MICROVMS_TEST_DATABASE_URL is not set: scripts/test.sh starts PostgreSQL for the store suite");
} else {
  describe("store on PostgreSQL", () => {
    it("needs MICROVMS_TEST_DATABASE_URL (scripts/test.sh sets it)", (t) => t.skip("no PostgreSQL"));
  });
}
