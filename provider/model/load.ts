import * as fs from "fs";
import * as path from "path";
import Ajv, { ErrorObject, ValidateFunction } from "ajv";
import { Document, LineCounter, isMap, isPair, isScalar, isSeq, parseAllDocuments, Node, visit } from "yaml";
import { DefinitionError, DefinitionProblem } from "./errors";
import type { Environment, SitePolicy, VirtualCluster, VmProfile } from "./types.generated";
import { MAX_AGENT_MEMORY_MIB, MAX_MEMORY_MIB, MIN_MEMORY_MIB, parseMemoryInRange } from "./units";

export const API_VERSION = "vse.dev/v1";
/** Definitions are small; anything larger is refused before it is parsed. */
export const MAX_FILE_BYTES = 1024 * 1024;
/** Caps alias expansion so that a "billion laughs" document fails fast. */
const MAX_ALIAS_COUNT = 100;

const KINDS = {
  Environment: "environment.schema.json",
  VmProfile: "vmprofile.schema.json",
  VirtualCluster: "virtualcluster.schema.json",
  SitePolicy: "sitepolicy.schema.json",
} as const;
export type Kind = keyof typeof KINDS;

/** A validated document and a way to point at any of its fields. */
export interface Located<T> {
  doc: T;
  file: string;
  /** Line and column of a field (path segments), or of the document when absent. */
  at(fieldPath: (string | number)[]): { line: number; column: number };
}

export interface Definitions {
  environments: Map<string, Located<Environment>>;
  profiles: Map<string, Located<VmProfile>>;
  clusters: Map<string, Located<VirtualCluster>>;
  /** Site policies written by administrators; optional so that hand-built Definitions stay valid. */
  policies?: Map<string, Located<SitePolicy>>;
}

const SCHEMA_DIR = path.resolve(__dirname, "..", "..", "..", "schema");
const SCHEMA_DIR_SRC = path.resolve(__dirname, "..", "..", "schema");

function schemaDir(): string {
  // Compiled code lives in dist/provider/model, sources in provider/model.
  return fs.existsSync(SCHEMA_DIR) ? SCHEMA_DIR : SCHEMA_DIR_SRC;
}

let validators: Map<Kind, ValidateFunction> | undefined;
function getValidators(): Map<Kind, ValidateFunction> {
  if (validators) return validators;
  // verbose: errors carry the offending value, so messages can say what was found.
  const ajv = new Ajv({ allErrors: true, strict: false, verbose: true });
  const dir = schemaDir();
  for (const file of fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(".schema.json"))
    .sort()) {
    ajv.addSchema(JSON.parse(fs.readFileSync(path.join(dir, file), "utf8")), file);
  }
  validators = new Map();
  for (const [kind, file] of Object.entries(KINDS) as [Kind, string][]) {
    validators.set(kind, ajv.getSchema(file)!);
  }
  return validators;
}

/** Pulumi.yaml and Pulumi.<stack>.yaml often sit next to definitions (a definitions repository is a Pulumi project); they are not definitions. */
export function isPulumiProjectFile(name: string): boolean {
  return /^Pulumi(\.[^.]+)?\.ya?ml$/.test(name);
}

/** Lists the YAML files named by paths (files, or directories searched recursively), sorted. */
export function collectFiles(paths: string[]): string[] {
  const out: string[] = [];
  const walk = (p: string) => {
    const st = fs.statSync(p);
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(p).sort()) {
        if (e.startsWith(".") || e === "node_modules" || isPulumiProjectFile(e)) continue;
        const child = path.join(p, e);
        if (fs.statSync(child).isDirectory() || /\.ya?ml$/.test(e)) walk(child);
      }
    } else {
      out.push(p);
    }
  };
  for (const p of paths) {
    if (!fs.existsSync(p)) throw new DefinitionError([{ file: p, line: 1, column: 1, field: "", message: "no such file or directory" }]);
    walk(p);
  }
  return out;
}

/** Loads and validates every definition in paths; throws DefinitionError listing all problems. */
export function loadDefinitions(paths: string[]): Definitions {
  const defs: Definitions = { environments: new Map(), profiles: new Map(), clusters: new Map(), policies: new Map() };
  const problems: DefinitionProblem[] = [];
  for (const file of collectFiles(paths)) {
    const size = fs.statSync(file).size;
    if (size > MAX_FILE_BYTES) {
      problems.push({ file, line: 1, column: 1, field: "", message: `file is ${size} bytes; definitions are limited to ${MAX_FILE_BYTES} bytes` });
      continue;
    }
    loadText(fs.readFileSync(file, "utf8"), file, defs, problems);
  }
  if (problems.length) throw new DefinitionError(problems);
  return defs;
}

