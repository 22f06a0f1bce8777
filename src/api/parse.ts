import type { OperationModel, ServiceModel, Shape } from "./model.js";

/**
 * Builds an operation's raw input from the parts of an HTTP request, as the model's
 * member locations say (uri label, querystring, header, or JSON body). Values keep
 * their wire types where the wire has none (a query integer that is not a number
 * stays a string) so that validation reports it against the field.
 */

export interface WireRequest {
  /** URI labels, already percent-decoded. */
  labels: Record<string, string>;
  /** Query parameters, percent-decoded, in order of appearance. */
  query: Map<string, string[]>;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** `malformed` is set when the body cannot be read at all; `violations` are per-field problems. */
export interface ParseResult {
  input: Record<string, unknown>;
  violations: string[];
  malformed?: string;
}

/** Splits a raw query string without treating '+' as a space (AWS clients encode spaces as %20). */
export function parseQueryString(raw: string): Map<string, string[]> {
  const query = new Map<string, string[]>();
  if (!raw) return query;
  for (const part of raw.split("&")) {
    if (!part) continue;
    const eq = part.indexOf("=");
    const key = safeDecode(eq < 0 ? part : part.slice(0, eq));
    const value = safeDecode(eq < 0 ? "" : part.slice(eq + 1));
    if (key === undefined || value === undefined) continue;
    const values = query.get(key);
    if (values) values.push(value);
    else query.set(key, [value]);
  }
  return query;
}

function safeDecode(text: string): string | undefined {
  try {
    return decodeURIComponent(text);
  } catch {
    return undefined;
  }
}

function fromText(shape: Shape, text: string): unknown {
  switch (shape.type) {
    case "integer":
    case "long":
      return /^-?\d+$/.test(text) ? Number(text) : text;
    case "float":
    case "double":
      return text.trim() !== "" && Number.isFinite(Number(text)) ? Number(text) : text;
    case "boolean":
      return text === "true" ? true : text === "false" ? false : text;
    default:
      return text;
  }
}

export function parseInput(model: ServiceModel, operation: OperationModel, request: WireRequest): ParseResult {
  if (!operation.input) return { input: {}, violations: [] };
  const shape = model.shapes[operation.input.shape];
  if (shape?.type !== "structure") throw new Error(`service model: input of ${operation.name} is not a structure`);

  const input: Record<string, unknown> = {};
  const bodyMembers = new Set<string>();
  for (const [member, ref] of Object.entries(shape.members)) {
    const memberShape = model.shapes[ref.shape];
    if (!memberShape) throw new Error(`service model: shape ${ref.shape} is not defined`);
    const name = ref.locationName ?? member;
    switch (ref.location) {
      case "uri": {
        const value = request.labels[name];
        if (value !== undefined) input[member] = fromText(memberShape, value);
        break;
      }
      case "querystring": {
        const values = request.query.get(name);
        if (!values) break;
        if (memberShape.type === "list") {
          const itemShape = model.shapes[memberShape.member.shape]!;
          input[member] = values.map((v) => fromText(itemShape, v));
        } else {
          input[member] = fromText(memberShape, values[values.length - 1]!);
        }
        break;
      }
      case "header": {
        const value = request.headers[name.toLowerCase()];
        if (value !== undefined) input[member] = fromText(memberShape, Array.isArray(value) ? value.join(",") : value);
        break;
      }
      case undefined:
        bodyMembers.add(member);
        break;
      default:
        break;
    }
  }

  const violations: string[] = [];
  const text = request.body.toString("utf8").trim();
  // Operations without body members ignore a body, as AWS services do (some clients send "{}").
  if (text === "" || bodyMembers.size === 0) return { input, violations };
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    return { input, violations, malformed: `The request body is not valid JSON: ${(error as Error).message}` };
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return { input, violations, malformed: "The request body must be a JSON object." };
  }
  for (const [key, value] of Object.entries(body)) {
    if (bodyMembers.has(key)) input[key] = value;
    else violations.push(`Value at '${key}' failed to satisfy constraint: Member is not a field of ${operation.input.shape}`);
  }
  return { input, violations };
}
