// The agent with real QEMU guests: a restarted agent re-attaches to its running
// VM instead of starting a second one, takes over a QEMU that its pidfile names
// even when the agent died before it recorded the pid, never runs a finished
// power-off job again, and survives a disk that is full.
import * as fs from "fs";
import * as path from "path";
import { AgentRecord } from "../../provider/allocation/local";
import { jobEnv, rawRequest, testCluster, TestCluster, vmSpec, waitForVm } from "../support/agent";
import { qmpCommand } from "../../provider/drivers/qmp";
import { processEnded, processesUnder, qemuProcessesFor } from "../support/stack";

jest.setTimeout(5 * 60 * 1000);

let c: TestCluster;

beforeAll(async () => {
  c = await testCluster();
});

afterAll(async () => {
  const dir = c.dir;
  await c.stop();
  expect(processesUnder(dir)).toEqual([]);
});

function killAgent(a: AgentRecord): void {
  process.kill(a.pid, "SIGKILL");
}

async function gone(pid: number): Promise<void> {
  while (fs.existsSync(`/proc/${pid}/cmdline`) && fs.readFileSync(`/proc/${pid}/cmdline`).length > 0) await new Promise((r) => setTimeout(r, 20));
}

test("an agent killed and restarted re-attaches to its running VM and never starts a duplicate", async () => {
  const first = await c.start(0);
  const client = c.client();
  const s = vmSpec(c, "vm-adopt");
  await client.putVm("vm-adopt", s);
  const v = await waitForVm(client, "vm-adopt", (x) => x.job.state === "done");
  expect(v.job).toEqual({ state: "done", exitCode: 0, output: "job-42\n" });
  const pid = v.observed.pid!;

  killAgent(first);
  await gone(first.pid);
  expect(qemuProcessesFor(c.dir, "vm-adopt")).toEqual([pid]);

  const second = await c.start(0);
  expect(second.url).toBe(first.url);
  const again = await c.client().getVm("vm-adopt");
  expect(again?.observed).toEqual(expect.objectContaining({ state: "running", pid, starts: 1, message: "re-attached after an agent restart" }));
  // The same desired state again is a no-op: same process, no second QEMU.
  const put = await c.client().putVm("vm-adopt", s);
  expect(put.observed.pid).toBe(pid);
  expect(put.observed.starts).toBe(1);
  expect(qemuProcessesFor(c.dir, "vm-adopt")).toEqual([pid]);
  const state = JSON.parse(fs.readFileSync(path.join(second.stateDir, "state.json"), "utf8"));
  expect(state.vms.map((x: { name: string }) => x.name)).toEqual(["vm-adopt"]);

  await c.client().deleteVm("vm-adopt");
  expect(qemuProcessesFor(c.dir, "vm-adopt")).toEqual([]);
  expect(await c.client().getVm("vm-adopt")).toBeUndefined();
});

test("an agent that died after spawning QEMU but before recording its pid: the restart takes over that QEMU", async () => {
  const a = c.agents[0];
  const client = c.client();
  await client.putVm("vm-intent", vmSpec(c, "vm-intent"));
  const v = await waitForVm(client, "vm-intent", (x) => x.observed.state === "running");
  const pid = v.observed.pid!;
  killAgent(a);
  await gone(a.pid);
  // Rewind the state to the moment before the pid was recorded: intent written, process spawned.
  const file = path.join(a.stateDir, "state.json");
  const state = JSON.parse(fs.readFileSync(file, "utf8"));
  state.vms[0].observed = { state: "starting", starts: 1, startedAt: state.vms[0].observed.startedAt };
  fs.writeFileSync(file, JSON.stringify(state));
  await c.start(0);
  const after = await c.client().getVm("vm-intent");
  expect(after?.observed).toEqual(expect.objectContaining({ state: "running", pid, starts: 1 }));
  // And the next desired state neither deletes its pidfile nor starts a second QEMU.
  await c.client().putVm("vm-intent", vmSpec(c, "vm-intent"));
  expect(qemuProcessesFor(c.dir, "vm-intent")).toEqual([pid]);
  expect(fs.readFileSync(path.join(a.stateDir, "vms", "vm-intent", "qemu.pid"), "utf8").trim()).toBe(String(pid));
  await c.client().deleteVm("vm-intent");
});

