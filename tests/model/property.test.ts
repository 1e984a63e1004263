import * as fs from "fs";
import * as path from "path";
import fc from "fast-check";
import { parseAllDocuments, stringify } from "yaml";
import { DefinitionError } from "../../provider/model/errors";
import { Definitions, loadText } from "../../provider/model/load";
import { resolveClusters } from "../../provider/model/resolve";

const EXAMPLE = fs.readFileSync(path.resolve(__dirname, "..", "..", "examples", "local-cluster", "cluster.yaml"), "utf8");
const EXAMPLE_DOCS = parseAllDocuments(EXAMPLE).map((d) => d.toJS() as Record<string, unknown>);
const KINDS = ["Environment", "VmProfile", "VirtualCluster", "SitePolicy"];
/** Per input; the loader refuses anything slow to parse long before this. */
const MAX_MS = 2000;

/**
 * Loads and resolves text. Returns "ok" or the DefinitionError; any other
 * exception propagates and fails the property. Asserts the time bound and
 * that every problem has a usable location.
 */
function check(text: string): "ok" | DefinitionError {
  const t0 = Date.now();
  const defs: Definitions = { environments: new Map(), profiles: new Map(), clusters: new Map(), policies: new Map() };
  const problems: import("../../provider/model/errors").DefinitionProblem[] = [];
  let result: "ok" | DefinitionError;
  loadText(text, "fuzz.yaml", defs, problems);
  if (problems.length) {
    result = new DefinitionError(problems);
  } else {
    try {
      resolveClusters(defs, { kernelRelease: () => "6.1.0-56-amd64" });
      result = "ok";
    } catch (err) {
      if (!(err instanceof DefinitionError)) throw err;
      result = err;
    }
  }
  const ms = Date.now() - t0;
  if (ms > MAX_MS) throw new Error(`took ${ms} ms for ${JSON.stringify(text.slice(0, 200))}`);
  if (result !== "ok") {
    for (const p of result.problems) {
      if (!(p.line >= 1 && p.column >= 1 && typeof p.message === "string" && p.message.length > 0 && p.file === "fuzz.yaml")) {
        throw new Error(`badly located problem ${JSON.stringify(p)}`);
      }
    }
  }
  return result;
}

const SETTINGS = { numRuns: 300, seed: 4242 };

const yamlish = fc.string({ unit: fc.constantFrom(..."abc:-[]{}&*!|>'\"#%@`,? \n\t0123456789.~".split("")), maxLength: 300 });

/** A JSON-like value, biased towards what definitions contain. */
const value = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.constantFrom("256MiB", "4XB", "2G", "-1", "qemu", "tcg", "auto", "busybox", "compute-small", "busybox-sum", "", "0", 0, -1, 1e9, 1.5, true, null),
  fc.array(fc.string({ maxLength: 8 }), { maxLength: 4 }),
);

describe("random input only ever yields DefinitionError", () => {
  test("random text", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 500 }), (text) => {
        check(text);
      }),
      SETTINGS,
    );
  });

  test("random YAML-like text", () => {
    fc.assert(
      fc.property(yamlish, (text) => {
        check(text);
      }),
      SETTINGS,
    );
  });

  test("random documents of every kind", () => {
    const doc = fc.record(
      {
        apiVersion: fc.oneof(fc.constant("vse.dev/v1"), value),
        kind: fc.oneof(fc.constantFrom(...KINDS), value),
        metadata: fc.oneof(fc.record({ name: fc.oneof(fc.constantFrom("a", "compute-small", "busybox-sum"), value) }), value),
        spec: fc.oneof(fc.dictionary(fc.constantFrom("memory", "vcpus", "nodes", "job", "environment", "profile", "limits", "defaults", "x"), value), value),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.array(doc, { minLength: 1, maxLength: 4 }), (docs) => {
        check(docs.map((d) => stringify(d)).join("---\n"));
      }),
      SETTINGS,
    );
  });
});

/** Paths to every value in a JSON tree. */
function paths(v: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [prefix];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...prefix, i])));
  else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...prefix, k]));
  return out;
}

function mutate(root: unknown, p: (string | number)[], op: "set" | "delete" | "add", v: unknown): unknown {
  if (!p.length) return op === "set" ? v : root;
  if (!root || typeof root !== "object") return root;
  const copy = structuredClone(root) as Record<string | number, unknown>;
  let node = copy;
  for (const seg of p.slice(0, -1)) {
    // An earlier mutation may have removed or replaced the path.
    if (!node[seg] || typeof node[seg] !== "object") return copy;
    node = node[seg] as Record<string | number, unknown>;
  }
  const last = p[p.length - 1];
  if (op === "set") node[last] = v;
  else if (op === "delete") {
    if (Array.isArray(node)) node.splice(last as number, 1);
    else delete node[last];
  } else if (node[last] && typeof node[last] === "object" && !Array.isArray(node[last])) (node[last] as Record<string, unknown>)["extra"] = v;
  else node[last] = [node[last], v];
  return copy;
}

describe("mutations of the valid example only ever yield DefinitionError", () => {
  test("the unmutated example is valid", () => {
    expect(check(EXAMPLE)).toBe("ok");
  });

  test("value mutations", () => {
    const allPaths = EXAMPLE_DOCS.map((d) => paths(d));
    const mutation = fc
      .nat({ max: EXAMPLE_DOCS.length - 1 })
      .chain((i) =>
        fc.tuple(fc.constant(i), fc.constantFrom(...allPaths[i]), fc.constantFrom("set", "delete", "add") as fc.Arbitrary<"set" | "delete" | "add">, value),
      );
    let rejected = 0;
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 3 }), (muts) => {
        const docs: unknown[] = structuredClone(EXAMPLE_DOCS);
        for (const [i, p, op, v] of muts) docs[i] = mutate(docs[i], p, op, v);
        if (check(docs.map((d) => stringify(d)).join("---\n")) !== "ok") rejected++;
      }),
      SETTINGS,
    );
    // The mutations must reach the validator, not only produce valid variants.
    expect(rejected).toBeGreaterThan(SETTINGS.numRuns / 4);
  });

  test("text mutations: deletions, insertions and duplicated lines", () => {
    const edit = fc.oneof(
      fc.tuple(fc.constant("delete" as const), fc.nat({ max: EXAMPLE.length }), fc.nat({ max: 40 }), fc.constant("")),
      fc.tuple(fc.constant("insert" as const), fc.nat({ max: EXAMPLE.length }), fc.constant(0), fc.oneof(yamlish, fc.string({ maxLength: 20 }))),
      fc.tuple(fc.constant("dupline" as const), fc.nat({ max: 60 }), fc.constant(0), fc.constant("")),
    );
    fc.assert(
      fc.property(fc.array(edit, { minLength: 1, maxLength: 4 }), (edits) => {
        let text = EXAMPLE;
        for (const [op, at, len, s] of edits) {
          if (op === "delete") text = text.slice(0, at) + text.slice(at + len);
          else if (op === "insert") text = text.slice(0, at) + s + text.slice(at);
          else {
            const lines = text.split("\n");
            const i = at % lines.length;
            lines.splice(i, 0, lines[i]);
            text = lines.join("\n");
          }
        }
        check(text);
      }),
      SETTINGS,
    );
  });
});
