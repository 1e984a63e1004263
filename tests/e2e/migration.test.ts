// Changing a VM's host in its definition live-migrates it (QEMU) between two
// node agents: preview shows an update, not a replace, and the guest's running
// loop carries on at the target instead of booting again.
import * as fs from "fs";
import * as path from "path";
import type { EngineEvent } from "@pulumi/pulumi/automation";
import { AgentClient } from "../../provider/agent/client";
import { createTestStack, qemuProcessesFor, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

const DEFS = (host: number) => `apiVersion: vse.dev/v1
kind: Environment
metadata: { name: ticker }
spec:
  job:
    # The job returns at once; a loop it leaves behind prints a tick a second on the console.
    command: ["/bin/sh", "-c", "( i=0; while sleep 1; do i=$((i+1)); echo tick $i; done ) & echo started"]
    afterJob: stay-up
---
apiVersion: vse.dev/v1
kind: VmProfile
metadata: { name: small }
spec: { memory: 128MiB, machine: pc, accel: auto }
---
apiVersion: vse.dev/v1
kind: VirtualCluster
metadata: { name: mig }
spec:
  environment: ticker
  profile: small
  nodes: 2
  allocation: { manager: local, hosts: 2 }
  overrides: [{ vm: 0, host: ${host} }]
`;

let t: TestStack;

function ticks(file: string): number[] {
  const text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
  return [...text.matchAll(/^tick (\d+)\r?$/gm)].map((m) => Number(m[1]));
}

async function waitForTicks(file: string, atLeast: number): Promise<number[]> {
  for (let i = 0; i < 300; i++) {
    const tk = ticks(file);
    if (tk.length >= atLeast) return tk;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no ticks in ${file}: ${fs.existsSync(file) ? fs.readFileSync(file, "utf8").slice(-500) : "(missing)"}`);
}

beforeAll(async () => {
  t = await createTestStack({ "cluster.yaml": DEFS(0) });
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("moving a VM to another host migrates it live: an update in preview, the same guest on the target", async () => {
  const first = await upAndCheckNoDiff(t.stack);
  const before = first.outputs.vms.value as Record<string, { pid: number; output: string }>;
  expect(before["mig-0"].output).toBe("started\n");
  const sourceConsole = path.join(t.hostDir("mig", 0), "vms", "mig-0", "console.log");
  const targetConsole = path.join(t.hostDir("mig", 1), "vms", "mig-0", "console.log");
  await waitForTicks(sourceConsole, 2);

  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), DEFS(1));
  const ops: Record<string, string> = {};
  await t.stack.preview({
    onEvent: (e: EngineEvent) => {
      const m = e.resourcePreEvent?.metadata;
      if (m) ops[m.urn.split("::").pop()!] = m.op;
    },
  });
  expect(ops["mig-0"]).toBe("update");
  expect(ops["mig-1"]).toBe("same");

  const lastOnSource = ticks(sourceConsole).pop()!;
  const res = await upAndCheckNoDiff(t.stack);
  const after = res.outputs.vms.value as Record<string, { pid: number; output: string; status: string }>;
  expect(after["mig-0"].status).toBe("running");
  expect(after["mig-0"].output).toBe("started\n"); // the job ran once, before the move
  expect(after["mig-0"].pid).not.toBe(before["mig-0"].pid);
  expect(after["mig-1"].pid).toBe(before["mig-1"].pid);

  // The loop continues where it was: the target's console goes on counting, it does not boot again.
  const onTarget = await waitForTicks(targetConsole, 2);
  expect(onTarget[0]).toBeGreaterThan(lastOnSource);
  expect(onTarget.every((n, i) => i === 0 || n === onTarget[i - 1] + 1)).toBe(true);
  expect(fs.readFileSync(targetConsole, "utf8")).not.toContain("==vse-job:");

  // One QEMU for the VM, under the target agent; the source agent no longer has it.
  expect(qemuProcessesFor(t.stateRoot, "mig-0")).toEqual([after["mig-0"].pid]);
  const cluster = (await t.stack.exportStack()).deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
  const token = fs.readFileSync(path.join(t.hostDir("mig", 0), "token"), "utf8");
  expect(await new AgentClient(cluster.outputs.agents[0].url, token).getVm("mig-0")).toBeUndefined();
  expect((await new AgentClient(cluster.outputs.agents[1].url, token).getVm("mig-0"))?.observed.pid).toBe(after["mig-0"].pid);

  // And no perpetual diff afterwards.
  const again = await t.stack.preview();
  expect(Object.keys(again.changeSummary ?? {})).toEqual(["same"]);
});
