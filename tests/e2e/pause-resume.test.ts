// Pause and resume through the engine: `spec.vmState` and `overrides[].state`
// are in-place changes. `pulumi preview --diff` shows state "running" =>
// "paused" as an update (no replace), `up` pauses the same QEMU process (its
// guest's counter stops), and setting it back resumes that process.
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";
import { AgentClient } from "../../provider/agent/client";
import type { AccountingResult } from "../../provider/cli/accounting";
import { main } from "../../provider/cli/vse";
import type { VmView } from "../../provider/agent/protocol";
import { createTestStack, processesUnder, qemuProcessesFor, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(8 * 60 * 1000);

// The job reports at once and leaves a counter running in the guest: one console line a second while the guest runs.
const DEFS = (extra: string) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ticker }
spec:
  job:
    command: ["/bin/sh", "-c", "(i=0; while sleep 1; do echo tick-$i; i=$((i+1)); done) & echo counting"]
    timeoutSeconds: 240
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: small }
spec: { memory: 128MiB, machine: pc, accel: auto }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: pr }
spec:
  environment: ticker
  profile: small
  nodes: 2
  allocation: { manager: local, hosts: 1 }
${extra}`;

let t: TestStack;

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": DEFS("") });
});

afterAll(async () => {
  if (t) {
    const root = t.stateRoot;
    await t.cleanup();
    expect(processesUnder(root)).toEqual([]);
  }
});

async function vmOutputs(name: string): Promise<{
  status: string;
  pid: number | null;
  starts: number;
  state?: string;
  accounting?: { host: number; cpuSeconds: number; memoryMiB: number; pid: number };
}> {
  const res = (await t.stack.exportStack()).deployment.resources.find((r: { urn: string }) => r.urn.endsWith(`vse:VirtualMachine::${name}`));
  return res.outputs;
}

function agent(): AgentClient {
  const dir = t.hostDir("pr", 0);
  return new AgentClient(`unix:${path.join(dir, "agent.sock")}`, fs.readFileSync(path.join(dir, "token"), "utf8"));
}

async function lastTick(name: string): Promise<number> {
  const v = (await agent().getVm(name)) as VmView;
  const ticks = [...v.consoleTail.matchAll(/tick-(\d+)/g)].map((m) => Number(m[1]));
  return ticks.length ? Math.max(...ticks) : -1;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The operation per resource name, and the preview's --diff text. */
async function preview(): Promise<{ ops: Record<string, string>; text: string }> {
  const ops: Record<string, string> = {};
  const res = await t.stack.preview({
    diff: true,
    onEvent: (e: EngineEvent) => {
      const m = e.resourcePreEvent?.metadata;
      if (m) ops[m.urn.split("::").pop()!] = m.op;
    },
  });
  return { ops, text: res.stdout };
}

test("vmState and overrides[].state pause and resume the same QEMU processes in place", async () => {
  const first = await upAndCheckNoDiff(t.stack);
  const vms = first.outputs.vms.value as Record<string, { status: string; output: string }>;
  expect(vms["pr-0"]).toEqual(expect.objectContaining({ status: "running", output: "counting\n" }));
  const pid0 = (await vmOutputs("pr-0")).pid!;
  // Accounting is an output of the VM: its process on host 0, having used some CPU.
  const acct = (await vmOutputs("pr-0")).accounting!;
  expect(acct).toEqual(expect.objectContaining({ host: 0, pid: pid0, memoryMiB: 128 }));
  expect(acct.cpuSeconds).toBeGreaterThan(0);
  const pid1 = (await vmOutputs("pr-1")).pid!;

  // The cluster pauses, except VM 1 that its override keeps running.
  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), DEFS("  vmState: paused\n  overrides:\n    - { vm: 1, state: running }\n"));
  const p = await preview();
  expect(p.ops["pr-0"]).toBe("update");
  expect(p.ops["pr-1"]).toBe("same");
  expect(Object.values(p.ops)).not.toContain("replace");
  expect(p.text).toMatch(/~ state\s*: "running" => "paused"/);

  await upAndCheckNoDiff(t.stack);
  expect(await vmOutputs("pr-0")).toEqual(expect.objectContaining({ status: "paused", pid: pid0, starts: 1, state: "paused" }));
  expect(await vmOutputs("pr-1")).toEqual(expect.objectContaining({ status: "running", pid: pid1, starts: 1 }));
  expect((await agent().getVm("pr-0"))?.observed.state).toBe("paused");
  const at = await lastTick("pr-0");
  const other = await lastTick("pr-1");
  await sleep(4000);
  expect(await lastTick("pr-0")).toBe(at);
  expect(await lastTick("pr-1")).toBeGreaterThan(other);

  // Back to running: the same process counts on.
  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), DEFS(""));
  const back = await preview();
  expect(back.ops["pr-0"]).toBe("update");
  expect(back.text).toMatch(/~ state\s*: "paused" => "running"/);
  await upAndCheckNoDiff(t.stack);
  expect(await vmOutputs("pr-0")).toEqual(expect.objectContaining({ status: "running", pid: pid0, starts: 1, state: "running" }));
  for (let i = 0; i < 100 && (await lastTick("pr-0")) < at + 2; i++) await sleep(500);
  expect(await lastTick("pr-0")).toBeGreaterThanOrEqual(at + 2);
  expect(qemuProcessesFor(t.stateRoot, "pr-0")).toEqual([pid0]);

  // `vse accounting` reads the stack's agents: one running process per VM, on host 0.
  let out = "";
  const env = { PULUMI_BACKEND_URL: `file://${path.join(t.dir, "backend")}`, PULUMI_CONFIG_PASSPHRASE: "test" };
  const code = await main(["accounting", "--stack", t.name, "--format", "json"], { cwd: t.dir, env, stdout: (s) => (out += s), stderr: (s) => (out += s) });
  expect(code).toBe(0);
  const report = JSON.parse(out) as AccountingResult;
  expect(report.rows.map((r) => [r.cluster, r.vm, r.host, r.pid, r.state])).toEqual([
    ["pr", "pr-0", 0, pid0, "running"],
    ["pr", "pr-1", 0, pid1, "running"],
  ]);
});
