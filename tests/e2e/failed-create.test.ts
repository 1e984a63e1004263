// A VM whose job gives no result in time fails `pulumi up` with a clear error,
// and leaves nothing behind: no QEMU process, no VM on its agent. Fixing the
// definition and running `up` again then succeeds.
import * as fs from "fs";
import * as path from "path";
import { AgentClient } from "../../provider/agent/client";
import { createTestStack, exampleDefinitions, qemuProcessesFor, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

let t: TestStack;

beforeAll(async () => {
  const slow = exampleDefinitions().replace("echo $((2+3))", "sleep 600").replace("timeoutSeconds: 120", "timeoutSeconds: 13");
  t = await createTestStack({ "cluster.yaml": slow });
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("a job with no result in time says it is waiting, fails the create and leaves no orphan", async () => {
  let message = "";
  const diagnostics: string[] = [];
  try {
    await t.stack.up({ onEvent: (e) => e.diagnosticEvent && diagnostics.push(e.diagnosticEvent.message) });
  } catch (err) {
    message = String((err as Error).message);
  }
  expect(message).toContain("local-cluster-0: no job result within 13 s (Environment spec.job.timeoutSeconds)");
  // While it waited, the engine's output said so, once every 10 s.
  expect(diagnostics.join("\n")).toMatch(/VM local-cluster-0: running for 10 s, waiting for its job's result/);
  for (const vm of ["local-cluster-0", "local-cluster-1"]) expect(qemuProcessesFor(t.stateRoot, vm)).toEqual([]);
  // The agents are up (the cluster was created) but hold no VM.
  const cluster = (await t.stack.exportStack()).deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
  const token = fs.readFileSync(path.join(t.hostDir("local-cluster", 0), "token"), "utf8");
  for (const a of cluster.outputs.agents) expect((await new AgentClient(a.url, token).request<{ vms: unknown[] }>("GET", "/v1/vms")).vms).toEqual([]);

  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), exampleDefinitions());
  const res = await upAndCheckNoDiff(t.stack);
  const vms = res.outputs.vms.value as Record<string, { output: string }>;
  expect(vms["local-cluster-0"].output).toBe("5\n");
  expect(vms["local-cluster-1"].output).toBe("5\n");
});

// A create that fails for a reason other than a timeout: the guest's kernel
// panics at once (its initramfs init is replaced by one that does not exist),
// QEMU ends (-no-reboot), and `up` fails naming the VM and what happened.
describe("a guest whose kernel panics at boot", () => {
  let p: TestStack;
  const PANIC = exampleDefinitions().replace("  base: busybox\n", '  base: busybox\n  kernelArgs: ["rdinit=/nonexistent"]\n');

  beforeAll(async () => {
    expect(PANIC).toContain("rdinit=/nonexistent");
    p = await createTestStack({ "cluster.yaml": PANIC });
  });

  afterAll(async () => {
    if (p) await p.cleanup();
  });

  test("fails the create naming the VM and the cause, leaves no QEMU and no VM on the agents, and a fixed definition comes up", async () => {
    let message = "";
    await p.stack.up().then(
      () => undefined,
      (err: Error) => (message = String(err.message)),
    );
    for (const vm of ["local-cluster-0", "local-cluster-1"]) {
      // The VM, that it ended before its job's result, how its process ended, and the console's last lines with the panic.
      expect(message).toMatch(new RegExp(`VM ${vm} ended before its job reported a result: the VM's process ended unexpectedly \\(exit code 0\\)`));
      expect(qemuProcessesFor(p.stateRoot, vm)).toEqual([]);
    }
    expect(message).toContain("last console lines:");
    expect(message).toMatch(/Kernel panic - not syncing/);

    const cluster = (await p.stack.exportStack()).deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
    const token = fs.readFileSync(path.join(p.hostDir("local-cluster", 0), "token"), "utf8");
    for (const a of cluster.outputs.agents) {
      expect((await new AgentClient(a.url, token).request<{ vms: unknown[] }>("GET", "/v1/vms")).vms).toEqual([]);
      expect(fs.readdirSync(path.join(a.stateDir, "vms"))).toEqual([]);
    }
    // No VM resource was recorded for a failed create.
    expect((await p.stack.exportStack()).deployment.resources.filter((r: { type: string }) => r.type.endsWith("vse:VirtualMachine"))).toEqual([]);

    fs.writeFileSync(path.join(p.defsDir, "cluster.yaml"), exampleDefinitions());
    const res = await upAndCheckNoDiff(p.stack);
    const vms = res.outputs.vms.value as Record<string, { output: string; status: string }>;
    for (const vm of ["local-cluster-0", "local-cluster-1"]) {
      expect(vms[vm]).toEqual(expect.objectContaining({ status: "running", output: "5\n" }));
      expect(qemuProcessesFor(p.stateRoot, vm)).toHaveLength(1);
    }
  });
});
