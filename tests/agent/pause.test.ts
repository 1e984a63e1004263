// Pause and resume through the agent (VmSpec.state), with a real QEMU guest
// whose job prints a counter: a paused guest's counter stops, the same QEMU
// process goes on counting once resumed, and an agent restart keeps a paused
// VM paused.
import * as fs from "fs";
import { AgentRecord } from "../../provider/allocation/local";
import type { VmView } from "../../provider/agent/protocol";
import { jobEnv, rawRequest, useTestCluster, TestCluster, vmSpec, waitForVm } from "../support/agent";
import { libvirtdForTest } from "../support/libvirtd";
import { qemuProcessesFor } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

const cluster = useTestCluster([0]);
let c: TestCluster;
beforeAll(() => (c = cluster()));

/** A job that counts for a long while, one line a second. */
const COUNTER = jobEnv("stay-up", ["/bin/sh", "-c", "i=0; while [ $i -lt 900 ]; do echo tick-$i; i=$((i+1)); sleep 1; done"]);

function lastTick(v: VmView | undefined): number {
  const ticks = [...(v?.consoleTail ?? "").matchAll(/tick-(\d+)/g)].map((m) => Number(m[1]));
  return ticks.length ? Math.max(...ticks) : -1;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function gone(pid: number): Promise<void> {
  while (fs.existsSync(`/proc/${pid}/cmdline`) && fs.readFileSync(`/proc/${pid}/cmdline`).length > 0) await sleep(20);
}

test("a paused guest stops counting, stays paused across an agent restart, and the same QEMU counts on once resumed", async () => {
  const client = c.client();
  const spec = vmSpec(c, "vm-pause", { env: COUNTER });
  await client.putVm("vm-pause", spec);
  const up = await waitForVm(client, "vm-pause", (v) => lastTick(v) >= 2, 180000);
  const pid = up.observed.pid!;

  const paused = await client.putVm("vm-pause", { ...spec, state: "paused" });
  expect(paused.observed).toEqual(expect.objectContaining({ state: "paused", pid, starts: 1 }));
  const listed = await rawRequest(c.agents[0], "GET", "/v1/vms", { token: c.launch.token });
  expect((listed.body.vms as VmView[]).map((v) => [v.name, v.observed.state])).toEqual([["vm-pause", "paused"]]);
  const at = lastTick(await client.getVm("vm-pause"));
  // Several of the guest's seconds pass: a running guest would print a line each.
  await sleep(4000);
  expect(lastTick(await client.getVm("vm-pause"))).toBe(at);

  // An agent killed and restarted finds the VM paused and leaves it so.
  const first: AgentRecord = c.agents[0];
  process.kill(first.pid, "SIGKILL");
  await gone(first.pid);
  await c.start(0);
  const again = await c.client().getVm("vm-pause");
  expect(again?.observed).toEqual(expect.objectContaining({ state: "paused", pid, starts: 1 }));
  // The same desired state again changes nothing.
  expect((await c.client().putVm("vm-pause", { ...spec, state: "paused" })).observed).toEqual(expect.objectContaining({ state: "paused", pid }));
  await sleep(2000);
  expect(lastTick(await c.client().getVm("vm-pause"))).toBe(at);

  const resumed = await c.client().putVm("vm-pause", spec);
  expect(resumed.observed).toEqual(expect.objectContaining({ state: "running", pid, starts: 1 }));
  const later = await waitForVm(c.client(), "vm-pause", (v) => lastTick(v) >= at + 2, 60000);
  expect(later.observed.pid).toBe(pid);
  expect(qemuProcessesFor(c.dir, "vm-pause")).toEqual([pid]);

  await c.client().deleteVm("vm-pause");
  expect(qemuProcessesFor(c.dir, "vm-pause")).toEqual([]);
});

test("a VM created paused is started and paused at once; state outside running|paused is refused", async () => {
  const client = c.client();
  const spec = vmSpec(c, "vm-born-paused", { env: COUNTER });
  const v = await client.putVm("vm-born-paused", { ...spec, state: "paused" });
  expect(v.observed.state).toBe("paused");
  expect(v.observed.pid).toBeGreaterThan(0);
  const bad = await rawRequest(c.agents[0], "PUT", "/v1/vms/vm-born-paused", {
    token: c.launch.token,
    body: JSON.stringify({ ...spec, state: "suspended" }),
    headers: { "Content-Type": "application/json" },
  });
  expect(bad.status).toBe(400);
  expect(bad.body.error).toBe('state: expected "running" or "paused", found "suspended"');
  await client.deleteVm("vm-born-paused");
});

test("libvirt: the agent pauses and resumes the domain through its driver (virsh suspend/resume), same process", async () => {
  const stopDaemons = await libvirtdForTest();
  try {
    const client = c.client();
    const spec = vmSpec(c, "vm-lv-pause", { env: COUNTER, hypervisor: "libvirt" });
    await client.putVm("vm-lv-pause", spec);
    const up = await waitForVm(client, "vm-lv-pause", (v) => lastTick(v) >= 2, 180000);
    const paused = await client.putVm("vm-lv-pause", { ...spec, state: "paused" });
    expect(paused.observed).toEqual(expect.objectContaining({ state: "paused", pid: up.observed.pid }));
    const at = lastTick(await client.getVm("vm-lv-pause"));
    await sleep(4000);
    expect(lastTick(await client.getVm("vm-lv-pause"))).toBe(at);
    expect((await client.putVm("vm-lv-pause", spec)).observed).toEqual(expect.objectContaining({ state: "running", pid: up.observed.pid }));
    await waitForVm(client, "vm-lv-pause", (v) => lastTick(v) >= at + 2, 60000);
    await client.deleteVm("vm-lv-pause");
  } finally {
    await stopDaemons();
  }
});
