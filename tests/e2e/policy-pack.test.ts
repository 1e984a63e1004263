// The site policy as a CrossGuard policy pack (policy-pack/), run by the engine
// through our Node language host's RunPlugin: a cluster breaking the policy is
// refused by preview and by up before any agent or QEMU process starts; a
// compliant one passes the same pack. The Pulumi program's own policy check
// stays off (no vse:sitePolicy, no <stateDir>/site-policy.yaml): the policy
// file is given to the pack alone, through VSE_SITE_POLICY.
import * as fs from "fs";
import * as path from "path";
import type { LocalWorkspace } from "@pulumi/pulumi/automation";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { createTestStack, exampleDefinitions, processesUnder, TestStack } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const PACK = path.join(PROJECT_ROOT, "policy-pack");
let t: TestStack;
let policyFile: string;

/** Runs an operation that must fail; returns everything it printed and its error. */
async function failing(op: (onOutput: (s: string) => void) => Promise<unknown>): Promise<string> {
  let out = "";
  let error: unknown;
  try {
    await op((s) => (out += s));
  } catch (err) {
    error = err;
  }
  expect(error).toBeDefined();
  return `${out}\n${String(error)}`;
}

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": exampleDefinitions() });
  policyFile = path.join(t.dir, "site-policy.yaml");
  fs.writeFileSync(policyFile, "apiVersion: vse.dev/v1\nkind: SitePolicy\nmetadata: { name: small-vms }\nspec:\n  limits:\n    maxMemory: 128MiB\n");
  (t.stack.workspace as LocalWorkspace).envVars.VSE_SITE_POLICY = policyFile;
});

afterAll(async () => {
  if (t) await t.cleanup();
});

const violation = (vm: string) =>
  `VM "${vm}" has 256 MiB of memory; site policy "small-vms" rule spec.limits.maxMemory at ${policyFile}:6:5 allows at most 128 MiB per VM`;

test("preview with the policy pack fails with its mandatory violation, for the cluster and each VM", async () => {
  const text = await failing((onOutput) => t.stack.preview({ policyPacks: [PACK], onOutput }));
  expect(text).toContain("vse-site-policy@v0.1.0");
  expect(text).toMatch(/\[mandatory\]\s+vse-cluster-site-policy/);
  expect(text).toMatch(/\[mandatory\]\s+vse-vm-site-policy/);
  expect(text).toContain(violation("local-cluster-0"));
  expect(text).toContain(violation("local-cluster-1"));
  // The program's own check was not what refused it.
  expect(text).not.toContain("invalid definitions");
  expect(processesUnder(t.stateRoot)).toEqual([]);
});

test("up with the policy pack fails the same way before any agent or QEMU process starts", async () => {
  const text = await failing((onOutput) => t.stack.up({ policyPacks: [PACK], onOutput }));
  expect(text).toMatch(/\[mandatory\]\s+vse-cluster-site-policy/);
  expect(text).toContain(violation("local-cluster-0"));
  expect(text).toContain(violation("local-cluster-1"));
  expect(processesUnder(t.stateRoot)).toEqual([]);
  const resources = (await t.stack.exportStack()).deployment.resources ?? [];
  expect(resources.filter((r: { type: string }) => r.type.startsWith("pulumi-nodejs:dynamic/vse:Virtual"))).toEqual([]);
  expect(fs.existsSync(path.join(t.stateRoot, "clusters")) ? fs.readdirSync(path.join(t.stateRoot, "clusters")) : []).toEqual([]);
});

test("a compliant cluster passes the same policy pack and boots", async () => {
  const compliant = exampleDefinitions().replace("memory: 256MiB", "memory: 128MiB").replace("nodes: 2", "nodes: 1").replace("hosts: 2", "hosts: 1");
  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), compliant);
  const preview = await t.stack.preview({ policyPacks: [PACK] });
  expect(preview.changeSummary.create).toBeGreaterThan(0);
  const res = await t.stack.up({ policyPacks: [PACK] });
  expect(res.summary.result).toBe("succeeded");
  const vms = (await t.stack.outputs()).vms.value as Record<string, { status: string; output: string }>;
  expect(vms["local-cluster-0"]).toEqual(expect.objectContaining({ status: "running", output: "5\n" }));
});
