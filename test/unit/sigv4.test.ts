import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Sha256 } from "@aws-crypto/sha256-js";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import { Accounts } from "../../src/accounts.js";
import { ServiceError } from "../../src/domain/service-errors.js";
import { parseQueryString } from "../../src/api/parse.js";
import { SigV4Verifier, type SignedRequest } from "../../src/api/sigv4.js";

const accounts = new Accounts([
  { accessKeyId: "test", secretAccessKey: "test", accountId: "000000000000" },
  { accessKeyId: "AKIDOTHER", secretAccessKey: "s3cret", accountId: "111111111111" },
]);
const now = new Date("2026-11-22T10:00:00Z");
const verifier = new SigV4Verifier({ accounts, signingName: "lambda", now: () => now });

function signer(accessKeyId = "test", secretAccessKey = "test", region = "us-east-1", service = "lambda", applyChecksum = true) {
  return new SignatureV4({ credentials: { accessKeyId, secretAccessKey }, region, service, sha256: Sha256, applyChecksum });
}

const path = "/2017-03-31/tags/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Amicrovm-image%3Aapp";

function request(body = '{"Tags":{"a":"b"}}'): HttpRequest {
  return new HttpRequest({
    method: "POST",
    protocol: "http:",
    hostname: "127.0.0.1",
    port: 9600,
    path,
    query: { x: "1 2" },
    headers: { host: "127.0.0.1:9600", "content-type": "application/json" },
    body,
  });
}

function asReceived(
  signed: { method: string; path: string; query?: Record<string, unknown>; headers: Record<string, string>; body?: unknown },
  body = String(signed.body ?? ""),
): SignedRequest {
  const rawQuery = Object.entries(signed.query ?? {})
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join("&");
  const headers = Object.fromEntries(Object.entries(signed.headers).map(([k, v]) => [k.toLowerCase(), v]));
  return { method: signed.method, rawPath: signed.path, query: parseQueryString(rawQuery), headers, body: Buffer.from(body) };
}

const rejectsWith = (promise: Promise<unknown>, errorType: string, message?: RegExp) =>
  assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof ServiceError, String(e));
    assert.equal(e.errorType, errorType);
    if (message) assert.match(e.message, message);
    return true;
  });

describe("SigV4 verification", () => {
  it("accepts a request signed by the AWS SDK's signer and maps the key to its account", async () => {
    const signed = await signer().sign(request(), { signingDate: now });
    assert.deepEqual(await verifier.verify(asReceived(signed)), { accessKeyId: "test", accountId: "000000000000", region: "us-east-1" });
    const other = await signer("AKIDOTHER", "s3cret", "eu-west-1").sign(request(), { signingDate: now });
    assert.deepEqual(await verifier.verify(asReceived(other)), { accessKeyId: "AKIDOTHER", accountId: "111111111111", region: "eu-west-1" });
  });

  it("accepts a presigned request", async () => {
    const get = new HttpRequest({ method: "GET", protocol: "http:", hostname: "127.0.0.1", port: 9600, path, query: {}, headers: { host: "127.0.0.1:9600" } });
    const signed = await signer().presign(get, { signingDate: now, expiresIn: 300 });
    assert.equal((await verifier.verify(asReceived(signed, ""))).accountId, "000000000000");
    const late = new SigV4Verifier({ accounts, signingName: "lambda", now: () => new Date(now.getTime() + 301_000) });
    await rejectsWith(late.verify(asReceived(signed, "")), "AccessDeniedException", /expired/);
  });

  it("refuses a wrong secret, a changed body, path or query", async () => {
    await rejectsWith(verifier.verify(asReceived(await signer("test", "wrong").sign(request(), { signingDate: now }))), "AccessDeniedException", /does not match/);
    // The JS SDK signs x-amz-content-sha256; botocore signs the body's hash without sending it.
    const signed = await signer().sign(request(), { signingDate: now });
    await rejectsWith(verifier.verify(asReceived(signed, '{"Tags":{"a":"c"}}')), "IncompleteSignature", /x-amz-content-sha256/);
    const botocoreStyle = await signer("test", "test", "us-east-1", "lambda", false).sign(request(), { signingDate: now });
    assert.equal((await verifier.verify(asReceived(botocoreStyle))).accountId, "000000000000");
    await rejectsWith(verifier.verify(asReceived(botocoreStyle, '{"Tags":{"a":"c"}}')), "AccessDeniedException");
    await rejectsWith(verifier.verify({ ...asReceived(signed), rawPath: path + "x" }), "AccessDeniedException");
    await rejectsWith(verifier.verify({ ...asReceived(signed), query: parseQueryString("x=2") }), "AccessDeniedException");
  });

  it("refuses missing, malformed, unknown and stale credentials with the spec's common errors", async () => {
    const signed = await signer().sign(request(), { signingDate: now });
    const { authorization: _a, ...unsigned } = asReceived(signed).headers;
    await rejectsWith(verifier.verify({ ...asReceived(signed), headers: unsigned }), "NotAuthorized");
    await rejectsWith(verifier.verify({ ...asReceived(signed), headers: { ...unsigned, authorization: "Basic Zm9vOmJhcg==" } }), "IncompleteSignature");
    await rejectsWith(
      verifier.verify({ ...asReceived(signed), headers: { ...unsigned, authorization: "AWS4-HMAC-SHA256 Credential=test/20261122/us-east-1/lambda/aws4_request" } }),
      "IncompleteSignature",
      /SignedHeaders, Signature/,
    );
    await rejectsWith(verifier.verify(asReceived(await signer("nobody").sign(request(), { signingDate: now }))), "UnrecognizedClientException");
    await rejectsWith(verifier.verify(asReceived(await signer("test", "test", "us-east-1", "s3").sign(request(), { signingDate: now }))), "IncompleteSignature", /service 'lambda'/);
    const stale = await signer().sign(request(), { signingDate: new Date(now.getTime() - 16 * 60_000) });
    await rejectsWith(verifier.verify(asReceived(stale)), "AccessDeniedException", /Signature expired/);
  });
});