/** Deeper nesting than any definition needs; the yaml parser's recursion is refused well before it overflows. */
export const MAX_NESTING = 64;

/**
 * Finds nesting deeper than MAX_NESTING (flow brackets, compact "- - -" sequences,
 * deep indentation) without parsing, since deep input makes the parser recurse
 * until the stack or the heap gives out. Quoted text and comments are skipped.
 */
export function findExcessiveNesting(text: string): { line: number; column: number; message: string } | undefined {
  let depth = 0;
  let line = 1;
  let lineStart = 0;
  let dashes = 0;
  let indent = true;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    const column = i - lineStart + 1;
    if (c === "\n") {
      line++;
      lineStart = i + 1;
      dashes = 0;
      indent = true;
      continue;
    }
    if (indent && c === " ") {
      if (column > MAX_NESTING * 8)
        return { line, column, message: `indentation deeper than ${MAX_NESTING * 8} columns; definitions are never nested this deep` };
      continue;
    }
    if (c === "-" && (text[i + 1] === " " || text[i + 1] === "\n") && (indent || text[i - 1] === " ")) {
      if (++dashes > MAX_NESTING)
        return { line, column, message: `more than ${MAX_NESTING} nested sequences on one line; definitions are never nested this deep` };
      continue;
    }
    indent = false;
    if (c === "#" && (i === 0 || /\s/.test(text[i - 1]))) {
      const end = text.indexOf("\n", i);
      i = (end < 0 ? text.length : end) - 1;
    } else if ((c === '"' || c === "'") && (i === 0 || /[\s,[{:]/.test(text[i - 1]))) {
      // A quoted scalar ends at its unescaped closing quote ('' escapes ' in single quotes).
      let j = i + 1;
      for (; j < text.length; j++) {
        if (c === '"' && text[j] === "\\") j++;
        else if (text[j] === c && !(c === "'" && text[j + 1] === "'")) break;
        else if (c === "'" && text[j] === "'") j++;
      }
      for (let k = i + 1; k < j && k < text.length; k++) {
        if (text[k] === "\n") {
          line++;
          lineStart = k + 1;
        }
      }
      i = j;
    } else if (c === "[" || c === "{") {
      if (++depth > MAX_NESTING)
        return { line, column, message: `more than ${MAX_NESTING} nested [ ] or { } collections; definitions are never nested this deep` };
    } else if ((c === "]" || c === "}") && depth > 0) {
      depth--;
    }
  }
  return undefined;
}

/** Parses one file's text into defs; problems are appended, never thrown. */
export function loadText(text: string, file: string, defs: Definitions, problems: DefinitionProblem[]): void {
  if (text.length > MAX_FILE_BYTES) {
    problems.push({
      file,
      line: 1,
      column: 1,
      field: "",
      message: `document is ${text.length} characters; definitions are limited to ${MAX_FILE_BYTES} bytes`,
    });
    return;
  }
  const deep = findExcessiveNesting(text);
  if (deep) {
    problems.push({ file, line: deep.line, column: deep.column, field: "", message: `cannot parse YAML: ${deep.message}` });
    return;
  }
  const lineCounter = new LineCounter();
  let docs: Document.Parsed[];
  try {
    docs = parseAllDocuments(text, { lineCounter, uniqueKeys: true, prettyErrors: false }) as Document.Parsed[];
  } catch (err) {
    problems.push({ file, line: 1, column: 1, field: "", message: `cannot parse YAML: ${(err as Error).message}` });
    return;
  }
  if (!Array.isArray(docs)) docs = [docs as unknown as Document.Parsed];
  for (const doc of docs) {
    const pos = (offset: number) => {
      const p = lineCounter.linePos(offset);
      return { line: p.line, column: p.col };
    };
    if (doc.errors.length) {
      for (const e of doc.errors) {
        problems.push({ file, ...pos(e.pos[0]), field: "", message: `invalid YAML: ${e.message.split("\n")[0]}` });
      }
      continue;
    }
    const at = (fieldPath: (string | number)[]) => pos(nodeOffset(doc, fieldPath));
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
    } catch (err) {
      const text = (err as Error).message;
      if (/alias count/i.test(text)) {
        problems.push({
          file,
          ...at([]),
          field: "",
          message: `cannot read document: its aliases expand to more than ${MAX_ALIAS_COUNT} copies; refused as a possible "billion laughs" attack`,
        });
      } else {
        const alias = unresolvedAlias(doc);
        problems.push({
          file,
          ...(alias ? pos(alias.offset) : at([])),
          field: "",
          message: alias ? `unknown alias *${alias.name}: no anchor &${alias.name} is defined before it` : `cannot read document: ${text}`,
        });
      }
      continue;
    }
    if (value === null || value === undefined) continue; // empty document, e.g. a trailing '---'
    addDocument(value, file, at, defs, problems);
  }
}

