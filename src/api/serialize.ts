import type { ServiceModel, ShapeRef } from "./model.js";

/**
 * Turns a handler's typed output into the restJson1 body. Only members the model
 * declares are written, so internal fields can never leak; unset members are
 * omitted; timestamps become epoch seconds (JSON numbers).
 */
export function serializeShape(model: ServiceModel, ref: ShapeRef, value: unknown): unknown {
  const shape = model.shapes[ref.shape];
  if (!shape) throw new Error(`service model: shape ${ref.shape} is not defined`);
  switch (shape.type) {
    case "structure": {
      const source = value as Record<string, unknown>;
      const out: Record<string, unknown> = {};
      for (const [member, memberRef] of Object.entries(shape.members)) {
        if (memberRef.location) continue; // headers and status codes are not body members
        const v = source[member];
        if (v !== undefined && v !== null) out[member] = serializeShape(model, memberRef, v);
      }
      return out;
    }
    case "list":
      return (value as unknown[]).map((item) => serializeShape(model, shape.member, item));
    case "map":
      return Object.fromEntries(
        Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, serializeShape(model, shape.value, v)]),
      );
    case "timestamp": {
      const ms = value instanceof Date ? value.getTime() : Number(value) * 1000;
      return Math.round(ms) / 1000;
    }
    default:
      return value;
  }
}
