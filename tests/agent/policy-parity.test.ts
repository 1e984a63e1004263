// One site policy, one verdict: `vse validate` (from the file, or asking a
// running agent), `pulumi preview` of the program, and the agent itself refuse
// the same VM with the same rule and the same words. A user's own SitePolicy
// can only narrow the site's.
import * as fs from "fs";
import * as path from "path";
import { main as vse } from "../../provider/cli/vse";
import { rawRequest, testCluster, TestCluster, vmSpec } from "../support/agent";
import { createTestStack, processesUnder } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const SITE = `apiVersion: vse.dev/v1
kind: SitePolicy
metadata: { name: hpc-site }
spec:
  limits: { maxMemory: 256MiB }
`;

const DEFS = (memory: string, userPolicy = "") => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: sum }
spec:
  job: { command: ["/bin/sh", "-c", "echo 5"] }
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: small }
spec: { memory: ${memory}, vcpus: 1, accel: tcg }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: par }
spec: { environment: sum, profile: small, nodes: 1 }
${userPolicy}`;

/** The verdict without where it was found: the definitions' location and the agent's field prefix differ, the rest must not. */
const core = (message: string) =>
  message
    .trim()
    .split("\n")[0]
    .replace(/^memory \(-m\): /, "")
    .replace(/ at [^ ]+:\d+:\d+ /, " ")
    .replace(/^.*spec\.memory: /, "");

let c: TestCluster;

beforeAll(async () => {
  c = await testCluster({ policyYaml: SITE });
  await c.start(0);
});

afterAll(async () => {
  const dir = c.dir;
  await c.stop();
  expect(processesUnder(dir)).toEqual([]);
});

async function validate(args: string[]): Promise<{ code: number; err: string }> {
  let err = "";
  const code = await vse(["validate", ...args], { stdout: () => undefined, stderr: (t) => (err += t), cwd: c.dir });
  return { code, err };
}

test("vse validate (file or agent), the agent, and pulumi preview give the same verdict", async () => {
  const defs = path.join(c.dir, "defs.yaml");
  fs.writeFileSync(defs, DEFS("512MiB"));
  const fromFile = await validate([defs, "--site-policy", c.launch.policyFile!]);
  expect(fromFile.code).toBe(1);
  expect(fromFile.err).toMatch(
    /defs\.yaml:\d+:\d+: spec\.memory: VM "par-0" has 512 MiB of memory; site policy "hpc-site" rule spec\.limits\.maxMemory at .*site-policy\.yaml:5:\d+ allows at most 256 MiB per VM/,
  );
  const fromAgent = await validate([defs, "--agent", c.agents[0].url]);
  expect(fromAgent.code).toBe(1);
  expect(core(fromAgent.err.trim())).toBe(core(fromFile.err.trim()));

  const refused = await rawRequest(c.agents[0], "PUT", "/v1/vms/par-0", {
    token: c.launch.token,
    body: JSON.stringify(vmSpec(c, "par-0", { memoryMiB: 512 })),
  });
  expect(refused.status).toBe(403);
  expect(core(refused.body.error!)).toBe(core(fromFile.err.trim()));

  const t = await createTestStack({ "defs.yaml": DEFS("512MiB") });
  try {
    await t.stack.setConfig("vse:sitePolicy", { value: c.launch.policyFile! });
    const diagnostics: string[] = [];
    const failed = await t.stack.preview({ onEvent: (e) => e.diagnosticEvent && diagnostics.push(e.diagnosticEvent.message) }).then(
      () => false,
      () => true,
    );
    expect(failed).toBe(true);
    const line = diagnostics
      .join("\n")
      .split("\n")
      .find((l) => l.includes('VM "par-0"'));
    expect(core((line ?? "").replace(/·$/, ""))).toBe(core(fromFile.err));
    expect(processesUnder(t.stateRoot)).toEqual([]);
  } finally {
    await t.cleanup();
  }
});

test("a user's own SitePolicy narrows the site's but cannot widen it", async () => {
  const defs = path.join(c.dir, "narrow.yaml");
  const userPolicy = (max: string) => `---
apiVersion: vse.dev/v1
kind: SitePolicy
metadata: { name: mine }
spec: { limits: { maxMemory: ${max} } }
`;
  // Wider than the site: the site's rule still refuses 512 MiB.
  fs.writeFileSync(defs, DEFS("512MiB", userPolicy("4GiB")));
  const wider = await validate([defs, "--site-policy", c.launch.policyFile!]);
  expect(wider.code).toBe(1);
  expect(wider.err).toMatch(/site policy "hpc-site" rule spec\.limits\.maxMemory/);
  expect(wider.err).not.toMatch(/site policy "mine"/);
  // Narrower than the site: the user's own rule refuses what the site allows.
  fs.writeFileSync(defs, DEFS("192MiB", userPolicy("128MiB")));
  const narrower = await validate([defs, "--site-policy", c.launch.policyFile!]);
  expect(narrower.code).toBe(1);
  expect(narrower.err).toMatch(/site policy "mine" rule spec\.limits\.maxMemory .*allows at most 128 MiB per VM/);
  // Within both: valid.
  fs.writeFileSync(defs, DEFS("128MiB", userPolicy("128MiB")));
  expect((await validate([defs, "--site-policy", c.launch.policyFile!])).code).toBe(0);
});