test("a pid reused by another process is not taken for the VM", async () => {
  const a = c.agents[0];
  const client = c.client();
  await client.putVm("vm-reuse", vmSpec(c, "vm-reuse"));
  const v = await waitForVm(client, "vm-reuse", (x) => x.observed.state === "running");
  killAgent(a);
  await gone(a.pid);
  process.kill(v.observed.pid!, "SIGKILL");
  await gone(v.observed.pid!);
  // Another live process now stands where the pidfile points: this test's own jest worker.
  fs.writeFileSync(path.join(a.stateDir, "vms", "vm-reuse", "qemu.pid"), `${process.pid}\n`);
  await c.start(0);
  const after = await c.client().getVm("vm-reuse");
  expect(after?.observed.state).toBe("failed");
  expect(after?.observed.pid).toBeUndefined();
  // Repairing it starts exactly one new QEMU; the foreign process is untouched.
  await c.client().putVm("vm-reuse", vmSpec(c, "vm-reuse"));
  expect(qemuProcessesFor(c.dir, "vm-reuse")).toHaveLength(1);
  expect(fs.existsSync(`/proc/${process.pid}`)).toBe(true);
  await c.client().deleteVm("vm-reuse");
});

test("a power-off job ends its VM, which the agent reports as exited, and the same config never runs it again", async () => {
  const client = c.client();
  const s = vmSpec(c, "vm-batch", { env: jobEnv("power-off") });
  await client.putVm("vm-batch", s);
  const v = await waitForVm(client, "vm-batch", (x) => x.observed.state !== "running" && x.observed.state !== "starting");
  expect(v.observed.state).toBe("exited");
  expect(v.observed.lastExit).toEqual(expect.objectContaining({ code: 0, signal: null, expected: false }));
  expect(v.job.output).toBe("job-42\n");
  expect(qemuProcessesFor(c.dir, "vm-batch")).toEqual([]);
  const again = await client.putVm("vm-batch", { ...s, stopGraceSeconds: 3 });
  expect(again.observed).toEqual(expect.objectContaining({ state: "exited", starts: 1 }));
  expect(qemuProcessesFor(c.dir, "vm-batch")).toEqual([]);
  await client.deleteVm("vm-batch");
});

test("a full disk: the intent cannot be recorded, so nothing starts (503); running VMs and the agent carry on", async () => {
  const execa = require("execa") as typeof import("execa");
  // Host 1's state directory is a small filesystem of its own, which the test then fills.
  const hostDir = path.join(c.clusterDir, "host-1");
  fs.mkdirSync(hostDir, { recursive: true });
  await execa("mount", ["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", hostDir]);
  try {
    const a = await c.start(1);
    const client = c.client(a);
    await client.putVm("vm-disk", vmSpec(c, "vm-disk"));
    await waitForVm(client, "vm-disk", (x) => x.job.state === "done");
    const filler = path.join(hostDir, "filler");
    const fd = fs.openSync(filler, "w");
    try {
      for (;;) fs.writeSync(fd, Buffer.alloc(4096));
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe("ENOSPC");
    } finally {
      fs.closeSync(fd);
    }
    const res = await rawRequest(a, "PUT", "/v1/vms/vm-new", { token: c.launch.token, body: JSON.stringify(vmSpec(c, "vm-new")) });
    expect(res.status).toBe(503);
    expect(res.body.error).toMatch(/^cannot write .*state\.json: ENOSPC.*; nothing was started or changed$/);
    expect(qemuProcessesFor(c.dir, "vm-new")).toEqual([]);
    expect((await client.health()).persistError).toMatch(/ENOSPC/);
    expect((await client.getVm("vm-disk"))?.observed.state).toBe("running");
    // Space again: the retry writes the state, and the agent serves on as before.
    fs.rmSync(filler);
    await new Promise((r) => setTimeout(r, 1500));
    expect((await client.health()).persistError).toBeUndefined();
    await client.putVm("vm-new", vmSpec(c, "vm-new"));
    await waitForVm(client, "vm-new", (x) => x.observed.state === "running");
    // The mount point itself cannot be removed, so the agent is shut down through its API here.
    await client.shutdown();
    expect(qemuProcessesFor(c.dir, "vm-new")).toEqual([]);
    expect(qemuProcessesFor(c.dir, "vm-disk")).toEqual([]);
  } finally {
    await execa("umount", ["--lazy", hostDir], { reject: false });
    delete c.agents[1];
  }
});

