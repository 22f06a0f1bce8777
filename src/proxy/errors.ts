import { STATUS_CODES, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";

/**
 * Errors are data, on the data plane too: a refusal names one of these types,
 * this table gives its status, and `sendRefusal` / `writeRefusal` are the only
 * places that turn a refusal into bytes on the wire — a response for plain HTTP,
 * a hand-written response on the raw socket for a refused WebSocket upgrade.
 * Both carry `{"message": ...}` and `x-amzn-errortype`, as the control API does.
 */
export const proxyErrorStatus = {
  BadRequestException: 400,
  UnauthorizedException: 401,
  AccessDeniedException: 403,
  ResourceNotFoundException: 404,
  InternalServerErrorException: 500,
  BadGatewayException: 502,
  ServiceUnavailableException: 503,
} as const;

export type ProxyErrorType = keyof typeof proxyErrorStatus;

export class ProxyError extends Error {
  constructor(
    readonly errorType: ProxyErrorType,
    message: string,
    /** Extra response headers, e.g. `retry-after` on a 503. */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = errorType;
  }

  get status(): number {
    return proxyErrorStatus[this.errorType];
  }
}

function responseParts(error: ProxyError): { body: string; headers: Record<string, string | number> } {
  const body = JSON.stringify({ message: error.message });
  return {
    body,
    headers: {
      ...error.headers,
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      "x-amzn-errortype": error.errorType,
    },
  };
}

/** Answers a plain HTTP request with the refusal. */
export function sendRefusal(res: ServerResponse, error: ProxyError): void {
  const { body, headers } = responseParts(error);
  res.writeHead(error.status, headers);
  res.end(body);
}

/** Answers a refused upgrade on its raw socket, then closes it: no HTTP server is left to do it. */
export function writeRefusal(socket: Duplex, error: ProxyError): void {
  if (socket.destroyed) return;
  const { body, headers } = responseParts(error);
  const lines = [`HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? ""}`];
  for (const [name, value] of Object.entries({ ...headers, connection: "close" })) lines.push(`${name}: ${value}`);
  socket.end(`${lines.join("\r\n")}\r\n\r\n${body}`);
}
