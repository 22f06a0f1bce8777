import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  InvalidParameterValueException,
  LambdaClient,
  ListTagsCommand,
  ResourceNotFoundException,
  TagResourceCommand,
  UntagResourceCommand,
} from "@aws-sdk/client-lambda";
import { imageInput, startTestServer, type TestServer } from "../support/server.js";

/**
 * Conformance with the AWS SDK for JavaScript's Lambda client: MicroVM images
 * share Lambda's tag API, so the stock client must tag them unchanged.
 */
let t: TestServer;
let lambda: LambdaClient;
const arn = "arn:aws:lambda:us-east-1:000000000000:microvm-image:sdk-app";

before(async () => {
  t = await startTestServer();
  await t.client.call("CreateMicrovmImage", imageInput("sdk-app"));
  lambda = new LambdaClient({
    endpoint: t.server.apiUrl,
    region: "us-east-1",
    credentials: { accessKeyId: "test", secretAccessKey: "test" },
    maxAttempts: 1,
  });
});
after(async () => {
  lambda.destroy();
  await t.stop();
});

describe("@aws-sdk/client-lambda tag operations", () => {
  it("tags, lists and untags a MicroVM image", async () => {
    await lambda.send(new TagResourceCommand({ Resource: arn, Tags: { env: "dev", team: "a" } }));
    assert.deepEqual((await lambda.send(new ListTagsCommand({ Resource: arn }))).Tags, { env: "dev", team: "a" });
    await lambda.send(new UntagResourceCommand({ Resource: arn, TagKeys: ["env"] }));
    assert.deepEqual((await lambda.send(new ListTagsCommand({ Resource: arn }))).Tags, { team: "a" });
  });

  it("gets Lambda's modelled exceptions", async () => {
    await assert.rejects(
      lambda.send(new ListTagsCommand({ Resource: "arn:aws:lambda:us-east-1:000000000000:microvm-image:absent" })),
      ResourceNotFoundException,
    );
    await assert.rejects(lambda.send(new TagResourceCommand({ Resource: arn, Tags: { "aws:x": "y" } })), (e: unknown) => {
      assert.ok(e instanceof InvalidParameterValueException);
      assert.equal(e.Type, "User");
      assert.match(e.message, /aws:/);
      return true;
    });
  });
});
