import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { serviceModelPath } from "../../src/paths.js";
import { startTestServer, type TestServer } from "../support/server.js";

/**
 * Conformance with the stock AWS CLI v2 (Debian's awscli, /usr/bin/aws), with our
 * service model added by `aws configure add-model`: it serializes requests and
 * parses responses with its own botocore, so it checks our wire format end to end.
 */
const AWS = "/usr/bin/aws";

let t: TestServer;
let home: string;
before(async () => {
  assert.ok(existsSync(AWS), "Debian's awscli is installed by scripts/setup.sh");
  t = await startTestServer();
  home = mkdtempSync(join(tmpdir(), "microvms-awscli-"));
  const added = await aws(["configure", "add-model", "--service-model", `file://${serviceModelPath}`, "--service-name", "lambda-microvms"], false);
  assert.equal(added.status, 0, added.stderr);
});
after(async () => {
  await t.stop();
  rmSync(home, { recursive: true, force: true });
});

/** Runs the CLI without blocking: the server under test answers from this same process. */
function aws(args: string[], endpoint = true): Promise<{ status: number; stdout: string; stderr: string; json: () => Record<string, any> }> {
  const argv = [...(endpoint ? ["--endpoint-url", t.server.apiUrl, "--output", "json"] : []), ...args];
  const env = {
      PATH: process.env.PATH,
      HOME: home,
      AWS_ACCESS_KEY_ID: "test",
      AWS_SECRET_ACCESS_KEY: "test",
      AWS_DEFAULT_REGION: "us-east-1",
      AWS_PAGER: "",
      AWS_MAX_ATTEMPTS: "1",
  };
  return new Promise((resolve) => {
    execFile(AWS, argv, { encoding: "utf8", env }, (error, stdout, stderr) => {
      const status = error ? (typeof error.code === "number" ? error.code : 1) : 0;
      resolve({ status, stdout, stderr, json: () => JSON.parse(stdout) as Record<string, any> });
    });
  });
}

async function ok(args: string[]) {
  const result = await aws(["lambda-microvms", ...args]);
  assert.equal(result.status, 0, `aws lambda-microvms ${args.join(" ")}\n${result.stderr}`);
  return result.stdout.trim() ? result.json() : {};
}

const arn = "arn:aws:lambda:us-east-1:000000000000:microvm-image:cli-app";
const common = [
  "--base-image-arn", "arn:aws:lambda:us-east-1:aws:microvm-image:busybox",
  "--build-role-arn", "arn:aws:iam::000000000000:role/build",
];

