import type { ModelledErrorName } from "./generated/types.js";
import { modelledErrorStatus, type OperationModel, type ServiceModel } from "./model.js";

/**
 * Errors are data: a handler throws a ServiceError naming a modelled error (its
 * status comes from the service model) or one of the spec's common error types
 * (their statuses are below); `http.ts` is the one place that turns either into a
 * response. Anything else thrown is our bug and becomes a 500 whose details are
 * logged, never sent.
 */

/** The spec's "Common Error Types" that are not modelled per operation, with their statuses. */
export const commonErrorStatus = {
  IncompleteSignature: 403,
  UnrecognizedClientException: 403,
  ExpiredTokenException: 403,
  NotAuthorized: 401,
  MalformedHttpRequestException: 400,
  RequestEntityTooLargeException: 413,
  UnknownOperationException: 404,
  InternalFailure: 500,
  ServiceUnavailable: 503,
  NotImplemented: 501,
} as const;

export type CommonErrorName = keyof typeof commonErrorStatus;
export type ErrorName = ModelledErrorName | CommonErrorName;

export type ErrorMembers = Record<string, string | number>;

export class ServiceError extends Error {
  constructor(
    readonly errorType: ErrorName,
    message: string,
    readonly members: ErrorMembers = {},
  ) {
    super(message);
    this.name = errorType;
  }
}

export function errorStatus(model: ServiceModel, errorType: ErrorName): number {
  const modelled = modelledErrorStatus(model, errorType);
  if (modelled !== undefined) return modelled;
  const common = (commonErrorStatus as Record<string, number>)[errorType];
  if (common === undefined) throw new Error(`error type ${errorType} has no status: neither modelled nor common`);
  return common;
}

export const ResourceType = {
  MicrovmImage: "MicrovmImage",
  MicrovmImageVersion: "MicrovmImageVersion",
  MicrovmImageBuild: "MicrovmImageBuild",
  ManagedMicrovmImage: "ManagedMicrovmImage",
  ManagedMicrovmImageVersion: "ManagedMicrovmImageVersion",
  Microvm: "Microvm",
} as const;
export type ResourceType = (typeof ResourceType)[keyof typeof ResourceType];

export function notFound(resourceType: ResourceType, resourceId: string, message?: string): ServiceError {
  return new ServiceError("ResourceNotFoundException", message ?? `${resourceType} ${resourceId} does not exist.`, {
    resourceId,
    resourceType,
  });
}

export function conflict(resourceType: ResourceType, resourceId: string, message: string): ServiceError {
  return new ServiceError("ConflictException", message, { resourceId, resourceType });
}

export function validation(message: string): ServiceError {
  return new ServiceError("ValidationException", message);
}

/** Lambda's tag API reports bad input with its own error type and a `Type` member. */
export function invalidParameter(message: string): ServiceError {
  return new ServiceError("InvalidParameterValueException", message, { Type: "User" });
}

/**
 * The error an operation uses for input that breaks the model's constraints:
 * ValidationException for the MicroVM operations, InvalidParameterValueException
 * for Lambda's tag operations, as each operation's error list in the model says.
 */
export function inputError(operation: OperationModel, message: string): ServiceError {
  const names = new Set((operation.errors ?? []).map((e) => e.shape));
  if (!names.has("ValidationException") && names.has("InvalidParameterValueException")) return invalidParameter(message);
  return validation(message);
}
