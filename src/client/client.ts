import { Sha256 } from "@aws-crypto/sha256-js";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import { loadServiceModel, type ServiceModel } from "../api/model.js";
import type { OperationName, Operations } from "../api/generated/types.js";

/**
 * A restJson1 client derived from the service model: it places each input member
 * where the model says (uri label, querystring, header, body) and signs with
 * SigV4, as the AWS SDKs do. `send` returns the raw status, headers and JSON so
 * callers can check errors as well as results.
 */

export interface ClientOptions {
  endpoint: string;
  region?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  model?: ServiceModel;
}

export interface RawResponse {
  status: number;
  headers: Headers;
  body: string;
  json: Record<string, unknown> | undefined;
}

export interface RawRequest {
  method: string;
  /** Path and query, already encoded. */
  path: string;
  body?: string | Buffer;
  headers?: Record<string, string>;
  /** false sends the request unsigned. */
  sign?: boolean;
}

/** The thrown form of an error response, with the spec's error type. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly errorType: string,
    readonly body: Record<string, unknown>,
  ) {
    super(`${errorType} (${status}): ${String(body.message ?? body.Message ?? "")}`);
  }
}

function encodeLabel(value: string): string {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export class MicrovmsClient {
  readonly model: ServiceModel;
  private readonly signer: SignatureV4;
  private readonly url: URL;

  constructor(options: ClientOptions) {
    this.model = options.model ?? loadServiceModel();
    this.url = new URL(options.endpoint);
    this.signer = new SignatureV4({
      credentials: { accessKeyId: options.accessKeyId ?? "test", secretAccessKey: options.secretAccessKey ?? "test" },
      region: options.region ?? "us-east-1",
      service: this.model.metadata.signingName,
      sha256: Sha256,
    });
  }

  /** Calls an operation; resolves to its output, rejects with ApiError. */
  async call<K extends OperationName>(operation: K, input: Operations[K]["input"]): Promise<Record<string, unknown>> {
    const response = await this.send(operation, input as Record<string, unknown>);
    if (response.status >= 300) {
      throw new ApiError(response.status, response.headers.get("x-amzn-errortype") ?? "Unknown", response.json ?? {});
    }
    return response.json ?? {};
  }

  /** Serializes an operation's input as the model says, and sends it. */
  send(operation: OperationName, input: Record<string, unknown>): Promise<RawResponse> {
    const op = this.model.operations[operation]!;
    const shape = op.input ? this.model.shapes[op.input.shape] : undefined;
    let path = op.http.requestUri;
    const query: string[] = [];
    const headers: Record<string, string> = {};
    const body: Record<string, unknown> = {};
    let hasBody = false;
    if (shape?.type === "structure") {
      for (const [member, ref] of Object.entries(shape.members)) {
        const value = input[member];
        const name = ref.locationName ?? member;
        if (ref.location === undefined) {
          if (value !== undefined) body[member] = value;
          hasBody = true;
          continue;
        }
        if (value === undefined) continue;
        if (ref.location === "uri") path = path.replace(`{${name}}`, encodeLabel(String(value)));
        if (ref.location === "querystring") {
          for (const v of Array.isArray(value) ? value : [value]) query.push(`${encodeLabel(name)}=${encodeLabel(String(v))}`);
        }
        if (ref.location === "header") headers[name] = String(value);
      }
    }
    return this.raw({
      method: op.http.method,
      path: path + (query.length ? `?${query.join("&")}` : ""),
      body: hasBody ? JSON.stringify(body) : undefined,
      headers: hasBody ? { ...headers, "content-type": "application/json" } : headers,
    });
  }

  /** Sends a request as given (signed unless `sign: false`): for tests of malformed input. */
  async raw(request: RawRequest): Promise<RawResponse> {
    const [pathOnly, rawQuery = ""] = request.path.split("?");
    const query: Record<string, string | string[]> = {};
    for (const part of rawQuery.split("&").filter(Boolean)) {
      const [k, v = ""] = part.split("=");
      const key = decodeURIComponent(k!);
      const value = decodeURIComponent(v);
      const prior = query[key];
      query[key] = prior === undefined ? value : Array.isArray(prior) ? [...prior, value] : [prior, value];
    }
    const body = request.body === undefined ? undefined : Buffer.from(request.body);
    let headers: Record<string, string> = { host: this.url.host, ...request.headers };
    if (request.sign !== false) {
      const signed = await this.signer.sign(
        new HttpRequest({
          method: request.method,
          protocol: this.url.protocol,
          hostname: this.url.hostname,
          port: Number(this.url.port) || undefined,
          path: pathOnly,
          query,
          headers,
          body,
        }),
      );
      headers = signed.headers as Record<string, string>;
    }
    const { host: _host, ...sendable } = headers;
    const response = await fetch(new URL(request.path, this.url), { method: request.method, headers: sendable, body });
    const text = await response.text();
    let json: Record<string, unknown> | undefined;
    try {
      json = text ? (JSON.parse(text) as Record<string, unknown>) : undefined;
    } catch {
      json = undefined;
    }
    return { status: response.status, headers: response.headers, body: text, json };
  }
}
