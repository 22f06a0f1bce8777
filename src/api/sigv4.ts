import { timingSafeEqual, createHash } from "node:crypto";
import { Sha256 } from "@aws-crypto/sha256-js";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import { ServiceError } from "../domain/service-errors.js";
import type { Accounts } from "../accounts.js";

/**
 * AWS Signature Version 4 verification. We do not re-implement the algorithm: the
 * AWS SDK's own signer recomputes the signature over exactly what the client
 * signed (its signed headers, the raw path, the query, the payload hash, its date
 * and credential scope), and the two signatures are compared in constant time.
 *
 *   Authorization header ─┐                         ┌─ same? → Caller {account, region}
 *                         ├─► parse ─► look up key ─► SDK signer ─► compare
 *   X-Amz-* query (presign)┘                         └─ differ → AccessDeniedException
 */

export interface SignedRequest {
  method: string;
  /** The path exactly as received, still percent-encoded: SigV4 encodes it once more. */
  rawPath: string;
  query: Map<string, string[]>;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export interface Caller {
  accessKeyId: string;
  accountId: string;
  region: string;
}

const ALGORITHM = "AWS4-HMAC-SHA256";
/** How far a request's date may be from the server's clock, as AWS allows. */
const MAX_CLOCK_SKEW_MS = 15 * 60 * 1000;
const MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600;
const EMPTY_SHA256 = createHash("sha256").update("").digest("hex");

interface SignatureParts {
  accessKeyId: string;
  date: string;
  region: string;
  service: string;
  signedHeaders: string[];
  signature: string;
  amzDate: string;
  presignExpires?: number;
}

function incomplete(message: string): ServiceError {
  return new ServiceError("IncompleteSignature", message);
}

function header(request: SignedRequest, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value.join(",") : value;
}

function parseCredential(credential: string): Pick<SignatureParts, "accessKeyId" | "date" | "region" | "service"> {
  const parts = credential.split("/");
  if (parts.length !== 5 || parts[4] !== "aws4_request" || parts.some((p) => p === "")) {
    throw incomplete(
      `Credential must have the form <access key>/<YYYYMMDD>/<region>/<service>/aws4_request, got '${credential}'.`,
    );
  }
  const [accessKeyId, date, region, service] = parts as [string, string, string, string];
  return { accessKeyId, date, region, service };
}

function parseAuthorizationHeader(value: string, amzDate: string | undefined): SignatureParts {
  if (!value.startsWith(ALGORITHM + " ")) {
    throw incomplete(`Only ${ALGORITHM} request signatures are supported.`);
  }
  const fields = new Map<string, string>();
  for (const part of value.slice(ALGORITHM.length + 1).split(",")) {
    const eq = part.indexOf("=");
    if (eq > 0) fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  const missing = ["Credential", "SignedHeaders", "Signature"].filter((k) => !fields.get(k));
  if (missing.length > 0) {
    throw incomplete(`Authorization header requires ${missing.join(", ")} parameter(s). Authorization=${value.split(" ")[0]}`);
  }
  if (!amzDate) throw incomplete("Authorization header requires the 'X-Amz-Date' header.");
  return {
    ...parseCredential(fields.get("Credential")!),
    signedHeaders: fields.get("SignedHeaders")!.split(";"),
    signature: fields.get("Signature")!,
    amzDate,
  };
}

function parsePresignedQuery(request: SignedRequest): SignatureParts {
  const get = (name: string) => request.query.get(name)?.[0];
  const algorithm = get("X-Amz-Algorithm");
  if (algorithm !== ALGORITHM) throw incomplete(`X-Amz-Algorithm must be ${ALGORITHM}.`);
  const missing = ["X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Expires"].filter(
    (k) => !get(k),
  );
  if (missing.length > 0) throw incomplete(`Presigned requests require the query parameters ${missing.join(", ")}.`);
  const expires = Number(get("X-Amz-Expires"));
  if (!Number.isInteger(expires) || expires < 1 || expires > MAX_PRESIGN_EXPIRES_S) {
    throw incomplete(`X-Amz-Expires must be an integer from 1 to ${MAX_PRESIGN_EXPIRES_S}.`);
  }
  return {
    ...parseCredential(get("X-Amz-Credential")!),
    signedHeaders: get("X-Amz-SignedHeaders")!.split(";"),
    signature: get("X-Amz-Signature")!,
    amzDate: get("X-Amz-Date")!,
    presignExpires: expires,
  };
}

/** Parses the ISO 8601 basic format of X-Amz-Date (20250909T120000Z). */
function parseAmzDate(value: string): Date {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) throw incomplete(`X-Amz-Date must have the form YYYYMMDD'T'HHMMSS'Z', got '${value}'.`);
  const [, y, mo, d, h, mi, s] = m.map(Number) as number[];
  return new Date(Date.UTC(y!, mo! - 1, d!, h!, mi!, s!));
}

function denied(message: string): ServiceError {
  return new ServiceError("AccessDeniedException", message);
}

function sameSignature(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export interface VerifierOptions {
  accounts: Accounts;
  /** The service name in the credential scope: the model's signingName. */
  signingName: string;
  now?: () => Date;
}

export class SigV4Verifier {
  private readonly now: () => Date;

  constructor(private readonly options: VerifierOptions) {
    this.now = options.now ?? (() => new Date());
  }

  async verify(request: SignedRequest): Promise<Caller> {
    const authorization = header(request, "authorization");
    const presigned = request.query.has("X-Amz-Signature") || request.query.has("X-Amz-Credential");
    if (!authorization && !presigned) {
      throw new ServiceError(
        "NotAuthorized",
        "Missing Authentication Token: sign requests with AWS Signature Version 4 " +
          "(an Authorization header, or X-Amz-* query parameters).",
      );
    }
    const parts = authorization
      ? parseAuthorizationHeader(authorization, header(request, "x-amz-date"))
      : parsePresignedQuery(request);

    if (parts.service !== this.options.signingName) {
      throw incomplete(`Credential should be scoped to service '${this.options.signingName}', not '${parts.service}'.`);
    }
    if (!parts.signedHeaders.includes("host")) throw incomplete("The 'host' header must be signed.");
    const signingDate = parseAmzDate(parts.amzDate);
    if (parts.amzDate.slice(0, 8) !== parts.date) {
      throw incomplete(`Credential date '${parts.date}' does not match X-Amz-Date '${parts.amzDate}'.`);
    }
    this.checkTime(signingDate, parts);

    const credential = this.options.accounts.lookup(parts.accessKeyId);
    if (!credential) throw new ServiceError("UnrecognizedClientException", "The security token included in the request is invalid.");

    const headers: Record<string, string> = {};
    for (const name of parts.signedHeaders) {
      const value = header(request, name);
      if (value === undefined) throw incomplete(`Signed header '${name}' is missing from the request.`);
      headers[name] = value;
    }
    this.checkPayloadHash(request, headers["x-amz-content-sha256"]);

    const query: Record<string, string | string[]> = {};
    for (const [key, values] of request.query) {
      if (presigned && key === "X-Amz-Signature") continue;
      query[key] = values.length === 1 ? values[0]! : values;
    }
    const httpRequest = new HttpRequest({
      method: request.method,
      protocol: "http:",
      hostname: headers["host"]!.replace(/:\d+$/, ""),
      path: request.rawPath,
      query,
      headers,
      body: request.body.length > 0 ? request.body : undefined,
    });
    const signer = new SignatureV4({
      credentials: { accessKeyId: parts.accessKeyId, secretAccessKey: credential.secretAccessKey },
      region: parts.region,
      service: parts.service,
      sha256: Sha256,
      uriEscapePath: true,
      applyChecksum: false,
    });
    const signableHeaders = new Set(parts.signedHeaders);
    let expected: string | undefined;
    if (presigned) {
      const signed = await signer.presign(httpRequest, {
        signingDate,
        expiresIn: parts.presignExpires,
        signableHeaders,
        unhoistableHeaders: signableHeaders,
      });
      expected = String(signed.query?.["X-Amz-Signature"] ?? "");
    } else {
      const signed = await signer.sign(httpRequest, { signingDate, signableHeaders });
      expected = /Signature=([0-9a-f]+)/.exec(String(signed.headers["authorization"] ?? ""))?.[1];
    }
    if (!expected || !sameSignature(expected, parts.signature)) {
      throw denied(
        "The request signature we calculated does not match the signature you provided. " +
          "Check your AWS Secret Access Key and signing method.",
      );
    }
    return { accessKeyId: parts.accessKeyId, accountId: credential.accountId, region: parts.region };
  }

  private checkTime(signingDate: Date, parts: SignatureParts): void {
    const now = this.now().getTime();
    const at = signingDate.getTime();
    if (parts.presignExpires !== undefined) {
      if (at - now > MAX_CLOCK_SKEW_MS) throw denied(`Request is not yet valid: X-Amz-Date is ${parts.amzDate}.`);
      if (now > at + parts.presignExpires * 1000) throw denied("Request has expired.");
      return;
    }
    if (Math.abs(now - at) > MAX_CLOCK_SKEW_MS) {
      throw denied(
        `Signature expired: ${parts.amzDate} is more than 15 minutes away from the server time ` +
          `${new Date(now).toISOString()}. Check the clock of the client.`,
      );
    }
  }

  /** A body that does not match the hash the client signed was changed on the way. */
  private checkPayloadHash(request: SignedRequest, claimed: string | undefined): void {
    if (claimed === undefined || claimed.startsWith("UNSIGNED-PAYLOAD") || claimed.startsWith("STREAMING-")) return;
    const actual = request.body.length > 0 ? createHash("sha256").update(request.body).digest("hex") : EMPTY_SHA256;
    if (actual !== claimed) throw incomplete("The x-amz-content-sha256 header does not match the request body.");
  }
}