describe("the AWS CLI with the model added", () => {
  it("lists every operation in its help", async () => {
    const help = await aws(["lambda-microvms", "help"], false);
    assert.equal(help.status, 0, help.stderr);
    for (const command of ["create-microvm-image", "run-microvm", "list-tags", "update-microvm-image-version", "create-microvm-shell-auth-token"]) {
      assert.match(help.stdout, new RegExp(command));
    }
  });

  it("creates, gets, lists, updates, tags, untags and deletes an image", async () => {
    const created = await ok(["create-microvm-image", "--name", "cli-app", ...common, "--code-artifact", "uri=file:///srv/app",
      "--environment-variables", "GREETING=hello", "--hooks", "port=8080,microvmHooks={run=ENABLED,runTimeoutInSeconds=10}", "--tags", "team=a"]);
    assert.deepEqual([created.imageArn, created.imageVersion, created.state], [arn, "1", "CREATING"]);
    assert.deepEqual(created.hooks, { port: 8080, microvmHooks: { run: "ENABLED", runTimeoutInSeconds: 10 } });
    assert.match(created.createdAt, /^\d{4}-\d{2}-\d{2}T/, "the CLI parsed the epoch-seconds timestamp");

    const got = await ok(["get-microvm-image", "--image-identifier", "cli-app"]);
    assert.deepEqual([got.name, got.state, got.tags], ["cli-app", "CREATING", { team: "a" }]);
    const listed = await ok(["list-microvm-images", "--name-filter", "cli"]);
    assert.deepEqual(listed.items.map((i: { name: string }) => i.name), ["cli-app"]);

    const updated = await ok(["update-microvm-image", "--image-identifier", arn, ...common, "--code-artifact", "uri=s3://bucket/app.zip"]);
    assert.equal(updated.imageVersion, "2");
    const versions = await ok(["list-microvm-image-versions", "--image-identifier", "cli-app"]);
    assert.deepEqual(versions.items.map((v: { imageVersion: string }) => v.imageVersion), ["1", "2"]);
    const build = (await ok(["list-microvm-image-builds", "--image-identifier", "cli-app", "--image-version", "2"])).items[0];
    assert.equal((await ok(["get-microvm-image-build", "--image-identifier", "cli-app", "--image-version", "2", "--build-id", build.buildId])).buildState, "PENDING");

    await ok(["tag-resource", "--resource", arn, "--tags", "env=dev"]);
    assert.deepEqual((await ok(["list-tags", "--resource", arn])).Tags, { team: "a", env: "dev" });
    await ok(["untag-resource", "--resource", arn, "--tag-keys", "team", "env"]);
    assert.deepEqual((await ok(["list-tags", "--resource", arn])).Tags, {});

    assert.equal((await ok(["update-microvm-image-version", "--image-identifier", "cli-app", "--image-version", "1", "--status", "INACTIVE"])).status, "INACTIVE");
    assert.deepEqual(await ok(["delete-microvm-image", "--image-identifier", "cli-app"]), { imageIdentifier: "cli-app", state: "DELETED" });
  });

  it("runs a MicroVM, issues a token, and terminates it", async () => {
    await ok(["create-microvm-image", "--name", "cli-run", ...common, "--code-artifact", "uri=file:///srv/app"]);
    const m = await ok(["run-microvm", "--image-identifier", "cli-run",
      "--idle-policy", "maxIdleDurationSeconds=60,suspendedDurationSeconds=0,autoResumeEnabled=true", "--logging", "disabled={}"]);
    assert.equal(m.state, "PENDING");
    assert.deepEqual(m.idlePolicy, { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 0, autoResumeEnabled: true });
    const token = await ok(["create-microvm-auth-token", "--microvm-identifier", m.microvmId, "--allowed-ports", "port=8080", "--expiration-in-minutes", "5"]);
    assert.match(token.authToken["X-aws-proxy-auth"], /^mvt1\./);
    await ok(["terminate-microvm", "--microvm-identifier", m.microvmId]);
    assert.ok(["TERMINATING", "TERMINATED"].includes((await ok(["get-microvm", "--microvm-identifier", m.microvmId])).state));
    assert.equal((await ok(["list-managed-microvm-images"])).items.length, 4);
  });

  it("shows the service's errors for invalid requests", async () => {
    const badName = await aws(["lambda-microvms", "create-microvm-image", "--name", "no spaces", ...common, "--code-artifact", "uri=file:///x"]);
    assert.notEqual(badName.status, 0);
    assert.match(badName.stderr, /ValidationException.*'name'.*regular expression/);

    const tooMany = await aws(["lambda-microvms", "list-microvm-images", "--max-results", "500"]);
    assert.notEqual(tooMany.status, 0);
    assert.match(tooMany.stderr, /ValidationException.*'maxResults'.*less than or equal to 50/);

    const missing = await aws(["lambda-microvms", "get-microvm", "--microvm-identifier", "mvm-0123456789abcdef0"]);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /ResourceNotFoundException.*mvm-0123456789abcdef0/);

    const wrongState = await aws(["lambda-microvms", "suspend-microvm", "--microvm-identifier",
      (await ok(["run-microvm", "--image-identifier", "cli-run"])).microvmId]);
    assert.match(wrongState.stderr, /ConflictException.*PENDING/);
  });
});
