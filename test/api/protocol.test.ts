import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { MicrovmsClient } from "../../src/client/client.js";
import { imageInput, startTestServer, type TestServer } from "../support/server.js";

let t: TestServer;
before(async () => {
  t = await startTestServer();
  await t.client.call("CreateMicrovmImage", imageInput("mine", { tags: { owner: "me" } }));
});
after(() => t.stop());

const expectError = (response: { status: number; headers: Headers; json?: Record<string, unknown> }, status: number, errorType: string, message?: RegExp) => {
  assert.equal(response.status, status);
  assert.equal(response.headers.get("x-amzn-errortype"), errorType);
  assert.equal(typeof response.json?.message, "string");
  assert.ok(!String(response.json?.message).includes("    at "), "no stack traces");
  if (message) assert.match(String(response.json?.message), message);
};

describe("authentication", () => {
  it("refuses unsigned requests, unknown keys and wrong secrets", async () => {
    expectError(await t.client.raw({ method: "GET", path: "/2025-09-09/microvm-images", sign: false }), 401, "NotAuthorized", /Authentication/);
    const stranger = new MicrovmsClient({ endpoint: t.server.apiUrl, accessKeyId: "AKIDSTRANGER", secretAccessKey: "x" });
    expectError(await stranger.send("ListMicrovmImages", {}), 403, "UnrecognizedClientException");
    const forger = new MicrovmsClient({ endpoint: t.server.apiUrl, accessKeyId: "test", secretAccessKey: "not-test" });
    expectError(await forger.send("ListMicrovmImages", {}), 403, "AccessDeniedException", /signature/);
  });

  it("isolates accounts: another account's image is not found, and its ARN is not either", async () => {
    expectError(await t.otherAccount.send("GetMicrovmImage", { imageIdentifier: "mine" }), 404, "ResourceNotFoundException");
    const arn = "arn:aws:lambda:us-east-1:000000000000:microvm-image:mine";
    expectError(await t.otherAccount.send("GetMicrovmImage", { imageIdentifier: arn }), 404, "ResourceNotFoundException");
    expectError(await t.otherAccount.send("ListTags", { Resource: arn }), 404, "ResourceNotFoundException");
    assert.deepEqual((await t.otherAccount.call("ListMicrovmImages", {})).items, []);
    // The same name is free in the other account.
    assert.equal((await t.otherAccount.call("CreateMicrovmImage", imageInput("mine"))).imageArn, "arn:aws:lambda:us-east-1:222222222222:microvm-image:mine");
  });
});

describe("bad input never reaches a handler and never answers 500", () => {
  const post = (body: string) =>
    t.client.raw({ method: "POST", path: "/2025-09-09/microvm-images", body, headers: { "content-type": "application/json" } });

  it("malformed JSON, a non-object body, wrong types, unknown members, unions with two members", async () => {
    expectError(await post("{"), 400, "ValidationException", /not valid JSON/);
    expectError(await post("[]"), 400, "ValidationException", /JSON object/);
    expectError(await post(JSON.stringify({ ...imageInput("x"), name: 42 })), 400, "ValidationException", /'name' .*string/);
    expectError(await post(JSON.stringify({ ...imageInput("x"), colour: "red" })), 400, "ValidationException", /'colour'/);
    expectError(await post(JSON.stringify({ ...imageInput("x"), logging: { disabled: {}, cloudWatch: {} } })), 400, "ValidationException", /'logging'.*exactly one/);
    expectError(await post(JSON.stringify({ ...imageInput("x"), hooks: { microvmHooks: { run: "SOMETIMES" } } })), 400, "ValidationException", /hooks.microvmHooks.run/);
  });

  it("an oversized body, an unknown route, a wrong method", async () => {
    expectError(await post("x".repeat(2 * 1024 * 1024)), 413, "RequestEntityTooLargeException");
    expectError(await t.client.raw({ method: "GET", path: "/2025-09-09/unicorns" }), 404, "UnknownOperationException");
    expectError(await t.client.raw({ method: "PATCH", path: "/2025-09-09/microvms" }), 404, "UnknownOperationException");
  });

  it("lists every violation at once", async () => {
    const response = await post(JSON.stringify({ name: "bad name", baseImageArn: "a", buildRoleArn: "short", codeArtifact: { uri: "file:///x" } }));
    expectError(response, 400, "ValidationException", /^3 validation errors detected: .*'buildRoleArn'.*length.*'buildRoleArn'.*pattern.*'name'/);
  });
});

describe("tags (Lambda's tag API)", () => {
  const arn = "arn:aws:lambda:us-east-1:000000000000:microvm-image:mine";

  it("tags, lists and untags, answering 204", async () => {
    const tagged = await t.client.send("TagResource", { Resource: arn, Tags: { env: "dev", "cost:centre": "42" } });
    assert.deepEqual([tagged.status, tagged.body], [204, ""]);
    assert.deepEqual(await t.client.call("ListTags", { Resource: arn }), { Tags: { owner: "me", env: "dev", "cost:centre": "42" } });
    const untagged = await t.client.send("UntagResource", { Resource: arn, TagKeys: ["env", "owner", "absent"] });
    assert.equal(untagged.status, 204);
    assert.deepEqual(await t.client.call("ListTags", { Resource: arn }), { Tags: { "cost:centre": "42" } });
    assert.deepEqual((await t.client.call("GetMicrovmImage", { imageIdentifier: "mine" })).tags, { "cost:centre": "42" });
  });

  it("reports bad input as InvalidParameterValueException, as Lambda does", async () => {
    const bad = await t.client.send("TagResource", { Resource: "arn:aws:s3:::bucket", Tags: { a: "b" } });
    expectError(bad, 400, "InvalidParameterValueException", /Resource/);
    assert.equal(bad.json?.Type, "User");
    expectError(await t.client.send("TagResource", { Resource: arn, Tags: { "aws:reserved": "x" } }), 400, "InvalidParameterValueException", /aws:/);
    const many = Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`k${i}`, "v"]));
    expectError(await t.client.send("TagResource", { Resource: arn, Tags: many }), 400, "InvalidParameterValueException", /50/);
    expectError(await t.client.send("UntagResource", { Resource: arn }), 400, "InvalidParameterValueException", /TagKeys/);
    expectError(
      await t.client.send("ListTags", { Resource: "arn:aws:lambda:us-east-1:000000000000:function:f" }),
      404,
      "ResourceNotFoundException",
    );
  });
});
