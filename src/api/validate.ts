import type { ServiceModel, Shape, ShapeRef, StructureShape } from "./model.js";

/**
 * Checks a value against a shape of the service model: types, required members,
 * unknown members, lengths, patterns, enums, ranges, list and map sizes, and
 * unions with exactly one member. Every violation names its field, in the words
 * AWS services use ("Value 'x' at 'name' failed to satisfy constraint: ...").
 */

const patternCache = new Map<string, RegExp>();

/** Model patterns are matched against the whole value, as AWS services do. */
function compiledPattern(pattern: string): RegExp {
  let re = patternCache.get(pattern);
  if (!re) {
    re = new RegExp(`^(?:${pattern})$`, "u");
    patternCache.set(pattern, re);
  }
  return re;
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

function show(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "string") {
    const text = [...value].length > 80 ? [...value].slice(0, 80).join("") + "..." : value;
    return `'${text}'`;
  }
  if (typeof value === "number" || typeof value === "boolean") return `'${String(value)}'`;
  return Array.isArray(value) ? "(list)" : "(object)";
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export class Validator {
  constructor(private readonly model: ServiceModel) {}

  /** Validates `value` (already known to be present) against `ref`; returns the violations. */
  validate(ref: ShapeRef, value: unknown, path: string): string[] {
    const violations: string[] = [];
    this.check(ref, value, path, violations);
    return violations;
  }

  /** Validates the members of a structure, `path` prefixing member names (empty at the top level). */
  validateMembers(shapeName: string, value: Record<string, unknown>, path: string): string[] {
    const violations: string[] = [];
    this.checkStructure(shapeName, this.structure(shapeName), value, path, violations);
    return violations;
  }

  private structure(name: string): StructureShape {
    const shape = this.model.shapes[name];
    if (shape?.type !== "structure") throw new Error(`service model: ${name} is not a structure`);
    return shape;
  }

  private check(ref: ShapeRef, value: unknown, path: string, out: string[]): void {
    const shape = this.model.shapes[ref.shape];
    if (!shape) throw new Error(`service model: shape ${ref.shape} is not defined`);
    const fail = (constraint: string) =>
      out.push(`Value ${show(value)} at '${path}' failed to satisfy constraint: Member must ${constraint}`);
    this.checkShape(ref.shape, shape, value, path, out, fail);
  }

  private checkShape(
    name: string,
    shape: Shape,
    value: unknown,
    path: string,
    out: string[],
    fail: (constraint: string) => void,
  ): void {
    switch (shape.type) {
      case "structure":
        if (!isObject(value)) return fail("be an object");
        return this.checkStructure(name, shape, value, path, out);
      case "list": {
        if (!Array.isArray(value)) return fail("be a list");
        if (shape.min !== undefined && value.length < shape.min)
          fail(`have length greater than or equal to ${shape.min}`);
        if (shape.max !== undefined && value.length > shape.max) fail(`have length less than or equal to ${shape.max}`);
        value.forEach((item, i) => {
          if (item === null || item === undefined) {
            out.push(`Value null at '${path}[${i}]' failed to satisfy constraint: Member must not be null`);
          } else {
            this.check(shape.member, item, `${path}[${i}]`, out);
          }
        });
        return;
      }
      case "map": {
        if (!isObject(value)) return fail("be a map");
        const entries = Object.entries(value);
        if (shape.min !== undefined && entries.length < shape.min)
          fail(`have length greater than or equal to ${shape.min}`);
        if (shape.max !== undefined && entries.length > shape.max) fail(`have length less than or equal to ${shape.max}`);
        for (const [key, item] of entries) {
          this.check(shape.key, key, `${path} key ${show(key)}`, out);
          if (item === null || item === undefined) {
            out.push(`Value null at '${path}.${key}' failed to satisfy constraint: Member must not be null`);
          } else {
            this.check(shape.value, item, `${path}.${key}`, out);
          }
        }
        return;
      }
      case "string": {
        if (typeof value !== "string") return fail("be a string");
        const length = [...value].length;
        if (shape.min !== undefined && length < shape.min) fail(`have length greater than or equal to ${shape.min}`);
        if (shape.max !== undefined && length > shape.max) fail(`have length less than or equal to ${shape.max}`);
        if (shape.enum && !shape.enum.includes(value)) fail(`satisfy enum value set: [${shape.enum.join(", ")}]`);
        if (shape.pattern && !compiledPattern(shape.pattern).test(value))
          fail(`satisfy regular expression pattern: ${shape.pattern}`);
        return;
      }
      case "integer":
      case "long": {
        if (typeof value !== "number" || !Number.isInteger(value)) return fail("be an integer");
        if (shape.type === "integer" && (value < INT32_MIN || value > INT32_MAX))
          return fail(`be an integer between ${INT32_MIN} and ${INT32_MAX}`);
        if (shape.type === "long" && !Number.isSafeInteger(value)) return fail("be an integer that fits in 64 bits");
        if (shape.min !== undefined && value < shape.min) fail(`have value greater than or equal to ${shape.min}`);
        if (shape.max !== undefined && value > shape.max) fail(`have value less than or equal to ${shape.max}`);
        return;
      }
      case "float":
      case "double":
        if (typeof value !== "number" || !Number.isFinite(value)) return fail("be a number");
        if (shape.min !== undefined && value < shape.min) fail(`have value greater than or equal to ${shape.min}`);
        if (shape.max !== undefined && value > shape.max) fail(`have value less than or equal to ${shape.max}`);
        return;
      case "boolean":
        if (typeof value !== "boolean") fail("be a boolean");
        return;
      case "timestamp":
        if (typeof value !== "number" || !Number.isFinite(value)) fail("be a timestamp in epoch seconds");
        return;
    }
  }

  private checkStructure(
    name: string,
    shape: StructureShape,
    value: Record<string, unknown>,
    path: string,
    out: string[],
  ): void {
    const at = (member: string) => (path ? `${path}.${member}` : member);
    for (const key of Object.keys(value)) {
      if (!(key in shape.members)) {
        out.push(`Value at '${at(key)}' failed to satisfy constraint: Member is not a field of ${name}`);
      }
    }
    const present = Object.keys(shape.members).filter((m) => value[m] !== undefined && value[m] !== null);
    if (shape.union && present.length !== 1) {
      const got = present.length === 0 ? "none" : present.join(", ");
      out.push(
        `Value at '${path || name}' failed to satisfy constraint: Member must have exactly one of ` +
          `[${Object.keys(shape.members).join(", ")}] set, got ${got}`,
      );
    }
    for (const member of shape.required ?? []) {
      if (!present.includes(member)) {
        out.push(`Value null at '${at(member)}' failed to satisfy constraint: Member must not be null`);
      }
    }
    for (const member of present) {
      this.check(shape.members[member]!, value[member], at(member), out);
    }
  }
}

/** "1 validation error detected: ..." — the summary AWS services put in ValidationException. */
export function validationSummary(violations: string[]): string {
  const n = violations.length;
  return `${n} validation error${n === 1 ? "" : "s"} detected: ${violations.join("; ")}`;
}