test("a VM whose QEMU refuses to start leaves nothing behind, as a create and as a migration target", async () => {
  const a = c.agents[0] ?? (await c.start(0));
  // 1024 vCPUs pass the allowlist but QEMU's pc machine takes at most 255: it exits at once.
  const spec = vmSpec(c, "vm-refused", { vcpus: 1024 });
  for (const p of ["/v1/vms/vm-refused", "/v1/vms/vm-refused/incoming"]) {
    const res = await rawRequest(a, p.endsWith("incoming") ? "POST" : "PUT", p, { token: c.launch.token, body: JSON.stringify(spec) });
    expect(res.status).toBe(500);
    expect(res.body.error).toMatch(/^VM vm-refused: qemu: VM vm-refused failed to start: .*(max CPUs|Invalid SMP)/i);
    expect(await c.client().getVm("vm-refused")).toBeUndefined();
    expect(fs.existsSync(path.join(a.stateDir, "vms", "vm-refused"))).toBe(false);
    expect(qemuProcessesFor(c.dir, "vm-refused")).toEqual([]);
  }
});

test("a migration target that was never sent its VM is not taken for the VM: the desired state starts it afresh", async () => {
  const a = c.agents[0] ?? (await c.start(0));
  const spec = vmSpec(c, "vm-waiting");
  const waiting = await c.client(a).incoming("vm-waiting", spec);
  expect(waiting.observed.incoming).toMatch(/^unix:.*\/vms\/vm-waiting\/migrate\.sock$/);
  const put = await c.client(a).putVm("vm-waiting", spec);
  expect(put.observed.incoming).toBeUndefined();
  expect(put.observed.starts).toBe(waiting.observed.starts + 1);
  const done = await waitForVm(c.client(a), "vm-waiting", (v) => v.job.state === "done");
  expect(done.job.output).toBe("job-42\n");
  expect(qemuProcessesFor(c.dir, "vm-waiting")).toEqual([done.observed.pid]);
  await c.client(a).deleteVm("vm-waiting");
});

test("a VM paused after a migration whose target is gone runs on and migrates again: its guest state is not lost", async () => {
  const a = c.agents[0] ?? (await c.start(0));
  const b = c.agents[1] ?? (await c.start(1));
  const spec = vmSpec(c, "vm-twice");
  await c.client(a).putVm("vm-twice", spec);
  const first = await waitForVm(c.client(a), "vm-twice", (v) => v.job.state === "done");
  // A migration completes behind the agent's back (as when the agent was killed mid-way), then its target dies.
  const lost = await c.client(b).incoming("vm-twice", spec);
  await qmpCommand(path.join(a.stateDir, "vms", "vm-twice", "qmp.sock"), "migrate", { uri: lost.observed.incoming });
  for (let i = 0; ; i++) {
    const m = (await qmpCommand(path.join(a.stateDir, "vms", "vm-twice", "qmp.sock"), "query-migrate")) as { status?: string };
    if (m.status === "completed") break;
    if (i > 600) throw new Error(`migration did not complete: ${JSON.stringify(m)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const target = qemuProcessesFor(c.dir, "vm-twice").filter((pid) => pid !== first.observed.pid);
  expect(target).toHaveLength(1);
  process.kill(target[0], "SIGKILL");
  while (!processEnded(target[0])) await new Promise((r) => setTimeout(r, 20));

  // The source is paused in postmigrate: a new migration resumes it first, then carries it over.
  const again = await c.client(b).incoming("vm-twice", spec);
  await c.client(a).migrate("vm-twice", again.observed.incoming!);
  const moved = await waitForVm(c.client(b), "vm-twice", (v) => v.observed.state === "running");
  expect(qemuProcessesFor(c.dir, "vm-twice")).toEqual([moved.observed.pid]);
  expect(await c.client(a).getVm("vm-twice")).toBeUndefined();
  // Its job ran once, on the first host: the guest was carried over, not booted again.
  expect(fs.readFileSync(path.join(b.stateDir, "vms", "vm-twice", "console.log"), "utf8")).not.toContain("Linux version");
  await c.client(b).deleteVm("vm-twice");
});
