// Accounting with a real QEMU job: the agent's GET /v1/accounting gives, per
// VM process, CPU seconds (more than none, no more than its wall time times its
// vCPUs), configured memory and a plausible peak RSS, on this host; the final
// figures are kept after the VM ends, is deleted, and the agent restarts.
import * as os from "os";
import type { AccountingReport } from "../../provider/agent/accounting";
import { schedulerJobId } from "../../provider/agent/accounting";
import { jobEnv, rawRequest, useTestCluster, TestCluster, vmSpec, waitForVm } from "../support/agent";
import { processEnded } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const cluster = useTestCluster([0]);
let c: TestCluster;
beforeAll(() => (c = cluster()));

async function report(): Promise<AccountingReport> {
  const r = await rawRequest(c.agents[0], "GET", "/v1/accounting", { token: c.launch.token });
  expect(r.status).toBe(200);
  return r.body as unknown as AccountingReport;
}

// Busy in the guest for a while, then powers off.
const BUSY = jobEnv("power-off", ["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo counted-$i"]);

test("a finished job's CPU, memory and wall time, on this host, kept after the VM is gone and across an agent restart", async () => {
  const client = c.client();
  await client.putVm("vm-acct", vmSpec(c, "vm-acct", { env: BUSY, memoryMiB: 128, vcpus: 1 }));
  const running = (await report()).records.find((r) => r.vm === "vm-acct");
  expect(running).toEqual(expect.objectContaining({ endedAt: null, memoryMiB: 128, vcpus: 1 }));

  const done = await waitForVm(client, "vm-acct", (v) => v.observed.state === "exited", 240000);
  expect(done.job).toEqual({ state: "done", exitCode: 0, output: "counted-20000\n" });
  const rep = await report();
  expect(rep).toEqual(expect.objectContaining({ host: 0, hostname: os.hostname(), schedulerJobId: schedulerJobId(process.env) }));
  const recs = rep.records.filter((r) => r.vm === "vm-acct");
  expect(recs).toHaveLength(1);
  const r = recs[0];
  expect(r.endedAt).not.toBeNull();
  expect(r.pid).toBe(running!.pid);
  expect(Date.parse(r.endedAt!)).toBeGreaterThanOrEqual(Date.parse(r.startedAt));
  expect(r.cpuSeconds).toBeGreaterThan(0);
  expect(r.cpuSeconds).toBeLessThanOrEqual(r.wallSeconds * r.vcpus!);
  // QEMU's own memory plus what the guest touched: more than a few MiB, less than the guest's memory plus a generous overhead.
  expect(r.peakRssMiB).toBeGreaterThan(8);
  expect(r.peakRssMiB).toBeLessThan(128 + 512);

  // Deleted, and its agent restarted: the figures stay.
  await client.deleteVm("vm-acct");
  const pid = c.agents[0].pid;
  await c.client().request("POST", "/v1/shutdown", {});
  // The shutdown is answered before the agent exits; a new one may take the state only then.
  while (!processEnded(pid)) await new Promise((r) => setTimeout(r, 20));
  await c.start(0);
  const after = (await report()).records.filter((x) => x.vm === "vm-acct");
  expect(after).toEqual([r]);
});

test("a running VM's record grows, and ends when the agent removes the VM", async () => {
  const client = c.client();
  await client.putVm("vm-acct2", vmSpec(c, "vm-acct2", { memoryMiB: 96, vcpus: 2 }));
  await waitForVm(client, "vm-acct2", (v) => v.job.state === "done", 240000);
  const first = (await report()).records.find((r) => r.vm === "vm-acct2")!;
  expect(first).toEqual(expect.objectContaining({ endedAt: null, memoryMiB: 96, vcpus: 2 }));
  expect(first.cpuSeconds).toBeGreaterThan(0);
  await waitForVm(client, "vm-acct2", () => true);
  await new Promise((res) => setTimeout(res, 1500));
  const second = (await report()).records.find((r) => r.vm === "vm-acct2")!;
  expect(second.wallSeconds).toBeGreaterThan(first.wallSeconds);
  expect(second.cpuSeconds).toBeGreaterThanOrEqual(first.cpuSeconds);
  await client.deleteVm("vm-acct2");
  const ended = (await report()).records.find((r) => r.vm === "vm-acct2")!;
  expect(ended.endedAt).not.toBeNull();
  expect(ended.cpuSeconds).toBeLessThanOrEqual(ended.wallSeconds * 2);
});