/**
 * Validates an already-parsed definition (e.g. built in a TypeScript program)
 * exactly as a YAML document is validated; source names it in problems.
 */
export function loadObject(value: unknown, source: string, defs: Definitions, problems: DefinitionProblem[]): void {
  addDocument(structuredClone(value), source, () => ({ line: 1, column: 1 }), defs, problems);
}

function found(value: unknown): string {
  return value === undefined ? "nothing" : JSON.stringify(value);
}

/** Checks one document (version, kind, schema, unique name) and adds it to defs. */
function addDocument(
  value: unknown,
  file: string,
  at: (fieldPath: (string | number)[]) => { line: number; column: number },
  defs: Definitions,
  problems: DefinitionProblem[],
): void {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    problems.push({ file, ...at([]), field: "", message: "expected a mapping with apiVersion, kind, metadata and spec" });
    return;
  }
  const obj = value as Record<string, unknown>;
  if (obj.apiVersion !== API_VERSION) {
    problems.push({ file, ...at(["apiVersion"]), field: "apiVersion", message: `expected "${API_VERSION}", found ${found(obj.apiVersion)}` });
    return;
  }
  const kind = obj.kind;
  if (typeof kind !== "string" || !(kind in KINDS)) {
    problems.push({
      file,
      ...at(["kind"]),
      field: "kind",
      message: `expected one of ${Object.keys(KINDS).join(", ")}, found ${found(kind)}`,
    });
    return;
  }
  const validate = getValidators().get(kind as Kind)!;
  if (!validate(obj)) {
    for (const p of describeAjvErrors(validate.errors ?? [])) {
      problems.push({ file, ...at(p.path), field: p.path.join("."), message: p.message });
    }
    return;
  }
  const outOfBounds = quantityProblems(kind as Kind, obj);
  if (outOfBounds.length) {
    for (const p of outOfBounds) problems.push({ file, ...at(p.path), field: p.path.join("."), message: p.message });
    return;
  }
  const located: Located<unknown> = { doc: obj, file, at };
  const name = (obj.metadata as { name: string }).name;
  const tables: Record<Kind, Map<string, Located<unknown>>> = {
    Environment: defs.environments as Map<string, Located<unknown>>,
    VmProfile: defs.profiles as Map<string, Located<unknown>>,
    VirtualCluster: defs.clusters as Map<string, Located<unknown>>,
    SitePolicy: (defs.policies ??= new Map()) as Map<string, Located<unknown>>,
  };
  const table = tables[kind as Kind];
  const prior = table.get(name);
  if (prior) {
    const p = prior.at(["metadata", "name"]);
    problems.push({
      file,
      ...at(["metadata", "name"]),
      field: "metadata.name",
      message: `duplicate ${kind} name "${name}" (first defined at ${prior.file}:${p.line}:${p.column})`,
    });
    return;
  }
  table.set(name, located);
}

type MemoryValue = number | string | undefined;

/**
 * Bounds the schema cannot express: memory sizes carry units ("10TiB"), so their range
 * is checked here, in every kind and whether or not a VM uses the definition (an unused
 * VmProfile, a policy default or limit), so that no size beyond any machine is accepted.
 * Every other quantity (vCPUs, nodes, hosts, timeouts, per-agent VMs) has its maximum in the schema.
 */
