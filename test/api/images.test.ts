import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { BUSYBOX, imageInput, rejectsWith, startTestServer, type TestServer } from "../support/server.js";

let t: TestServer;
before(async () => (t = await startTestServer()));
after(() => t.stop());

const rejects = rejectsWith;

describe("CreateMicrovmImage and GetMicrovmImage", () => {
  it("creates an image, version 1 and its builds, answering 201", async () => {
    const response = await t.client.send("CreateMicrovmImage", imageInput("create-1", { tags: { team: "a" }, description: "first" }));
    assert.equal(response.status, 201);
    const body = response.json!;
    assert.equal(body.imageArn, "arn:aws:lambda:us-east-1:000000000000:microvm-image:create-1");
    assert.deepEqual([body.imageVersion, body.state, body.name, body.description], ["1", "CREATING", "create-1", "first"]);
    assert.deepEqual(body.tags, { team: "a" });
    assert.equal(body.baseImageVersion, "1");
    assert.equal(typeof body.createdAt, "number");
    assert.equal("latestActiveImageVersion" in body, false);

    const image = await t.client.call("GetMicrovmImage", { imageIdentifier: String(body.imageArn) });
    assert.deepEqual([image.name, image.state], ["create-1", "CREATING"]);
    assert.deepEqual(await t.client.call("GetMicrovmImage", { imageIdentifier: "create-1" }), image);
  });

  it("refuses a duplicate name with ConflictException", async () => {
    await t.client.call("CreateMicrovmImage", imageInput("dup"));
    await rejects(t.client.call("CreateMicrovmImage", imageInput("dup")), 409, "ConflictException", /already exists/);
  });

  it("answers clientToken retries with the first result, and conflicts on changed input", async () => {
    const first = await t.client.call("CreateMicrovmImage", imageInput("idem", { clientToken: "tok-1" }));
    const again = await t.client.call("CreateMicrovmImage", imageInput("idem", { clientToken: "tok-1" }));
    assert.deepEqual(again, first);
    await rejects(t.client.call("CreateMicrovmImage", imageInput("idem", { clientToken: "tok-1", description: "x" })), 409, "ConflictException", /clientToken/);
    const versions = await t.client.call("ListMicrovmImageVersions", { imageIdentifier: "idem" });
    assert.equal((versions.items as unknown[]).length, 1);
  });

  it("checks what the model cannot: base image, artifact URI, connectors, memory, architectures, tags", async () => {
    await rejects(t.client.call("CreateMicrovmImage", imageInput("r1", { baseImageArn: "busybox" })), 400, "ValidationException", /baseImageArn/);
    await rejects(
      t.client.call("CreateMicrovmImage", imageInput("r2", { baseImageArn: "arn:aws:lambda:us-east-1:aws:microvm-image:windows" })),
      404,
      "ResourceNotFoundException",
    );
    await rejects(t.client.call("CreateMicrovmImage", imageInput("r3", { baseImageVersion: "9" })), 404, "ResourceNotFoundException", /Version 9/);
    await rejects(t.client.call("CreateMicrovmImage", imageInput("r4", { codeArtifact: { uri: "http://x/y.zip" } })), 400, "ValidationException", /codeArtifact.uri/);
    await rejects(t.client.call("CreateMicrovmImage", imageInput("r5", { egressNetworkConnectors: ["VPN"] })), 400, "ValidationException", /egressNetworkConnectors\[0\]/);
    await rejects(t.client.call("CreateMicrovmImage", imageInput("r6", { resources: [{ minimumMemoryInMiB: 1 }] })), 400, "ValidationException", /resources\[0\].minimumMemoryInMiB/);
    await rejects(
      t.client.call("CreateMicrovmImage", imageInput("r7", { cpuConfigurations: [{ architecture: "ARM_64" }, { architecture: "ARM_64" }] })),
      400,
      "ValidationException",
      /cpuConfigurations/,
    );
    await rejects(t.client.call("CreateMicrovmImage", imageInput("r8", { tags: { "aws:x": "y" } })), 400, "ValidationException", /aws:/);
    const images = await t.client.call("ListMicrovmImages", { nameFilter: "r" });
    assert.deepEqual((images.items as { name: string }[]).filter((i) => /^r\d$/.test(i.name)), [], "bad input changes nothing");
  });

  it("accepts every artifact source and one build per CPU configuration", async () => {
    for (const [i, uri] of ["s3://my-bucket/app.zip", "file:///srv/app", "registry.example.com/team/app:1.0", "localhost:5000/app@sha256:" + "a".repeat(64)].entries()) {
      await t.client.call("CreateMicrovmImage", imageInput(`src-${i}`, { codeArtifact: { uri } }));
    }
    await t.client.call("CreateMicrovmImage", imageInput("multi", { cpuConfigurations: [{ architecture: "X86_64" }, { architecture: "ARM_64" }] }));
    const builds = await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: "multi", imageVersion: "1" });
    const items = builds.items as { architecture: string; chipset: string; buildState: string }[];
    assert.deepEqual(items.map((b) => b.architecture).sort(), ["ARM_64", "X86_64"]);
    assert.ok(items.every((b) => b.buildState === "PENDING"), "no VM driver: builds stay PENDING");
    assert.equal(items.find((b) => b.architecture === "ARM_64")?.chipset, "GRAVITON");
  });

  it("reports a missing image as ResourceNotFoundException with resourceId and resourceType", async () => {
    const response = await t.client.send("GetMicrovmImage", { imageIdentifier: "nope" });
    assert.equal(response.status, 404);
    assert.equal(response.headers.get("x-amzn-errortype"), "ResourceNotFoundException");
    assert.deepEqual([response.json?.resourceId, response.json?.resourceType], ["nope", "MicrovmImage"]);
  });
});

