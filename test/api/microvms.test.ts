import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { TokenAuthority } from "../../src/tokens/endpoint-token.js";
import { eventually, imageInput, rejectsWith, startTestServer, type TestServer } from "../support/server.js";

let t: TestServer;
before(async () => {
  t = await startTestServer({ MICROVMS_MAX_LIVE_MICROVMS: "6" });
  await t.client.call("CreateMicrovmImage", imageInput("app"));
});
after(() => t.stop());

const rejects = rejectsWith;

const run = (extra: Record<string, unknown> = {}) => t.client.call("RunMicrovm", { imageIdentifier: "app", ...extra });

describe("RunMicrovm and GetMicrovm", () => {
  it("records a MicroVM that stays PENDING without a VM driver, with its endpoint and defaults", async () => {
    const m = await run({ idlePolicy: { autoResumeEnabled: true, maxIdleDurationSeconds: 60, suspendedDurationSeconds: 0 }, runHookPayload: "{}" });
    assert.match(String(m.microvmId), /^mvm-[0-9a-f]{17}$/);
    assert.equal(m.endpoint, `https://${m.microvmId}.microvms.localhost:${new URL(t.server.proxyUrl).port}`);
    assert.deepEqual([m.state, m.imageVersion, m.maximumDurationInSeconds], ["PENDING", "1", 28800]);
    assert.equal(m.imageArn, "arn:aws:lambda:us-east-1:000000000000:microvm-image:app");
    assert.equal("runHookPayload" in m, false);
    const got = await t.client.call("GetMicrovm", { microvmIdentifier: String(m.microvmId) });
    assert.deepEqual(got, m);
  });

  it("refuses unknown images and versions, inactive versions, bad connectors and ranges", async () => {
    await rejects(t.client.call("RunMicrovm", { imageIdentifier: "nope" }), 404, "ResourceNotFoundException");
    await rejects(run({ imageVersion: "5" }), 404, "ResourceNotFoundException");
    await rejects(run({ ingressNetworkConnectors: ["TELNET"] }), 400, "ValidationException", /ingressNetworkConnectors\[0\]/);
    await rejects(run({ maximumDurationInSeconds: 28801 }), 400, "ValidationException", /maximumDurationInSeconds/);
    await rejects(run({ idlePolicy: { autoResumeEnabled: true, maxIdleDurationSeconds: 10, suspendedDurationSeconds: 0 } }), 400, "ValidationException", /maxIdleDurationSeconds/);
    await rejects(run({ idlePolicy: { autoResumeEnabled: true } }), 400, "ValidationException", /maxIdleDurationSeconds.*not be null/);
    await t.client.call("CreateMicrovmImage", imageInput("off"));
    await t.client.call("UpdateMicrovmImageVersion", { imageIdentifier: "off", imageVersion: "1", status: "INACTIVE" });
    await rejects(t.client.call("RunMicrovm", { imageIdentifier: "off", imageVersion: "1" }), 409, "ConflictException", /INACTIVE/);
    await rejects(t.client.call("RunMicrovm", { imageIdentifier: "off" }), 409, "ConflictException", /no ACTIVE version/);
  });

  it("answers clientToken retries with the same MicroVM", async () => {
    const first = await run({ clientToken: "run-1" });
    assert.deepEqual(await run({ clientToken: "run-1" }), first);
    await rejects(run({ clientToken: "run-1", runHookPayload: "other" }), 409, "ConflictException");
  });

  it("enforces the live MicroVM quota with ServiceQuotaExceededException", async () => {
    const live = await t.client.call("ListMicrovms", {});
    const count = (live.items as { state: string }[]).filter((m) => m.state !== "TERMINATED").length;
    for (let i = count; i < 6; i++) await run();
    const response = await t.client.send("RunMicrovm", { imageIdentifier: "app" });
    assert.deepEqual([response.status, response.headers.get("x-amzn-errortype")], [402, "ServiceQuotaExceededException"]);
    assert.equal(response.json?.quotaCode, "L-MICROVMS-LIVE");
  });
});