export function quantityProblems(kind: Kind, doc: unknown): PathMessage[] {
  const fields: { path: (string | number)[]; value: MemoryValue; max: number }[] = [];
  const perVm = (path: (string | number)[], value: MemoryValue) => fields.push({ path, value, max: MAX_MEMORY_MIB });
  switch (kind) {
    case "VmProfile":
      perVm(["spec", "memory"], (doc as VmProfile).spec?.memory);
      break;
    case "VirtualCluster":
      ((doc as VirtualCluster).spec.overrides ?? []).forEach((o, i) => perVm(["spec", "overrides", i, "memory"], o.memory));
      break;
    case "SitePolicy": {
      const spec = (doc as SitePolicy).spec ?? {};
      perVm(["spec", "defaults", "profile", "memory"], spec.defaults?.profile?.memory);
      perVm(["spec", "limits", "maxMemory"], spec.limits?.maxMemory);
      fields.push({ path: ["spec", "limits", "maxMemoryPerAgent"], value: spec.limits?.maxMemoryPerAgent, max: MAX_AGENT_MEMORY_MIB });
      break;
    }
    case "Environment":
      break;
  }
  const out: PathMessage[] = [];
  for (const f of fields) {
    if (f.value === undefined) continue;
    try {
      parseMemoryInRange(f.value, MIN_MEMORY_MIB, f.max);
    } catch (err) {
      out.push({ path: f.path, message: (err as Error).message });
    }
  }
  return out;
}

/** The first alias whose anchor is not defined before it, if any. */
function unresolvedAlias(doc: Document): { name: string; offset: number } | undefined {
  let found: { name: string; offset: number } | undefined;
  visit(doc, {
    Alias(_, node) {
      if (node.resolve(doc) !== undefined) return undefined;
      found = { name: node.source, offset: node.range?.[0] ?? 0 };
      return visit.BREAK;
    },
  });
  return found;
}

/** Offset of the deepest existing node on fieldPath (a missing field points at its parent). */
function nodeOffset(doc: Document, fieldPath: (string | number)[]): number {
  let node: unknown = doc.contents;
  let offset = (doc.contents as Node | null)?.range?.[0] ?? 0;
  for (const seg of fieldPath) {
    if (isMap(node)) {
      const pair = node.items.find((it) => isPair(it) && isScalar(it.key) && String(it.key.value) === String(seg));
      if (!pair) break;
      offset = (pair.key as Node).range?.[0] ?? offset;
      node = pair.value;
    } else if (isSeq(node) && typeof seg === "number" && node.items[seg]) {
      node = node.items[seg];
      offset = (node as Node).range?.[0] ?? offset;
    } else {
      break;
    }
  }
  return offset;
}

interface PathMessage {
  path: (string | number)[];
  message: string;
}

function pointerToPath(pointer: string): (string | number)[] {
  if (!pointer) return [];
  return pointer
    .slice(1)
    .split("/")
    .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"))
    .map((s) => (/^[0-9]+$/.test(s) ? Number(s) : s));
}

const MEMORY_ONEOF = /\/Memory\/oneOf$/;
type Branch = { type?: string };

function branchTypes(e: ErrorObject): string[] {
  return ((e.schema as Branch[]) ?? []).map((b) => (b.type === "array" ? "a list" : b.type === "integer" ? "a whole number" : `a ${b.type ?? "value"}`));
}

/** For a oneOf (other than memory sizes) whose branches each have their own type: the index of the branch of the value's type. */
function typedBranch(e: ErrorObject): number | undefined {
  if (MEMORY_ONEOF.test(e.schemaPath) || !Array.isArray(e.schema)) return undefined;
  const d = e.data;
  const typeOf = Array.isArray(d) ? "array" : Number.isInteger(d) ? "integer" : typeof d;
  const i = (e.schema as Branch[]).findIndex((b) => b.type === typeOf || (b.type === "number" && typeOf === "integer"));
  return i >= 0 ? i : undefined;
}