describe("ListMicrovmImages", () => {
  it("pages with maxResults and an opaque nextToken, and filters by name", async () => {
    for (let i = 0; i < 5; i++) await t.client.call("CreateMicrovmImage", imageInput(`page-${i}`));
    const seen: string[] = [];
    let nextToken: string | undefined;
    do {
      const page = await t.client.call("ListMicrovmImages", { nameFilter: "page-", maxResults: 2, nextToken });
      assert.ok((page.items as unknown[]).length <= 2);
      seen.push(...(page.items as { name: string }[]).map((i) => i.name));
      nextToken = page.nextToken as string | undefined;
    } while (nextToken);
    assert.deepEqual(seen, ["page-0", "page-1", "page-2", "page-3", "page-4"]);
  });

  it("refuses a tampered nextToken, and maxResults outside 1-50", async () => {
    const page = await t.client.call("ListMicrovmImages", { maxResults: 1 });
    const token = String(page.nextToken);
    await rejects(t.client.call("ListMicrovmImages", { maxResults: 1, nextToken: token.slice(0, -2) + "xx" }), 400, "ValidationException", /nextToken/);
    await rejects(t.client.call("ListMicrovmImages", { maxResults: 1, nextToken: token, nameFilter: "other" }), 400, "ValidationException", /nextToken/);
    await rejects(t.client.call("ListMicrovmImages", { maxResults: 51 }), 400, "ValidationException", /maxResults/);
    await rejects(t.client.call("ListMicrovmImages", { maxResults: 0 }), 400, "ValidationException", /maxResults/);
  });
});

