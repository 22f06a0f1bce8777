/**
 * Generates src/api/generated/types.ts from the service model, so the handlers'
 * input and output types can never drift from the model (`npm run build` runs it).
 *
 *   model/lambda-microvms-2025-09-09.json ──► enums (string unions)
 *                                          ├► structures (interfaces; required members non-optional)
 *                                          └► Operations map { Op: { input; output } }, error names
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadServiceModel, type Shape, type ShapeRef, type ServiceModel } from "../src/api/model.js";
import { projectRoot } from "../src/paths.js";

function typeOf(model: ServiceModel, ref: ShapeRef): string {
  const shape = model.shapes[ref.shape];
  if (!shape) throw new Error(`shape ${ref.shape} is not defined`);
  return typeOfShape(model, ref.shape, shape);
}

function typeOfShape(model: ServiceModel, name: string, shape: Shape): string {
  switch (shape.type) {
    case "structure":
      return name;
    case "list":
      return `${wrap(typeOf(model, shape.member))}[]`;
    case "map":
      return `Record<string, ${typeOf(model, shape.value)}>`;
    case "string":
      return shape.enum ? name : "string";
    case "integer":
    case "long":
    case "float":
    case "double":
      return "number";
    case "boolean":
      return "boolean";
    case "timestamp":
      return "Date";
  }
}

function wrap(type: string): string {
  return /[|&]/.test(type) ? `(${type})` : type;
}

function docComment(text: string | undefined, indent: string): string {
  if (!text) return "";
  const plain = text.replace(/<[^>]+>/g, "").replace(/\s+/g, " ").trim().replace(/\*\//g, "*\\/");
  return plain ? `${indent}/** ${plain} */\n` : "";
}

export function generateTypes(model: ServiceModel): string {
  const out: string[] = [
    "// Generated from model/lambda-microvms-2025-09-09.json by scripts/generate-types.ts. Do not edit.",
    "/* eslint-disable */",
    "",
  ];
  const names = Object.keys(model.shapes).sort();
  for (const name of names) {
    const shape = model.shapes[name]!;
    if (shape.type === "string" && shape.enum) {
      out.push(docComment(shape.documentation, "") + `export type ${name} = ${shape.enum.map((v) => JSON.stringify(v)).join(" | ")};`);
      out.push(`export const ${name}Values = ${JSON.stringify(shape.enum)} as const;`, "");
    }
  }
  for (const name of names) {
    const shape = model.shapes[name]!;
    if (shape.type !== "structure") continue;
    const required = new Set(shape.required ?? []);
    const lines = Object.entries(shape.members).map(([member, ref]) => {
      const optional = required.has(member) ? "" : "?";
      return docComment(ref.documentation, "  ") + `  ${JSON.stringify(member)}${optional}: ${typeOf(model, ref)};`;
    });
    out.push(docComment(shape.documentation, "") + `export interface ${name} {`, ...lines, "}", "");
  }
  out.push("/** Every operation of the model with its input and output types. */", "export interface Operations {");
  for (const [name, op] of Object.entries(model.operations).sort(([a], [b]) => a.localeCompare(b))) {
    const input = op.input ? op.input.shape : "Record<string, never>";
    const output = op.output ? op.output.shape : "void";
    out.push(`  ${name}: { input: ${input}; output: ${output} };`);
  }
  out.push("}", "", "export type OperationName = keyof Operations;", "");
  const errorNames = names.filter((n) => {
    const s = model.shapes[n]!;
    return s.type === "structure" && s.exception;
  });
  out.push(`export type ModelledErrorName = ${errorNames.map((n) => JSON.stringify(n)).join(" | ")};`, "");
  return out.join("\n");
}

const model = loadServiceModel();
const dir = join(projectRoot, "src", "api", "generated");
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, "types.ts"), generateTypes(model));
