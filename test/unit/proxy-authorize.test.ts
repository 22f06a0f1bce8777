import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { microvmState } from "../../src/lifecycle/microvm-states.js";
import { ActivityMeter } from "../../src/proxy/activity.js";
import { admitByState, authorize, microvmIdOfHost } from "../../src/proxy/authorize.js";
import { ProxyError, type ProxyErrorType } from "../../src/proxy/errors.js";
import type { MicrovmPhase, MicrovmRecord } from "../../src/store/records.js";
import { TokenAuthority, type TokenClaims } from "../../src/tokens/endpoint-token.js";

const ID = "mvm-0123456789abcdef0";
const now = new Date("2026-01-01T00:00:00Z");
const tokens = new TokenAuthority(randomBytes(32));
const claims: TokenClaims = {
  kind: "endpoint",
  accountId: "000000000000",
  region: "us-east-1",
  microvmId: ID,
  ports: [{ from: 8080, to: 8080 }, { from: 9000, to: 9010 }],
  issuedAt: now.getTime() / 1000,
  expiresAt: now.getTime() / 1000 + 600,
};
const token = (extra: Partial<TokenClaims> = {}) => tokens.issue({ ...claims, ...extra });

function refusal(fn: () => unknown, errorType: ProxyErrorType, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ProxyError);
    assert.equal(e.errorType, errorType);
    if (message) assert.match(e.message, message);
    return true;
  });
}

test("microvmIdOfHost takes the id from {id}.{domain}, with or without a port, in any case", () => {
  assert.equal(microvmIdOfHost(`${ID}.microvms.localhost:9601`, "microvms.localhost"), ID);
  assert.equal(microvmIdOfHost(`${ID.toUpperCase().replace("MVM", "mvm")}.Microvms.Localhost`, "microvms.localhost"), ID);
  assert.equal(microvmIdOfHost(`${ID}.microvms.localhost.`, "microvms.localhost"), ID);
  for (const host of [undefined, "", "microvms.localhost", `${ID}.example.com`, `a.${ID}.microvms.localhost`, "app.microvms.localhost", "mvm-.microvms.localhost", `${ID}xmicrovms.localhost`]) {
    assert.equal(microvmIdOfHost(host, "microvms.localhost"), undefined, String(host));
  }
});

test("authorize grants the token's MicroVM on an allowed port, 8080 by default", () => {
  assert.deepEqual(authorize(ID, { "x-aws-proxy-auth": token() }, tokens, now), { claims, port: 8080 });
  assert.equal(authorize(ID, { "x-aws-proxy-auth": token(), "x-aws-proxy-port": "9005" }, tokens, now).port, 9005);
  assert.equal(authorize(ID, { "x-aws-proxy-auth": token({ ports: [{ all: true }] }), "x-aws-proxy-port": "1" }, tokens, now).port, 1);
});

test("authorize refuses, in order: no token 401, bad token 403, wrong MicroVM or kind 403, bad port 400, port out of scope 403", () => {
  refusal(() => authorize(ID, {}, tokens, now), "UnauthorizedException");
  refusal(() => authorize(ID, { "x-aws-proxy-auth": " " }, tokens, now), "UnauthorizedException");
  // A bad token is refused before its port header is even read.
  refusal(() => authorize(ID, { "x-aws-proxy-auth": "mvt1.x", "x-aws-proxy-port": "nope" }, tokens, now), "AccessDeniedException", /malformed/);
  refusal(() => authorize(ID, { "x-aws-proxy-auth": new TokenAuthority(randomBytes(32)).issue(claims) }, tokens, now), "AccessDeniedException", /signature/);
  refusal(() => authorize(ID, { "x-aws-proxy-auth": token() }, tokens, new Date(now.getTime() + 600_000)), "AccessDeniedException", /expired/);
  refusal(() => authorize("mvm-00000000000000000", { "x-aws-proxy-auth": token() }, tokens, now), "AccessDeniedException", /not for MicroVM mvm-00000000000000000/);
  refusal(() => authorize(ID, { "x-aws-proxy-auth": token({ kind: "shell" }) }, tokens, now), "AccessDeniedException", /shell/);
  for (const bad of ["", "0", "65536", "99999", "8080.0", "0x50", "+80", "80 80"]) {
    refusal(() => authorize(ID, { "x-aws-proxy-auth": token(), "x-aws-proxy-port": bad }, tokens, now), "BadRequestException", /X-aws-proxy-port/);
  }
  refusal(() => authorize(ID, { "x-aws-proxy-auth": token(), "x-aws-proxy-port": "9011" }, tokens, now), "AccessDeniedException", /The token does not allow port 9011\./);
});

test("admitByState lets RUNNING through, answers 503 with Retry-After while not running, 404 once gone", () => {
  const record = (state: MicrovmPhase) => ({ microvmId: ID, state }) as MicrovmRecord;
  admitByState(ID, record("RUNNING"));
  refusal(() => admitByState(ID, undefined), "ResourceNotFoundException", /not found/);
  for (const state of ["TERMINATING", "TERMINATED"] as const) refusal(() => admitByState(ID, record(state)), "ResourceNotFoundException", new RegExp(`is ${state}`));
  for (const state of ["STARTING", "RESUMING", "SUSPENDING", "SUSPENDED"] as const) {
    refusal(() => admitByState(ID, record(state)), "ServiceUnavailableException", new RegExp(`is ${microvmState(state)}`));
    try {
      admitByState(ID, record(state));
    } catch (e) {
      assert.deepEqual((e as ProxyError).headers, { "retry-after": "1" });
      assert.equal((e as ProxyError).status, 503);
    }
  }
});

test("the activity meter reports every request, and stream data at most once per interval per MicroVM", () => {
  let clock = 0;
  const reported: string[] = [];
  const meter = new ActivityMeter((id) => reported.push(id), () => clock);
  meter.request("a");
  meter.request("a");
  meter.data("a");
  meter.data("b");
  assert.deepEqual(reported, ["a", "a", "b"]);
  clock = 999;
  meter.data("a");
  assert.deepEqual(reported, ["a", "a", "b"]);
  clock = 1000;
  meter.data("a");
  meter.data("a");
  assert.deepEqual(reported, ["a", "a", "b", "a"]);
  clock = 10; // a clock that stepped back reports again
  meter.data("a");
  assert.deepEqual(reported, ["a", "a", "b", "a", "a"]);
});
