// Every file in examples/ is checked here: definitions validate and render,
// the TypeScript program type-checks against the library and runs (under
// Pulumi's mocks), and project, package and CI files are what they claim.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import * as ts from "typescript";
import { parse, parseAllDocuments } from "yaml";
import { main } from "../provider/cli/vse";
import { DefinitionError } from "../provider/model/errors";

const ROOT = path.resolve(__dirname, "..");
const EXAMPLES = path.join(ROOT, "examples");

/** The examples' own files: not their installed dependencies (node_modules) nor stack settings (Pulumi.<stack>.yaml, git-ignored). */
function walk(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.name !== "node_modules" && !/^Pulumi\..+\.yaml$/.test(e.name))
    .flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]))
    .sort();
}

const ALL = walk(EXAMPLES).map((f) => path.relative(EXAMPLES, f));
const isDefinition = (f: string) => /\.ya?ml$/.test(f) && path.basename(f) !== "Pulumi.yaml" && !f.split(path.sep).includes(".github");
/** The definition sets: each example's definition files, validated and rendered together (they refer to each other). */
const SETS = [...new Set(ALL.filter(isDefinition).map((f) => f.split(path.sep)[0]))].map((example) => ({
  example,
  files: ALL.filter((f) => isDefinition(f) && f.split(path.sep)[0] === example),
}));
const checked = new Set<string>();

async function vse(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(argv, { cwd: EXAMPLES, stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) });
  return { code, stdout, stderr };
}

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-examples-"));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe("YAML definitions", () => {
  test("there are definition sets to check", () => {
    expect(SETS.map((s) => s.example)).toEqual(expect.arrayContaining(["gitops", "local-cluster"]));
  });

  test.each(SETS)("$example: every definition file validates and renders", async ({ example, files }) => {
    const v = await vse("validate", ...files);
    expect(v.stderr).toBe("");
    expect(v.code).toBe(0);
    // accel 'auto' is rendered as tcg: the test must not boot QEMU to probe KVM.
    const out = path.join(tmp, example);
    const r = await vse("render", ...files, "--out", out, "--cache-dir", path.join(tmp, "cache"), "--accel-auto", "tcg");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const configs = walk(out).filter((f) => f.endsWith(".conf"));
    expect(configs.length).toBeGreaterThan(0);
    for (const c of configs) expect(fs.readFileSync(c, "utf8")).toMatch(/\S/);
    // The effective definitions are themselves valid.
    expect((await vse("validate", path.join(out, "effective.yaml"))).code).toBe(0);
    for (const f of files) checked.add(f);
  });

  test("gitops: the whole repository validates as one directory (Pulumi project files and .github are not definitions)", async () => {
    expect(await vse("validate", "gitops")).toEqual({ code: 0, stdout: "6 definitions valid (2 clusters, 5 VMs)\n", stderr: "" });
  });

  test("gitops: the site policy is merged into the effective definitions", async () => {
    const r = await vse(
      "render",
      "gitops/definitions",
      "gitops/policy",
      "--out",
      path.join(tmp, "policy"),
      "--accel-auto",
      "tcg",
      "--cache-dir",
      path.join(tmp, "cache"),
    );
    expect(r.code).toBe(0);
    const docs = parseAllDocuments(fs.readFileSync(path.join(tmp, "policy", "effective.yaml"), "utf8")).map((d) => d.toJS());
    const md = docs.find((d) => d.metadata.name === "md-sim");
    expect(md.spec).toMatchObject({ nodes: 4, overrides: [{ vm: 0, memory: "512MiB" }] });
    expect(docs.find((d) => d.metadata.name === "mpi-sum").spec.job.timeoutSeconds).toBe(120);
    // Without the policy, a profile above its limit is accepted; with it, rejected at the offending field.
    const big = path.join(tmp, "big.yaml");
    fs.writeFileSync(big, "apiVersion: vse.dev/v1\nkind: VmProfile\nmetadata: { name: huge }\nspec:\n  memory: 8GiB\n");
    fs.writeFileSync(
      path.join(tmp, "big-cluster.yaml"),
      "apiVersion: vse.dev/v1\nkind: VirtualCluster\nmetadata: { name: big }\nspec: { environment: mpi-sum, profile: huge }\n",
    );
    const bad = await vse("validate", "gitops/definitions", "gitops/policy", big, path.join(tmp, "big-cluster.yaml"), "--format", "json");
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stdout)).toEqual([
      expect.objectContaining({
        file: big,
        line: 5,
        column: 3,
        field: "spec.memory",
        message: expect.stringContaining("rule spec.limits.maxMemory at gitops/policy/site-policy.yaml"),
      }),
    ]);
  });
});