describe("the lifecycle through the API", () => {
  it("terminates idempotently, and refuses suspend and resume in the wrong state, naming it", async () => {
    const page = await t.client.call("ListMicrovms", { imageIdentifier: "app", maxResults: 50 });
    const id = (page.items as { microvmId: string; state: string }[]).find((m) => m.state === "PENDING")!.microvmId;
    await rejects(t.client.call("SuspendMicrovm", { microvmIdentifier: id }), 409, "ConflictException", /is PENDING; SuspendMicrovm/);
    await rejects(t.client.call("ResumeMicrovm", { microvmIdentifier: id }), 409, "ConflictException", /is PENDING; ResumeMicrovm/);
    const response = await t.client.send("TerminateMicrovm", { microvmIdentifier: id });
    assert.deepEqual([response.status, response.body], [200, ""]);
    const ended = await eventually(async () => {
      const m = await t.client.call("GetMicrovm", { microvmIdentifier: id });
      return m.state === "TERMINATED" ? m : undefined;
    }, "TERMINATED");
    assert.equal(typeof ended.terminatedAt, "number");
    assert.match(String(ended.stateReason), /TerminateMicrovm/);
    await t.client.call("TerminateMicrovm", { microvmIdentifier: id });
    await rejects(t.client.call("SuspendMicrovm", { microvmIdentifier: id }), 409, "ConflictException", /is TERMINATED/);
    await rejects(t.client.call("TerminateMicrovm", { microvmIdentifier: "mvm-00000000000000000" }), 404, "ResourceNotFoundException");
  });

  it("refuses to delete an image or version that live MicroVMs use", async () => {
    await rejects(t.client.call("DeleteMicrovmImage", { imageIdentifier: "app" }), 409, "ConflictException", /not terminated/);
    await rejects(t.client.call("DeleteMicrovmImageVersion", { imageIdentifier: "app", imageVersion: "1" }), 409, "ConflictException");
  });

  it("lists MicroVMs with image and version filters and pages them", async () => {
    await t.client.call("CreateMicrovmImage", imageInput("solo"));
    const solo = await t.client.call("RunMicrovm", { imageIdentifier: "solo" });
    const filtered = await t.client.call("ListMicrovms", { imageIdentifier: "arn:aws:lambda:us-east-1:000000000000:microvm-image:solo" });
    assert.deepEqual((filtered.items as { microvmId: string }[]).map((m) => m.microvmId), [solo.microvmId]);
    assert.deepEqual((await t.client.call("ListMicrovms", { imageIdentifier: "solo", imageVersion: "2" })).items, []);
    const one = await t.client.call("ListMicrovms", { maxResults: 1 });
    assert.equal((one.items as unknown[]).length, 1);
    assert.ok(one.nextToken);
    await rejects(t.client.call("ListMicrovms", { imageIdentifier: "ghost" }), 404, "ResourceNotFoundException");
  });
});

describe("auth tokens", () => {
  it("issues a signed, expiring, port-scoped endpoint token", async () => {
    const m = await t.client.call("ListMicrovms", { imageIdentifier: "solo" });
    const id = (m.items as { microvmId: string }[])[0]!.microvmId;
    const issued = await t.client.call("CreateMicrovmAuthToken", {
      microvmIdentifier: id,
      allowedPorts: [{ port: 8080 }, { range: { startPort: 9000, endPort: 9100 } }],
      expirationInMinutes: 15,
    });
    const token = (issued.authToken as Record<string, string>)["X-aws-proxy-auth"]!;
    const key = Buffer.from(await t.server.store.setting("endpoint-token-key", () => ""), "base64");
    const check = new TokenAuthority(key).verify(token, new Date());
    assert.ok(check.ok);
    assert.deepEqual([check.claims.microvmId, check.claims.kind, check.claims.ports], [id, "endpoint", [{ from: 8080, to: 8080 }, { from: 9000, to: 9100 }]]);
    assert.equal(check.claims.expiresAt - check.claims.issuedAt, 900);
  });

  it("refuses bad port specifications, long expiries, and unknown or terminated MicroVMs", async () => {
    const m = await t.client.call("ListMicrovms", { imageIdentifier: "solo" });
    const id = (m.items as { microvmId: string }[])[0]!.microvmId;
    const token = (input: Record<string, unknown>) => t.client.call("CreateMicrovmAuthToken", { microvmIdentifier: id, expirationInMinutes: 5, allowedPorts: [{ port: 8080 }], ...input });
    await rejects(token({ expirationInMinutes: 61 }), 400, "ValidationException", /expirationInMinutes/);
    await rejects(token({ allowedPorts: [{ port: 1, allPorts: {} }] }), 400, "ValidationException", /allowedPorts\[0\].*exactly one/);
    await rejects(token({ allowedPorts: [{ range: { startPort: 10, endPort: 5 } }] }), 400, "ValidationException", /startPort/);
    await rejects(token({ allowedPorts: [{ port: 0 }] }), 400, "ValidationException", /allowedPorts\[0\].port/);
    await rejects(token({ microvmIdentifier: "mvm-ffffffffffffffff0" }), 404, "ResourceNotFoundException");
    await rejects(t.client.call("CreateMicrovmShellAuthToken", { microvmIdentifier: id, expirationInMinutes: 5 }), 400, "ValidationException", /SHELL_INGRESS/);
    await t.client.call("TerminateMicrovm", { microvmIdentifier: id });
    await rejects(token({}), 400, "ValidationException", /TERMINAT/);
  });

  it("issues shell tokens only for MicroVMs run with SHELL_INGRESS", async () => {
    const m = await t.client.call("RunMicrovm", { imageIdentifier: "solo", ingressNetworkConnectors: ["SHELL_INGRESS"] });
    const issued = await t.client.call("CreateMicrovmShellAuthToken", { microvmIdentifier: String(m.microvmId), expirationInMinutes: 60 });
    assert.match((issued.authToken as Record<string, string>)["X-aws-proxy-auth"]!, /^mvt1\./);
  });
});
