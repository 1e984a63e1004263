// `vse status` on a real stack: the stack's state through the Automation API,
// live state from the node agents; a killed agent shows as unreachable.
import * as fs from "fs";
import * as path from "path";
import { main } from "../../provider/cli/vse";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { revealSecret, StackStatus } from "../../provider/cli/status";
import { createTestStack, exampleDefinitions, TestStack } from "../support/stack";

const execa = require("execa") as typeof import("execa");

jest.setTimeout(5 * 60 * 1000);

let t: TestStack;
let env: Record<string, string>;
const VMS = ["local-cluster-0", "local-cluster-1"];

async function vse(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(argv, { cwd: t.dir, env, stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) });
  return { code, stdout, stderr };
}

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": exampleDefinitions() });
  env = { PULUMI_BACKEND_URL: `file://${path.join(t.dir, "backend")}`, PULUMI_CONFIG_PASSPHRASE: "test" };
  const res = await t.stack.up();
  expect(res.summary.result).toBe("succeeded");
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("status --format json shows both VMs running with their job's output", async () => {
  const r = await vse("status", "--stack", t.name, "--format", "json");
  expect(r).toEqual(expect.objectContaining({ code: 0, stderr: "" }));
  const s = JSON.parse(r.stdout) as StackStatus;
  expect(s.stack).toBe(t.name);
  // The token comes from the state itself: LocalWorkspace.exportStack shows secrets (plaintext), so the token files are not needed.
  const raw = (await t.stack.exportStack()).deployment.resources.find((x: { type: string }) => x.type.endsWith("vse:VirtualCluster")).outputs.token;
  expect(revealSecret(raw)).toBe(fs.readFileSync(path.join(t.hostDir("local-cluster", 0), "token"), "utf8"));
  expect(s.clusters.map((c) => c.cluster)).toEqual(["local-cluster"]);
  const c = s.clusters[0];
  expect(c.agents.map((a) => [a.host, a.reachable])).toEqual([
    [0, true],
    [1, true],
  ]);
  expect(c.vms.map((v) => v.vm)).toEqual(VMS);
  for (const [i, v] of c.vms.entries()) {
    expect(v).toEqual(expect.objectContaining({ host: i, hypervisor: "qemu", state: "running", launch: "cold", job: "done", exitCode: 0, output: "5" }));
    expect(v.pid).toBeGreaterThan(0);
    expect(v.upSeconds).toBeGreaterThanOrEqual(0);
  }
});

test("status prints a table with a row per VM", async () => {
  const r = await vse("status", "--stack", t.name);
  expect(r.code).toBe(0);
  const lines = r.stdout.split("\n");
  expect(lines[0]).toBe(`cluster local-cluster (stack ${t.name}; agents: host 0 ok, host 1 ok)`);
  expect(lines[1]).toMatch(/^VM\s+HOST\s+HYPERVISOR\s+STATE\s+PID\s+LAUNCH\s+JOB\s+EXIT\s+OUTPUT\s+UP$/);
  for (const [i, vm] of VMS.entries())
    expect(lines[2 + i]).toMatch(new RegExp(`^${vm}\\s+${i}\\s+qemu\\s+running\\s+\\d+\\s+cold\\s+done\\s+0\\s+5\\s+\\d+(s|m\\d\\ds)$`));
});

test("status --watch redraws every second until SIGINT, then exits 0", async () => {
  const child = execa("node", [path.join(PROJECT_ROOT, "dist", "provider", "cli", "vse.js"), "status", "--stack", t.name, "--watch"], {
    env: { ...process.env, ...env },
    reject: false,
  });
  let out = "";
  child.stdout!.on("data", (b: Buffer) => (out += b.toString()));
  // The first frame waits for the stack's state (the engine's `stack export`); then ~2.5 s of redraws.
  for (let i = 0; i < 200 && !out.includes("\x1b[H\x1b[2J"); i++) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => setTimeout(r, 2500));
  child.kill("SIGINT");
  const res = await child;
  expect(res.exitCode).toBe(0);
  const frames = out.split("\x1b[H\x1b[2J").slice(1);
  expect(frames.length).toBeGreaterThanOrEqual(2);
  for (const f of frames) expect(f).toContain("local-cluster-1");
});

test("a killed agent shows its VMs as unreachable, and status still exits 0", async () => {
  const info = JSON.parse(fs.readFileSync(path.join(t.hostDir("local-cluster", 1), "agent.json"), "utf8")) as { pid: number };
  process.kill(info.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 300));

  const r = await vse("status", "--stack", t.name, "--format", "json");
  expect(r.code).toBe(0);
  const c = (JSON.parse(r.stdout) as StackStatus).clusters[0];
  expect(c.agents.map((a) => [a.host, a.reachable])).toEqual([
    [0, true],
    [1, false],
  ]);
  expect(c.vms.map((v) => [v.vm, v.state])).toEqual([
    ["local-cluster-0", "running"],
    ["local-cluster-1", "agent unreachable"],
  ]);

  const text = await vse("status", "--stack", t.name);
  expect(text.code).toBe(0);
  expect(text.stdout).toMatch(/^local-cluster-1\s+1\s+qemu\s+agent unreachable\s+-/m);
  expect(text.stdout).toContain("agents: host 0 ok, host 1 unreachable");
});
