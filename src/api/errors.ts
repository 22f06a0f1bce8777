import { commonErrorStatus, invalidParameter, validation, type ErrorName, type ServiceError } from "../domain/service-errors.js";
import { modelledErrorStatus, type OperationModel, type ServiceModel } from "./model.js";

/**
 * The protocol's side of errors: the HTTP status of each error of the
 * catalogue (`src/domain/service-errors.ts`), and which error an operation
 * uses for input that breaks the model's constraints.
 */

export function errorStatus(model: ServiceModel, errorType: ErrorName): number {
  const modelled = modelledErrorStatus(model, errorType);
  if (modelled !== undefined) return modelled;
  const common = (commonErrorStatus as Record<string, number>)[errorType];
  if (common === undefined) throw new Error(`error type ${errorType} has no status: neither modelled nor common`);
  return common;
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
