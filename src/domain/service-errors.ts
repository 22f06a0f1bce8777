import type { ModelledErrorName } from "../api/generated/types.js";

/**
 * The catalogue of errors a client can be told: the service model's modelled
 * errors and the spec's common ones. Any layer may throw them; `src/api/http.ts`
 * is the one place that turns them into responses (`src/api/errors.ts` gives
 * their statuses). Anything else thrown is our bug and becomes a 500 whose
 * details are logged, never sent.
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
