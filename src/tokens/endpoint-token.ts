import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Tokens for MicroVM endpoints (`X-aws-proxy-auth`) and shells. A token is signed
 * by the server and says who may reach what until when:
 *
 *   mvt1.<base64url JSON claims>.<base64url HMAC-SHA256(key, "mvt1." + claims)>
 *
 * Claims bind the account, region, MicroVM, kind (endpoint or shell), the allowed
 * ports and the expiry. Nothing is stored: the proxy verifies tokens by key alone,
 * and checks separately that the MicroVM is not terminated.
 */
export type PortScope = { all: true } | { from: number; to: number };

export interface TokenClaims {
  kind: "endpoint" | "shell";
  accountId: string;
  region: string;
  microvmId: string;
  ports: PortScope[];
  /** Epoch seconds. */
  issuedAt: number;
  expiresAt: number;
}

const PREFIX = "mvt1";

export type TokenCheck = { ok: true; claims: TokenClaims } | { ok: false; reason: "malformed" | "forged" | "expired" };

export class TokenAuthority {
  constructor(private readonly key: Buffer) {}

  private sign(payload: string): Buffer {
    return createHmac("sha256", this.key).update(`${PREFIX}.${payload}`).digest();
  }

  issue(claims: TokenClaims): string {
    const payload = Buffer.from(JSON.stringify(claims)).toString("base64url");
    return `${PREFIX}.${payload}.${this.sign(payload).toString("base64url")}`;
  }

  verify(token: string, now: Date): TokenCheck {
    const parts = token.split(".");
    if (parts.length !== 3 || parts[0] !== PREFIX || !parts[1] || !parts[2]) return { ok: false, reason: "malformed" };
    const given = Buffer.from(parts[2], "base64url");
    const expected = this.sign(parts[1]);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: "forged" };
    let claims: TokenClaims;
    try {
      claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8")) as TokenClaims;
    } catch {
      return { ok: false, reason: "malformed" };
    }
    if (now.getTime() / 1000 >= claims.expiresAt) return { ok: false, reason: "expired" };
    return { ok: true, claims };
  }
}

export function allowsPort(claims: TokenClaims, port: number): boolean {
  return claims.ports.some((scope) => ("all" in scope ? true : port >= scope.from && port <= scope.to));
}
