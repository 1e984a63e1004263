// End to end: examples/typescript, a Pulumi program written in TypeScript
// (Pulumi.yaml main: index.ts), brought up by the real engine as it is
// written. Nothing compiles it first: the language host runs it through
// ts-node with the example's tsconfig.json.
import * as fs from "fs";
import * as path from "path";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { createProjectStack, processesUnder, ProjectStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const EXAMPLE = path.join(PROJECT_ROOT, "examples", "typescript");
const AMBIENT_PLUGIN_WARNING = /using pulumi-resource-pulumi-nodejs from \$PATH/;

let t: ProjectStack;

beforeAll(async () => {
  if (!fs.existsSync(path.join(EXAMPLE, "node_modules", "vse-provider"))) {
    throw new Error(`${EXAMPLE}/node_modules/vse-provider is missing: run \`npm run setup\` (it links the example's dependency on this clone)`);
  }
  t = await createProjectStack(EXAMPLE);
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("pulumi up runs index.ts through ts-node and each VM's job prints the sum, without the ambient-plugin warning", async () => {
  const res = await upAndCheckNoDiff(t.stack);
  expect(res.summary.result).toBe("succeeded");
  // The engine finds the dynamic-provider plugin where it expects a bundled plugin, so it does not warn.
  expect(res.stdout).not.toMatch(AMBIENT_PLUGIN_WARNING);
  expect(res.stderr).not.toMatch(AMBIENT_PLUGIN_WARNING);
  expect(res.stdout).not.toMatch(/^\s*warning:/m);

  const vms = res.outputs.vms.value as { name: string; status: string; output: string | null }[];
  expect(vms.map((vm) => vm.name.split("::").pop())).toEqual(["ts-cluster-0", "ts-cluster-1"]);
  for (const vm of vms) {
    expect(vm.status).toBe("running");
    expect(vm.output).toBe("5\n");
  }
  const configs = res.outputs.configs.value as string[];
  expect(configs[0]).toMatch(/^-m 256M$/m);
  expect(configs[1]).toMatch(/^-m 384M$/m);
  // Nothing was compiled next to the program.
  expect(fs.readdirSync(EXAMPLE).filter((f) => f.endsWith(".js") || f === "bin")).toEqual([]);
  // The agents and guests run under the stack's own state directory.
  expect(processesUnder(t.stateRoot).length).toBeGreaterThan(0);
});

test("preview right after up reports no changes", async () => {
  const res = await t.stack.preview();
  expect(Object.keys(res.changeSummary)).toEqual(["same"]);
  expect(res.stdout).not.toMatch(AMBIENT_PLUGIN_WARNING);
});

test("destroy leaves no QEMU or agent process behind", async () => {
  const res = await t.stack.destroy();
  expect(res.summary.result).toBe("succeeded");
  expect(res.stdout).not.toMatch(AMBIENT_PLUGIN_WARNING);
  expect(processesUnder(t.stateRoot)).toEqual([]);
});
