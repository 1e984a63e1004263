// A VM whose job gives no result in time fails `pulumi up` with a clear error,
// and leaves nothing behind: no QEMU process, no VM on its agent. Fixing the
// definition and running `up` again then succeeds.
import * as fs from "fs";
import * as path from "path";
import { AgentClient } from "../../provider/agent/client";
import { createTestStack, exampleDefinitions, qemuProcessesFor, TestStack } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

let t: TestStack;

beforeAll(async () => {
  const slow = exampleDefinitions().replace("echo $((2+3))", "sleep 600").replace("timeoutSeconds: 120", "timeoutSeconds: 3");
  t = await createTestStack({ "cluster.yaml": slow });
});

afterAll(async () => {
  if (t) await t.cleanup();
});

test("a job with no result in time fails the create and leaves no orphan", async () => {
  let message = "";
  try {
    await t.stack.up();
  } catch (err) {
    message = String((err as Error).message);
  }
  expect(message).toContain("local-cluster-0: no job result within 3 s (Environment spec.job.timeoutSeconds)");
  for (const vm of ["local-cluster-0", "local-cluster-1"]) expect(qemuProcessesFor(t.stateRoot, vm)).toEqual([]);
  // The agents are up (the cluster was created) but hold no VM.
  const cluster = (await t.stack.exportStack()).deployment.resources.find((r: { type: string }) => r.type === "pulumi-nodejs:dynamic/vse:VirtualCluster");
  const token = fs.readFileSync(path.join(t.hostDir("local-cluster", 0), "token"), "utf8");
  for (const a of cluster.outputs.agents) expect((await new AgentClient(a.url, token).request<{ vms: unknown[] }>("GET", "/v1/vms")).vms).toEqual([]);

  fs.writeFileSync(path.join(t.defsDir, "cluster.yaml"), exampleDefinitions());
  const res = await t.stack.up();
  const vms = res.outputs.vms.value as Record<string, { output: string }>;
  expect(vms["local-cluster-0"].output).toBe("5\n");
  expect(vms["local-cluster-1"].output).toBe("5\n");
});
