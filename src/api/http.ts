import { randomUUID } from "node:crypto";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { Logger } from "pino";
import type { OperationName } from "./generated/types.js";
import { ServiceError } from "../domain/service-errors.js";
import { errorStatus, inputError } from "./errors.js";
import type { OperationModel, ServiceModel } from "./model.js";
import { parseInput, parseQueryString } from "./parse.js";
import { serializeShape } from "./serialize.js";
import type { SigV4Verifier } from "./sigv4.js";
import { Validator, validationSummary } from "./validate.js";
import type { OperationHandlers } from "../operations/context.js";

/**
 * The control API's request lifecycle (restJson1). Routes come from the service
 * model; every request takes the same path:
 *
 *   request ─► route (model http.method + requestUri) ─► SigV4 ─► parse (labels, query, body)
 *           ─► validate (model constraints) ─► handler(typed input, context) ─► serialize (model output)
 *   any step throws ─► ServiceError ─► status + x-amzn-errortype + {"message", ...members}
 *                   ─► anything else ─► logged, 500 without details
 */

export const MAX_BODY_BYTES = 1024 * 1024;

export interface ApiOptions {
  model: ServiceModel;
  handlers: OperationHandlers;
  verifier: SigV4Verifier;
  log: Logger;
}

/** `/a/{b}/c` → `/a/:b/c`, fastify's spelling of a URI label. */
function routePath(requestUri: string): string {
  return requestUri.split("?")[0]!.replace(/\{([^}+]+)\+?\}/g, ":$1");
}

function splitUrl(url: string): { rawPath: string; rawQuery: string } {
  const q = url.indexOf("?");
  return q < 0 ? { rawPath: url, rawQuery: "" } : { rawPath: url.slice(0, q), rawQuery: url.slice(q + 1) };
}

export function buildApi(options: ApiOptions): FastifyInstance {
  const { model, handlers, verifier, log } = options;
  const validator = new Validator(model);
  const app = Fastify({ bodyLimit: MAX_BODY_BYTES, routerOptions: { ignoreTrailingSlash: true }, logger: false });

  // Bodies stay raw: SigV4 hashes the exact bytes, and JSON errors must be ours, in the spec's shape.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", { parseAs: "buffer" }, (_request, body, done) => done(null, body));

  function sendError(reply: FastifyReply, requestId: string, error: ServiceError): void {
    const status = errorStatus(model, error.errorType);
    void reply
      .code(status)
      .header("x-amzn-requestid", requestId)
      .header("x-amzn-errortype", error.errorType)
      .header("content-type", "application/json")
      .send(JSON.stringify({ ...error.members, message: error.message }));
  }

  /** Our bug, not the client's: log everything, tell the client nothing but the request id. */
  function internalError(operation: OperationModel | undefined, requestId: string, error: unknown): ServiceError {
    log.error({ err: error, requestId, operation: operation?.name }, "internal error");
    const message = `An internal error occurred. Retry the request later. (request id ${requestId})`;
    const lambdaStyle = operation?.errors?.some((e) => e.shape === "ServiceException");
    return lambdaStyle
      ? new ServiceError("ServiceException", message, { Type: "Service" })
      : new ServiceError("InternalServerErrorException", message);
  }

  async function dispatch(operation: OperationModel, request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const requestId = randomUUID();
    const started = process.hrtime.bigint();
    try {
      const { rawPath, rawQuery } = splitUrl(request.raw.url ?? "/");
      const query = parseQueryString(rawQuery);
      const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
      const caller = await verifier.verify({ method: request.method, rawPath, query, headers: request.headers, body });

      const labels = request.params as Record<string, string>;
      const parsed = parseInput(model, operation, { labels, query, headers: request.headers, body });
      if (parsed.malformed) throw inputError(operation, parsed.malformed);
      const violations = operation.input
        ? [...parsed.violations, ...validator.validateMembers(operation.input.shape, parsed.input, "")]
        : parsed.violations;
      if (violations.length > 0) throw inputError(operation, validationSummary(violations));

      const owner = { accountId: caller.accountId, region: caller.region };
      const context = { requestId, owner, log: log.child({ requestId, operation: operation.name }) };
      const handler = handlers[operation.name as OperationName] as (input: unknown, c: typeof context) => Promise<unknown>;
      const output = await handler(parsed.input, context);

      reply.code(operation.http.responseCode ?? 200).header("x-amzn-requestid", requestId);
      if (operation.output) {
        void reply.header("content-type", "application/json").send(JSON.stringify(serializeShape(model, operation.output, output)));
      } else {
        void reply.send();
      }
    } catch (error) {
      sendError(reply, requestId, error instanceof ServiceError ? error : internalError(operation, requestId, error));
    } finally {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      log.debug({ requestId, operation: operation.name, status: reply.statusCode, ms }, "request");
    }
  }

  for (const operation of Object.values(model.operations)) {
    app.route({
      method: operation.http.method as "GET",
      url: routePath(operation.http.requestUri),
      handler: (request, reply) => dispatch(operation, request, reply),
    });
  }

  app.setNotFoundHandler((request, reply) => {
    sendError(
      reply,
      randomUUID(),
      new ServiceError("UnknownOperationException", `No operation matches ${request.method} ${splitUrl(request.url).rawPath}.`),
    );
  });

  // Errors fastify raises before a handler runs: the body, its size, its encoding.
  app.setErrorHandler((error: { code?: string; statusCode?: number; message: string }, _request, reply) => {
    const requestId = randomUUID();
    if (error.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
      return sendError(reply, requestId, new ServiceError("RequestEntityTooLargeException", `The request body is larger than ${MAX_BODY_BYTES} bytes.`));
    }
    if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
      return sendError(reply, requestId, new ServiceError("MalformedHttpRequestException", error.message));
    }
    sendError(reply, requestId, internalError(undefined, requestId, error));
  });

  return app;
}
