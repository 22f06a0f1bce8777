import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { loadServiceModel } from "../../src/api/model.js";
import { parseInput, parseQueryString } from "../../src/api/parse.js";
import { Validator, validationSummary } from "../../src/api/validate.js";

const model = loadServiceModel();
const validator = new Validator(model);
const check = (shape: string, value: Record<string, unknown>) => validator.validateMembers(shape, value, "");

const validImage = {
  name: "app",
  baseImageArn: "arn:aws:lambda:us-east-1:aws:microvm-image:busybox",
  buildRoleArn: "arn:aws:iam::000000000000:role/build",
  codeArtifact: { uri: "file:///tmp/app" },
};

describe("model-driven validation", () => {
  it("accepts a valid request", () => {
    assert.deepEqual(check("CreateMicrovmImageRequest", validImage), []);
  });

  it("names each missing required member", () => {
    const violations = check("CreateMicrovmImageRequest", { name: "app" });
    assert.equal(violations.length, 3);
    for (const field of ["baseImageArn", "buildRoleArn", "codeArtifact"]) {
      assert.ok(violations.some((v) => v.includes(`'${field}'`) && v.includes("must not be null")), field);
    }
  });

  it("checks patterns against the whole value", () => {
    const [v] = check("CreateMicrovmImageRequest", { ...validImage, name: "my app!" });
    assert.match(v!, /at 'name' .*regular expression pattern/);
    assert.deepEqual(check("CreateMicrovmImageRequest", { ...validImage, name: "my-app_2" }), []);
  });

  it("checks lengths, ranges, enums and types", () => {
    assert.match(check("CreateMicrovmImageRequest", { ...validImage, name: "x".repeat(65) })[0]!, /length less than or equal to 64/);
    assert.match(check("CreateMicrovmImageRequest", { ...validImage, buildRoleArn: "arn:aws:iam::1:role/x" })[0]!, /buildRoleArn/);
    const hooks = { hooks: { port: 70000, microvmHooks: { run: "MAYBE", runTimeoutInSeconds: 61 } } };
    const violations = check("CreateMicrovmImageRequest", { ...validImage, ...hooks });
    assert.ok(violations.some((v) => v.includes("'hooks.port'") && v.includes("less than or equal to 65535")));
    assert.ok(violations.some((v) => v.includes("'hooks.microvmHooks.run'") && v.includes("enum value set: [ENABLED, DISABLED]")));
    assert.ok(violations.some((v) => v.includes("'hooks.microvmHooks.runTimeoutInSeconds'")));
    assert.match(check("CreateMicrovmImageRequest", { ...validImage, description: 5 })[0]!, /'description' .*be a string/);
    assert.match(check("RunMicrovmRequest", { imageIdentifier: "a", maximumDurationInSeconds: 1.5 })[0]!, /be an integer/);
  });

  it("requires unions to have exactly one member", () => {
    const two = check("CreateMicrovmImageRequest", { ...validImage, logging: { disabled: {}, cloudWatch: { logGroup: "g" } } });
    assert.match(two[0]!, /'logging' .*exactly one of \[cloudWatch, disabled\] set, got cloudWatch, disabled|exactly one of/);
    const none = check("CreateMicrovmImageRequest", { ...validImage, codeArtifact: {} });
    assert.match(none[0]!, /'codeArtifact' .*got none/);
  });

  it("checks list and map sizes and map keys", () => {
    const env = Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`K${i}`, "v"]));
    assert.match(check("CreateMicrovmImageRequest", { ...validImage, environmentVariables: env })[0]!, /environmentVariables.*50/);
    assert.match(check("CreateMicrovmImageRequest", { ...validImage, environmentVariables: { "A B": "v" } })[0]!, /key 'A B'/);
    const ports = check("CreateMicrovmAuthTokenRequest", { microvmIdentifier: "m", allowedPorts: [], expirationInMinutes: 5 });
    assert.match(ports[0]!, /allowedPorts.*greater than or equal to 1/);
    const connectors = check("CreateMicrovmImageRequest", { ...validImage, egressNetworkConnectors: ["A", "B"] });
    assert.match(connectors[0]!, /egressNetworkConnectors.*less than or equal to 1/);
  });

  it("rejects unknown members, naming them", () => {
    assert.match(check("CreateMicrovmImageRequest", { ...validImage, nmae: "x" })[0]!, /'nmae' .*not a field/);
    assert.match(check("CreateMicrovmImageRequest", { ...validImage, hooks: { prot: 1 } })[0]!, /'hooks.prot'/);
  });

  it("enforces the project's decisions on token expiry and the run hook payload", () => {
    assert.match(check("CreateMicrovmAuthTokenRequest", { microvmIdentifier: "m", allowedPorts: [{ port: 8080 }], expirationInMinutes: 61 })[0]!, /less than or equal to 60/);
    assert.match(check("RunMicrovmRequest", { imageIdentifier: "a", runHookPayload: "x".repeat(4097) })[0]!, /4096/);
  });

  it("summarizes as AWS services do", () => {
    assert.equal(validationSummary(["a"]), "1 validation error detected: a");
    assert.equal(validationSummary(["a", "b"]), "2 validation errors detected: a; b");
  });
});

describe("request parsing", () => {
  const op = (name: string) => model.operations[name]!;

  it("reads labels, query strings and the body from where the model puts them", () => {
    const parsed = parseInput(model, op("ListMicrovmImageBuilds"), {
      labels: { imageIdentifier: "app", imageVersion: "2" },
      query: parseQueryString("architecture=X86_64&maxResults=7"),
      headers: {},
      body: Buffer.alloc(0),
    });
    assert.deepEqual(parsed.input, { imageIdentifier: "app", imageVersion: "2", architecture: "X86_64", maxResults: 7 });
  });

  it("keeps a non-numeric query integer as text so validation names it", () => {
    const parsed = parseInput(model, op("ListMicrovmImages"), { labels: {}, query: parseQueryString("maxResults=ten"), headers: {}, body: Buffer.alloc(0) });
    assert.match(validator.validateMembers("ListMicrovmImagesRequest", parsed.input, "")[0]!, /'maxResults' .*integer/);
  });

  it("reads repeated query parameters as a list, without turning '+' into a space", () => {
    assert.deepEqual(parseQueryString("tagKeys=a&tagKeys=b%20c&tagKeys=d+e").get("tagKeys"), ["a", "b c", "d+e"]);
  });

  it("reports malformed JSON, a non-object body and body members that shadow labels", () => {
    const parse = (body: string) =>
      parseInput(model, op("UpdateMicrovmImage"), { labels: { imageIdentifier: "app" }, query: new Map(), headers: {}, body: Buffer.from(body) });
    assert.match(parse("{").malformed!, /not valid JSON/);
    assert.match(parse("[1]").malformed!, /JSON object/);
    const shadow = parse(JSON.stringify({ imageIdentifier: "other" }));
    assert.equal(shadow.input.imageIdentifier, "app");
    assert.match(shadow.violations[0]!, /'imageIdentifier' .*not a field/);
  });
});
