import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { Paginator, listScope } from "../../src/operations/pagination.js";
import { allowsPort, TokenAuthority, type TokenClaims } from "../../src/tokens/endpoint-token.js";
import { ServiceError } from "../../src/domain/service-errors.js";

describe("pagination tokens", () => {
  const paginator = new Paginator(randomBytes(32));
  const scope = listScope("ListMicrovmImages", "000000000000", "us-east-1", undefined);

  it("round-trip a cursor", () => {
    assert.deepEqual(paginator.decode(scope, paginator.encode(scope, [1700000000000, "app"])), [1700000000000, "app"]);
    assert.equal(paginator.decode(scope, undefined), undefined);
  });

  it("refuse a token that was edited, forged, or made for another list", () => {
    const token = paginator.encode(scope, [1, "a"]);
    const [payload, mac] = token.split(".");
    const edited = `${Buffer.from(JSON.stringify([1, "b"])).toString("base64url")}.${mac}`;
    for (const bad of [edited, `${payload}.AAAA`, "garbage", "", `${token}.x`]) {
      assert.throws(() => paginator.decode(scope, bad), (e: unknown) => e instanceof ServiceError && e.errorType === "ValidationException", bad);
    }
    const otherScope = listScope("ListMicrovmImages", "000000000000", "us-east-1", "filter");
    assert.throws(() => paginator.decode(otherScope, token), ServiceError);
    assert.throws(() => new Paginator(randomBytes(32)).decode(scope, token), ServiceError);
  });
});

describe("endpoint tokens", () => {
  const authority = new TokenAuthority(randomBytes(32));
  const now = new Date("2026-01-01T00:00:00Z");
  const claims: TokenClaims = {
    kind: "endpoint",
    accountId: "000000000000",
    region: "us-east-1",
    microvmId: "mvm-0123456789abcdef0",
    ports: [{ from: 8080, to: 8080 }, { from: 9000, to: 9010 }],
    issuedAt: now.getTime() / 1000,
    expiresAt: now.getTime() / 1000 + 600,
  };

  it("verify while valid and scope ports", () => {
    const check = authority.verify(authority.issue(claims), now);
    assert.ok(check.ok);
    assert.deepEqual(check.claims, claims);
    assert.ok(allowsPort(claims, 8080) && allowsPort(claims, 9005));
    assert.ok(!allowsPort(claims, 8081) && !allowsPort(claims, 9011));
    assert.ok(allowsPort({ ...claims, ports: [{ all: true }] }, 1));
  });

  it("refuse expired, forged and malformed tokens", () => {
    const token = authority.issue(claims);
    assert.deepEqual(authority.verify(token, new Date(now.getTime() + 600_000)), { ok: false, reason: "expired" });
    assert.deepEqual(new TokenAuthority(randomBytes(32)).verify(token, now), { ok: false, reason: "forged" });
    const [prefix, , mac] = token.split(".");
    const widened = Buffer.from(JSON.stringify({ ...claims, ports: [{ all: true }] })).toString("base64url");
    assert.deepEqual(authority.verify(`${prefix}.${widened}.${mac}`, now), { ok: false, reason: "forged" });
    assert.deepEqual(authority.verify("nonsense", now), { ok: false, reason: "malformed" });
  });
});