describe("project, package and CI files", () => {
  test("gitops: the CI workflow validates, plans and previews on pull requests", () => {
    const f = path.join("gitops", ".github", "workflows", "vse.yaml");
    const wf = parse(fs.readFileSync(path.join(EXAMPLES, f), "utf8"));
    expect(Object.keys(wf.on)).toEqual(["pull_request"]);
    const steps = Object.values(wf.jobs as Record<string, { steps: { run?: string; uses?: string; with?: Record<string, unknown> }[] }>).flatMap(
      (j) => j.steps,
    );
    const runs = steps.map((s) => s.run ?? "").join("\n");
    expect(runs).toMatch(/npx vse validate definitions policy --format json/);
    expect(runs).toMatch(/npx vse plan --base "origin\/\$\{\{ github.base_ref \}\}" definitions policy --format markdown/);
    expect(steps.find((s) => s.uses?.startsWith("pulumi/actions@"))?.with).toMatchObject({ command: "preview" });
    expect(steps.find((s) => s.uses?.startsWith("actions/checkout@"))?.with).toMatchObject({ "fetch-depth": 0 });
    checked.add(f);
  });

  test("Pulumi projects name an existing program and definitions", () => {
    for (const f of ALL.filter((x) => path.basename(x) === "Pulumi.yaml")) {
      const p = parse(fs.readFileSync(path.join(EXAMPLES, f), "utf8"));
      expect(p.runtime.name).toBe("nodejs");
      const dir = path.join(EXAMPLES, path.dirname(f));
      // Programs from the installed package map to this repository's sources.
      const main = (p.main as string).replace("node_modules/vse-provider/dist/", "").replace(/\.js$/, ".ts");
      expect(fs.existsSync(path.join(dir, main)) || fs.existsSync(path.join(ROOT, main))).toBe(true);
      const defs = p.config?.["vse:definitions"]?.default as string | undefined;
      for (const d of defs?.split(",") ?? []) expect(fs.existsSync(path.join(dir, d))).toBe(true);
      checked.add(f);
    }
  });

  test("package.json and tsconfig.json files parse and depend on this package", () => {
    for (const f of ALL.filter((x) => ["package.json", "tsconfig.json"].includes(path.basename(x)))) {
      const json = JSON.parse(fs.readFileSync(path.join(EXAMPLES, f), "utf8"));
      if (path.basename(f) === "package.json") expect(json.dependencies["vse-provider"]).toBe("file:../..");
      else expect(json.compilerOptions.strict).toBe(true);
      checked.add(f);
    }
  });
});

describe("the TypeScript example", () => {
  const file = path.join(EXAMPLES, "typescript", "index.ts");
  const source = fs.readFileSync(file, "utf8");

  test("type-checks against the library's exports", () => {
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      esModuleInterop: true,
      skipLibCheck: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.CommonJS,
      moduleResolution: ts.ModuleResolutionKind.Node10,
      resolveJsonModule: true,
      baseUrl: ROOT,
      paths: { "vse-provider": ["provider/index.ts"] },
      types: ["node"],
    });
    const diagnostics = ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n"));
    expect(diagnostics).toEqual([]);
  });

  const resources: pulumi.runtime.MockResourceArgs[] = [];
  beforeAll(() => {
    pulumi.runtime.setMocks(
      {
        newResource(args) {
          resources.push(args);
          const state = { ...args.inputs };
          // A VirtualCluster's outputs: one agent per host and the cluster's token.
          if (typeof args.inputs.hosts === "number" && args.inputs.stateRoot) {
            state.agents = Array.from({ length: args.inputs.hosts }, (_, h) => ({ url: `http://127.0.0.1:${7000 + h}`, healthy: true }));
            state.token = "mock-token";
          }
          return { id: `${args.name}-id`, state };
        },
        call: (args) => args.inputs,
      },
      "vse-typescript",
      "test",
      false,
    );
  });

  /** Runs the program's source with "vse-provider" resolved to this repository; returns its exports. */
  function run(text: string): Record<string, unknown> {
    const js = ts.transpileModule(text, {
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    }).outputText;
    const lib = require("../provider/index");
    const mod = { exports: {} as Record<string, unknown> };
    const req = (id: string) => (id === "vse-provider" ? lib : require(id));
    new Function("exports", "require", "module", "__filename", "__dirname", js)(mod.exports, req, mod, file, path.dirname(file));
    return mod.exports;
  }

  test("declares the cluster's resources with rendered configs", async () => {
    const exports = run(source);
    const configs = await new Promise<string[]>((resolve) => pulumi.all(exports.configs as pulumi.Output<string>[]).apply(resolve));
    expect(configs).toHaveLength(2);
    expect(configs[0]).toMatch(/ts-cluster-0/);
    expect(configs[0]).toMatch(/256M/);
    expect(configs[1]).toMatch(/384M/);
    const names = resources.map((r) => r.name);
    expect(names).toEqual(expect.arrayContaining(["ts-sum", "ts-small", "ts-cluster", "ts-cluster-0", "ts-cluster-1"]));
    const vm1 = resources.find((r) => r.name === "ts-cluster-1" && r.inputs.vmName)!;
    expect(vm1.inputs).toMatchObject({ cluster: "ts-cluster", host: 1, memoryMiB: 384, accel: "tcg", agentUrl: "http://127.0.0.1:7001" });
    checked.add(path.relative(EXAMPLES, file));
  });

  test("validates like YAML: a bad unit and a policy violation name the object and field", () => {
    expect(() => run(source.replace('"384MiB"', '"4XB"'))).toThrow(DefinitionError);
    expect(() => run(source.replace('"384MiB"', '"4XB"'))).toThrow(/VirtualCluster "ts-cluster":1:1: spec\.overrides\.0\.memory: expected a memory size/);
    expect(() => run(source.replace('"384MiB"', '"2GiB"'))).toThrow(/rule spec\.limits\.maxMemory/);
    expect(() => run(source.replace("vcpus: 1,", "cpus: 1,"))).toThrow(/VmProfile "ts-small":1:1: spec\.cpus: unknown field "cpus"/);
  });
});

// Defined last, so it runs after every other test here: a file added to examples/ without a check fails.
test("every file in examples/ was checked", () => {
  expect(ALL.filter((f) => !checked.has(f))).toEqual([]);
});
