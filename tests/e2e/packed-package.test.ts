// End to end: the package as a user gets it. `npm pack` makes the tarball, a
// fresh Pulumi TypeScript project outside this clone installs it (from the
// npm cache where it can), declares a 1-VM cluster with the library and
// brings it up with the real engine; nothing of the clone is used but the
// engine's binaries.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import execa from "execa";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { createProjectStack, processesUnder, ProjectStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const PROGRAM = `import * as pulumi from "@pulumi/pulumi";
import { Environment, VirtualCluster, VmProfile } from "vse-provider";

const cfg = new pulumi.Config("vse");
const env = new Environment("packed-sum", {
  spec: { base: "busybox", job: { command: ["/bin/sh", "-c", "echo $((40+2))"], afterJob: "stay-up", timeoutSeconds: 120 } },
  cacheDir: cfg.get("cacheDir"),
});
const profile = new VmProfile("packed-small", { spec: { memory: "256MiB", vcpus: 1, machine: "pc", accel: "tcg" } });
const cluster = new VirtualCluster("packed", { environment: env, profile, nodes: 1, stateRoot: cfg.get("stateDir") });

export const vms = cluster.vms.map((vm) => ({ status: vm.status, output: vm.jobOutput }));
`;

let tmp: string;
let project: string;
let t: ProjectStack | undefined;

/** The version of a package installed in this clone, so the user's project gets the same ones (and finds them in the npm cache). */
function versionHere(name: string): string {
  return JSON.parse(fs.readFileSync(path.join(PROJECT_ROOT, "node_modules", name, "package.json"), "utf8")).version;
}

beforeAll(async () => {
  if (!fs.existsSync(path.join(PROJECT_ROOT, "dist", "provider", "index.js")))
    throw new Error("dist/ is missing: run `npm run setup` (it compiles the package)");
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "vse-packed-"));
  const { stdout } = await execa("npm", ["pack", "--pack-destination", tmp, "--json", "--loglevel=error"], { cwd: PROJECT_ROOT });
  const tarball = path.join(tmp, JSON.parse(stdout)[0].filename);

  project = path.join(tmp, "project");
  fs.mkdirSync(project);
  const write = (file: string, text: string) => fs.writeFileSync(path.join(project, file), text);
  write("Pulumi.yaml", "name: packed-user\nruntime:\n  name: nodejs\n  options:\n    typescript: true\nmain: index.ts\n");
  write(
    "package.json",
    JSON.stringify({
      name: "packed-user",
      private: true,
      dependencies: { "@pulumi/pulumi": versionHere("@pulumi/pulumi"), "vse-provider": `file:${tarball}` },
      devDependencies: { "ts-node": versionHere("ts-node"), typescript: versionHere("typescript"), "@types/node": versionHere("@types/node") },
    }),
  );
  write(
    "tsconfig.json",
    JSON.stringify({
      compilerOptions: { target: "ES2022", module: "commonjs", moduleResolution: "node", strict: true, esModuleInterop: true, skipLibCheck: true },
    }),
  );
  write("index.ts", PROGRAM);
  await execa("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: project });
  t = await createProjectStack(project);
});

afterAll(async () => {
  try {
    if (t) await t.cleanup();
  } finally {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test("the installed package is a real copy with its templates, schemas, agent and CLI", () => {
  const installed = path.join(project, "node_modules", "vse-provider");
  expect(fs.lstatSync(installed).isSymbolicLink()).toBe(false);
  for (const f of [
    "dist/provider/index.js",
    "dist/provider/index.d.ts",
    "dist/provider/agent/main.js",
    "templates/qemu/vm.args.hbs",
    "schema/virtualcluster.schema.json",
  ]) {
    expect(fs.existsSync(path.join(installed, f))).toBe(true);
  }
  expect(fs.existsSync(path.join(project, "node_modules", ".bin", "vse"))).toBe(true);
});

test("pulumi up brings the user's 1-VM cluster up from the installed package and its job prints the sum", async () => {
  const res = await upAndCheckNoDiff(t!.stack);
  expect(res.summary.result).toBe("succeeded");
  expect(res.stdout).not.toMatch(/using pulumi-resource-pulumi-nodejs from \$PATH/);
  const vms = res.outputs.vms.value as { status: string; output: string | null }[];
  expect(vms).toEqual([{ status: "running", output: "42\n" }]);
  // The node agent runs from the installed package, not from this clone.
  const installed = path.join(project, "node_modules", "vse-provider") + path.sep;
  expect(processesUnder(t!.stateRoot).filter((p) => p.argv.some((a) => a.startsWith(installed))).length).toBeGreaterThan(0);
  expect(processesUnder(t!.stateRoot).filter((p) => p.argv.some((a) => a.startsWith(PROJECT_ROOT + path.sep)))).toEqual([]);
});

test("preview right after up reports no changes", async () => {
  const res = await t!.stack.preview();
  expect(Object.keys(res.changeSummary)).toEqual(["same"]);
});

test("destroy leaves no QEMU or agent process behind", async () => {
  const res = await t!.stack.destroy();
  expect(res.summary.result).toBe("succeeded");
  expect(processesUnder(t!.stateRoot)).toEqual([]);
});
