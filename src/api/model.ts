import { readFileSync } from "node:fs";
import { serviceModelPath } from "../paths.js";

/**
 * The AWS service-model JSON format (botocore's service-2.json), as far as this
 * project reads it. The model file is the single source of truth for routes,
 * parsing, validation, serialization and the generated TypeScript types.
 */
export interface ServiceModel {
  version: string;
  metadata: {
    apiVersion: string;
    protocol: string;
    signingName: string;
    serviceId: string;
    endpointPrefix: string;
    [key: string]: unknown;
  };
  operations: Record<string, OperationModel>;
  shapes: Record<string, Shape>;
}

export interface OperationModel {
  name: string;
  http: { method: string; requestUri: string; responseCode?: number };
  input?: ShapeRef;
  output?: ShapeRef;
  errors?: ShapeRef[];
  idempotent?: boolean;
  documentation?: string;
}

export interface ShapeRef {
  shape: string;
}

export type MemberLocation = "uri" | "querystring" | "header" | "headers" | "statusCode";

export interface MemberRef extends ShapeRef {
  location?: MemberLocation;
  locationName?: string;
  idempotencyToken?: boolean;
  documentation?: string;
}

interface ShapeBase {
  documentation?: string;
}

export interface StructureShape extends ShapeBase {
  type: "structure";
  members: Record<string, MemberRef>;
  required?: string[];
  union?: boolean;
  exception?: boolean;
  error?: { httpStatusCode: number; senderFault?: boolean; code?: string };
}

export interface ListShape extends ShapeBase {
  type: "list";
  member: ShapeRef;
  min?: number;
  max?: number;
}

export interface MapShape extends ShapeBase {
  type: "map";
  key: ShapeRef;
  value: ShapeRef;
  min?: number;
  max?: number;
}

export interface StringShape extends ShapeBase {
  type: "string";
  min?: number;
  max?: number;
  pattern?: string;
  enum?: string[];
  sensitive?: boolean;
}

export interface NumberShape extends ShapeBase {
  type: "integer" | "long" | "float" | "double";
  min?: number;
  max?: number;
}

export interface BooleanShape extends ShapeBase {
  type: "boolean";
}

export interface TimestampShape extends ShapeBase {
  type: "timestamp";
  timestampFormat?: string;
}

export type Shape = StructureShape | ListShape | MapShape | StringShape | NumberShape | BooleanShape | TimestampShape;

export function loadServiceModel(path: string = serviceModelPath): ServiceModel {
  return JSON.parse(readFileSync(path, "utf8")) as ServiceModel;
}

/** Looks up a shape, failing loudly: a dangling reference is a broken model, not bad input. */
export function shapeOf(model: ServiceModel, ref: ShapeRef): Shape {
  const shape = model.shapes[ref.shape];
  if (!shape) throw new Error(`service model: shape ${ref.shape} is not defined`);
  return shape;
}

export function structureOf(model: ServiceModel, ref: ShapeRef): StructureShape {
  const shape = shapeOf(model, ref);
  if (shape.type !== "structure") throw new Error(`service model: shape ${ref.shape} is not a structure`);
  return shape;
}

/** The HTTP status code of a modelled error, or undefined when the name is not a modelled error. */
export function modelledErrorStatus(model: ServiceModel, name: string): number | undefined {
  const shape = model.shapes[name];
  return shape?.type === "structure" && shape.exception ? shape.error?.httpStatusCode : undefined;
}