/** Turns ajv's errors into one message per field, saying what was expected and what was found. */
export function describeAjvErrors(errors: ErrorObject[]): PathMessage[] {
  // A oneOf whose branches differ by type (allocation.hosts: a number or a list) is judged by the branch of the value's type.
  const byBranch = new Set(errors.filter((e) => e.keyword === "oneOf" && typedBranch(e) !== undefined));
  const branchPrefixes = [...byBranch].map((e) => `${e.schemaPath}/${typedBranch(e)}/`);
  errors = errors.filter(
    (e) =>
      !byBranch.has(e) &&
      !(
        e.schemaPath.includes("/oneOf/") &&
        errors.some((o) => o.keyword === "oneOf" && e.schemaPath.startsWith(`${o.schemaPath}/`)) &&
        !branchPrefixes.some((b) => e.schemaPath.startsWith(b))
      ),
  );
  // A failed oneOf (memory sizes) also reports each branch; keep only the oneOf.
  const oneOfPaths = new Set(errors.filter((e) => e.keyword === "oneOf").map((e) => e.instancePath));
  // A bad key (propertyNames) is reported once, at the key, by the propertyNames error.
  const namePaths = new Set(errors.filter((e) => e.keyword === "propertyNames").map((e) => e.instancePath));
  const out: PathMessage[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    if (e.keyword !== "oneOf" && oneOfPaths.has(e.instancePath)) continue;
    if (e.keyword !== "propertyNames" && namePaths.has(e.instancePath) && e.schemaPath.includes("/propertyNames/")) continue;
    // A failed if/then (spec.debian required with base debian) is reported by the error inside "then".
    if (e.keyword === "if") continue;
    let p = pointerToPath(e.instancePath);
    let message: string;
    // JSON has no Infinity (YAML's .inf): say it, rather than "null".
    const found = typeof e.data === "number" && !Number.isFinite(e.data) ? String(e.data) : JSON.stringify(e.data);
    switch (e.keyword) {
      case "required":
        p = [...p, (e.params as { missingProperty: string }).missingProperty];
        // The location is the parent's (the field is absent), so the message names the field.
        message = `required field "${p[p.length - 1]}" is missing`;
        break;
      case "additionalProperties": {
        const extra = (e.params as { additionalProperty: string }).additionalProperty;
        p = [...p, extra];
        const allowed = Object.keys((e.parentSchema as { properties?: object }).properties ?? {});
        message = `unknown field "${extra}"; expected one of: ${allowed.join(", ")}`;
        break;
      }
      case "enum":
        message = `expected one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(", ")}, found ${found}`;
        break;
      case "const":
        message = `expected ${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)}, found ${found}`;
        break;
      case "type":
        message = `expected ${(e.params as { type: string }).type}, found ${found === undefined ? "nothing" : found}`;
        break;
      case "pattern": {
        const desc = (e.parentSchema as { description?: string }).description;
        message = `expected ${desc ? describeFormat(desc) : `a value matching ${(e.params as { pattern: string }).pattern}`}, found ${found}`;
        break;
      }
      case "propertyNames": {
        const name = (e.params as { propertyName: string }).propertyName;
        p = [...p, name];
        const desc = ((e.parentSchema as { propertyNames?: { description?: string } }).propertyNames ?? {}).description;
        message = `invalid name ${JSON.stringify(name)}; expected ${desc ? lowerFirst(desc) : "a valid name"}`;
        break;
      }
      case "oneOf":
        message = MEMORY_ONEOF.test(e.schemaPath)
          ? `expected a memory size such as 256 (MiB), "256MiB" or "2GiB", found ${found}`
          : `expected ${branchTypes(e).join(" or ")}, found ${found}`;
        break;
      case "minimum":
      case "maximum":
      case "exclusiveMinimum":
      case "exclusiveMaximum":
        message = `expected a number ${e.keyword.includes("inimum") ? ">=" : "<="} ${(e.params as { limit: number }).limit}, found ${found}`;
        break;
      case "minItems":
      case "maxItems":
      case "minLength":
      case "maxLength":
        message = `expected ${e.keyword.startsWith("min") ? "at least" : "at most"} ${(e.params as { limit: number }).limit} ${e.keyword.endsWith("Items") ? "items" : "characters"}`;
        break;
      case "false schema":
        // The only false schema: spec.debian when spec.base is not "debian" (it would be ignored).
        message = `not allowed here (only with base "debian"), found ${found}`;
        break;
      default:
        message = `${e.message ?? "is invalid"}`;
    }
    const key = `${p.join(".")}|${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ path: p, message });
  }
  return out;
}

/** "A thing: its rules. More text." → "a thing (its rules)": the first sentence, as an expectation. */
function describeFormat(desc: string): string {
  const sentence = desc.split(/\.(\s|$)/)[0];
  const i = sentence.indexOf(": ");
  return lowerFirst(i < 0 ? sentence : `${sentence.slice(0, i)} (${sentence.slice(i + 2)})`);
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}
