// A VM whose environment says `afterJob: power-off` runs its job once and ends
// (`completed`). An in-place change afterwards (the job's timeoutSeconds, only
// how long the provider waits) must not start its QEMU again: the job is not
// run a second time and its result stays what it was.
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";
import { AgentClient } from "../../provider/agent/client";
import { createTestStack, processesUnder, qemuProcessesFor, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const VM = "once-0";

const DEFS = (timeoutSeconds: number) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: once }
spec:
  job:
    command: ["/bin/sh", "-c", "echo ran once"]
    afterJob: power-off
    timeoutSeconds: ${timeoutSeconds}
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: small }
spec: { memory: 128MiB, machine: pc, accel: auto }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: once }
spec:
  environment: once
  profile: small
  nodes: 1
  allocation: { manager: local, hosts: 1 }
`;

let t: TestStack;

/** The VirtualMachine resource's outputs, as the engine recorded them. */
async function vmState(): Promise<{ status: string; starts: number; pid: number | null; jobOutput: string | null; jobExitCode: number | null }> {
  const res = (await t.stack.exportStack()).deployment.resources.find((r: { urn: string }) => r.urn.endsWith(`vse:VirtualMachine::${VM}`));
  return res.outputs;
}

async function agent(): Promise<AgentClient> {
  const cluster = (await t.stack.exportStack()).deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
  return new AgentClient(cluster.outputs.agents[0].url, fs.readFileSync(path.join(t.hostDir("once", 0), "token"), "utf8"));
}

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": DEFS(120) });
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("a powered-off VM is completed with its job's output, and an in-place change does not start it again", async () => {
  const first = await upAndCheckNoDiff(t.stack);
  const out = (first.outputs.vms.value as Record<string, { status: string; output: string; exitCode: number }>)[VM];
  expect(out).toEqual(expect.objectContaining({ status: "completed", output: "ran once\n", exitCode: 0 }));
  const before = await vmState();
  expect(before).toEqual(expect.objectContaining({ status: "completed", starts: 1, pid: null, jobOutput: "ran once\n", jobExitCode: 0 }));
  expect(qemuProcessesFor(t.stateRoot, VM)).toEqual([]);
  const viewBefore = (await (await agent()).getVm(VM))!;
  expect(viewBefore.observed).toEqual(expect.objectContaining({ state: "exited", starts: 1 }));
  expect(viewBefore.observed.lastExit).toEqual(expect.objectContaining({ code: 0, expected: false }));

  // Only how long the provider waits changes: an in-place update of the VM, nothing replaced.
  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), DEFS(90));
  const ops: Record<string, string> = {};
  await t.stack.preview({
    onEvent: (e: EngineEvent) => {
      const m = e.resourcePreEvent?.metadata;
      if (m) ops[m.urn.split("::").pop()!] = m.op;
    },
  });
  expect(ops[VM]).toBe("update");
  expect(Object.values(ops)).not.toContain("replace");

  const second = await upAndCheckNoDiff(t.stack);
  expect(second.summary.resourceChanges?.update).toBeGreaterThanOrEqual(1);
  const after = await vmState();
  expect(after).toEqual(expect.objectContaining({ status: "completed", starts: 1, pid: null, jobOutput: "ran once\n", jobExitCode: 0 }));
  expect((second.outputs.vms.value as Record<string, { output: string }>)[VM].output).toBe("ran once\n");
  // The agent did not start it again: same start count, same start time, and no QEMU appeared.
  const viewAfter = (await (await agent()).getVm(VM))!;
  expect(viewAfter.observed).toEqual(expect.objectContaining({ state: "exited", starts: 1, startedAt: viewBefore.observed.startedAt }));
  expect(qemuProcessesFor(t.stateRoot, VM)).toEqual([]);
  // Only the agent runs; no QEMU under the stack's state.
  expect(processesUnder(t.stateRoot).filter((p) => !p.argv.some((a) => a.endsWith("agent/main.js")))).toEqual([]);
});