describe("UpdateMicrovmImage and versions", () => {
  it("creates the next version with PUT semantics; versions have their own configuration", async () => {
    await t.client.call("CreateMicrovmImage", imageInput("upd", { environmentVariables: { A: "1" } }));
    const updated = await t.client.call("UpdateMicrovmImage", {
      imageIdentifier: "upd",
      baseImageArn: BUSYBOX,
      buildRoleArn: "arn:aws:iam::000000000000:role/build",
      codeArtifact: { uri: "file:///tmp/v2" },
    });
    assert.deepEqual([updated.imageVersion, updated.state], ["2", "UPDATING"]);
    assert.equal("environmentVariables" in updated, false, "PUT semantics: omitted fields are not carried over");
    assert.equal("tags" in updated, false, "UpdateMicrovmImage's response has no tags");
    const v1 = await t.client.call("GetMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "1" });
    assert.deepEqual([v1.state, v1.status, v1.environmentVariables], ["PENDING", "ACTIVE", { A: "1" }]);
    const list = await t.client.call("ListMicrovmImageVersions", { imageIdentifier: "upd" });
    assert.deepEqual((list.items as { imageVersion: string }[]).map((v) => v.imageVersion), ["1", "2"]);
    await rejects(t.client.call("UpdateMicrovmImage", { imageIdentifier: "ghost", baseImageArn: BUSYBOX, buildRoleArn: "arn:aws:iam::000000000000:role/build", codeArtifact: { uri: "file:///x" } }), 404, "ResourceNotFoundException");
  });

  it("switches a version ACTIVE/INACTIVE", async () => {
    const inactive = await t.client.call("UpdateMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "1", status: "INACTIVE" });
    assert.equal(inactive.status, "INACTIVE");
    assert.equal((await t.client.call("GetMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "1" })).status, "INACTIVE");
    await rejects(t.client.call("UpdateMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "1", status: "PAUSED" as "ACTIVE" }), 400, "ValidationException", /enum/);
    await rejects(t.client.call("UpdateMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "9", status: "ACTIVE" }), 404, "ResourceNotFoundException");
  });

  it("gets a build by id, with snapshotBuild, and refuses unknown builds", async () => {
    const builds = await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: "upd", imageVersion: "2", architecture: "X86_64" });
    const [build] = builds.items as { buildId: string }[];
    const got = await t.client.call("GetMicrovmImageBuild", { imageIdentifier: "upd", imageVersion: "2", buildId: build!.buildId });
    assert.deepEqual([got.buildId, got.imageVersion, got.buildState], [build!.buildId, "2", "PENDING"]);
    await rejects(t.client.call("GetMicrovmImageBuild", { imageIdentifier: "upd", imageVersion: "1", buildId: build!.buildId }), 404, "ResourceNotFoundException");
    const none = await t.client.call("ListMicrovmImageBuilds", { imageIdentifier: "upd", imageVersion: "2", architecture: "ARM_64" });
    assert.deepEqual(none.items, []);
    await rejects(t.client.call("ListMicrovmImageBuilds", { imageIdentifier: "upd", imageVersion: "2", chipset: "PENTIUM" as "INTEL" }), 400, "ValidationException");
  });

  it("deletes a version idempotently", async () => {
    const deleted = await t.client.call("DeleteMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "1" });
    assert.deepEqual(deleted, { imageIdentifier: "upd", imageVersion: "1", state: "DELETED" });
    assert.deepEqual(await t.client.call("DeleteMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "1" }), deleted);
    await rejects(t.client.call("GetMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "1" }), 404, "ResourceNotFoundException");
    await rejects(t.client.call("DeleteMicrovmImageVersion", { imageIdentifier: "upd", imageVersion: "7" }), 404, "ResourceNotFoundException");
  });

  it("deletes an image idempotently and frees its name", async () => {
    await t.client.call("CreateMicrovmImage", imageInput("gone"));
    assert.deepEqual(await t.client.call("DeleteMicrovmImage", { imageIdentifier: "gone" }), { imageIdentifier: "gone", state: "DELETED" });
    assert.deepEqual(await t.client.call("DeleteMicrovmImage", { imageIdentifier: "gone" }), { imageIdentifier: "gone", state: "DELETED" });
    await rejects(t.client.call("GetMicrovmImage", { imageIdentifier: "gone" }), 404, "ResourceNotFoundException");
    await rejects(t.client.call("DeleteMicrovmImage", { imageIdentifier: "never" }), 404, "ResourceNotFoundException");
    assert.equal((await t.client.call("CreateMicrovmImage", imageInput("gone"))).imageVersion, "1");
  });
});

describe("managed base images", () => {
  it("lists the catalogue with real timestamps and pages it", async () => {
    const all = await t.client.call("ListManagedMicrovmImages", {});
    const arns = (all.items as { imageArn: string; createdAt: number }[]).map((i) => i.imageArn);
    assert.deepEqual(arns, ["busybox", "debian-12-minimal", "nodejs-18", "python-3.11"].map((n) => `arn:aws:lambda:us-east-1:aws:microvm-image:${n}`));
    for (const item of all.items as { createdAt: number }[]) assert.ok(Math.abs(item.createdAt - Date.now() / 1000) < 3600);
    const first = await t.client.call("ListManagedMicrovmImages", { maxResults: 3 });
    const second = await t.client.call("ListManagedMicrovmImages", { maxResults: 3, nextToken: String(first.nextToken) });
    assert.equal((second.items as unknown[]).length, 1);
    assert.equal(second.nextToken, undefined);
  });

  it("lists a managed image's versions by ARN or name", async () => {
    const byName = await t.client.call("ListManagedMicrovmImageVersions", { imageIdentifier: "busybox" });
    assert.deepEqual((byName.items as { imageVersion: string }[]).map((v) => v.imageVersion), ["1"]);
    assert.deepEqual(await t.client.call("ListManagedMicrovmImageVersions", { imageIdentifier: BUSYBOX }), byName);
    await rejects(t.client.call("ListManagedMicrovmImageVersions", { imageIdentifier: "windows" }), 404, "ResourceNotFoundException");
  });
});
