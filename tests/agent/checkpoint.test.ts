// Checkpoint and restore with real QEMU guests: a guest in the middle of its
// job is saved to the host's store, its QEMU ended, and the checkpoint restored
// on another agent, where the job finishes with the right output without
// starting over. A checkpoint restores only into the same profile and image,
// and a corrupt one (one byte flipped) is refused by its checksum.
import * as fs from "fs";
import * as path from "path";
import type { CheckpointMeta } from "../../provider/agent/checkpoint";
import type { AccountingStackState } from "../../provider/cli/accounting";
import { listStackCheckpoints, restoreVmCheckpoint, saveVmCheckpoint } from "../../provider/cli/checkpoint";
import { CHECKPOINT_SAVING } from "../../provider/agent/checkpoint";
import { vmPaths } from "../../provider/drivers/qemu";
import { saveState } from "../../provider/drivers/qemu-warm";
import { qmpCommand } from "../../provider/drivers/qmp";
import { jobEnv, rawRequest, testCluster, TestCluster, vmSpec, waitForVm } from "../support/agent";
import { processesUnder, qemuProcessesFor } from "../support/stack";

jest.setTimeout(6 * 60 * 1000);

let c: TestCluster;

beforeAll(async () => {
  c = await testCluster();
  await c.start(0);
  await c.start(1);
});

afterAll(async () => {
  const dir = c.dir;
  await c.stop();
  expect(processesUnder(dir)).toEqual([]);
});

/** The test cluster as a stack's state shows it (what `vse checkpoint` reads). */
function stackState(): AccountingStackState {
  return {
    clusters: [
      { name: "c", clusterKey: c.key, token: c.launch.token, agents: c.agents.map((a, host) => ({ host, url: a.url, pid: a.pid, stateDir: a.stateDir })) },
    ],
    vms: ["vm-ckpt", "vm-ck2"].map((name) => ({ name, cluster: "c", host: 0, hypervisor: "qemu", launch: "cold", status: "running" })),
    extra: { c: { ca: null, info: {} } },
  };
}

const STEPS = 20;
/** Counts for STEPS seconds, then prints the sum: a job whose result depends on every step having run once. */
const SUM_JOB = jobEnv("stay-up", [
  "/bin/sh",
  "-c",
  `i=0; s=0; while [ $i -lt ${STEPS} ]; do i=$((i+1)); s=$((s+i)); echo step-$i; sleep 1; done; echo sum=$s`,
]);
const EXPECTED = Array.from({ length: STEPS }, (_, i) => `step-${i + 1}\n`).join("") + `sum=${(STEPS * (STEPS + 1)) / 2}\n`;

function lastStep(text: string | undefined): number {
  const steps = [...(text ?? "").matchAll(/step-(\d+)/g)].map((m) => Number(m[1]));
  return steps.length ? Math.max(...steps) : 0;
}

test("a guest checkpointed mid-job, its QEMU ended, restored on another agent, finishes its job there with the right output", async () => {
  const h0 = c.client(c.agents[0]);
  const h1 = c.client(c.agents[1]);
  const spec = vmSpec(c, "vm-ckpt", { env: SUM_JOB });
  await h0.putVm("vm-ckpt", spec);
  await waitForVm(h0, "vm-ckpt", (v) => lastStep(v.consoleTail) >= 3, 180000);

  const saved = await rawRequest(c.agents[0], "POST", "/v1/vms/vm-ckpt/checkpoint", { token: c.launch.token, body: "{}" });
  expect(saved.status).toBe(200);
  const id = saved.body.checkpoint as string;
  expect(id).toMatch(/^[0-9a-f]{64}$/);
  const dir = path.join(c.cacheDir, "checkpoints", id);
  const meta = JSON.parse(fs.readFileSync(path.join(dir, "meta.json"), "utf8")) as CheckpointMeta;
  expect(meta).toEqual(expect.objectContaining({ id, vm: "vm-ckpt", facts: expect.objectContaining({ memoryMiB: 128, vcpus: 1 }) }));
  expect(meta.spec.config).toBe(spec.config);
  const atSave = lastStep(fs.readFileSync(path.join(dir, "console.log"), "utf8"));
  expect(atSave).toBeGreaterThanOrEqual(3);
  expect(atSave).toBeLessThan(STEPS);
  const listed = await rawRequest(c.agents[1], "GET", "/v1/checkpoints", { token: c.launch.token });
  expect((listed.body.checkpoints as CheckpointMeta[]).map((m) => m.id)).toEqual([id]);
  // What `vse checkpoint list` shows: the two agents share one store, so one checkpoint on both hosts.
  const stack = stackState();
  expect((await listStackCheckpoints(stack)).map((m) => [m.id, m.vm, m.hosts])).toEqual([[id, "vm-ckpt", [0, 1]]]);

  // The source runs on after the save; `vse checkpoint restore … --host 1` ends it, as a job preempted at its checkpoint, then restores on host 1.
  const source = (await h0.getVm("vm-ckpt"))!.observed;
  expect(source.state).toBe("running");
  const r = await restoreVmCheckpoint(stack, id, "vm-ckpt", 1);
  expect(r.stoppedOn).toEqual([0]);
  expect(r.host).toBe(1);
  expect(await h0.getVm("vm-ckpt")).toBeUndefined();
  expect(qemuProcessesFor(c.dir, "vm-ckpt")).toEqual([r.pid]);
  const restored = (await h1.getVm("vm-ckpt"))!;
  expect(restored.spec.restoreFrom).toBe(`checkpoint:${id}`);
  expect(restored.observed).toEqual(expect.objectContaining({ starts: 1, message: `restored from checkpoint:${id}` }));
  const done = await waitForVm(h1, "vm-ckpt", (v) => v.job.state === "done", 180000);
  // Every step once, in order, and the right sum: the job went on from its checkpoint, it did not start over.
  expect(done.job).toEqual({ state: "done", exitCode: 0, output: EXPECTED });
  const consoleAfter = fs.readFileSync(path.join(c.agents[1].stateDir, "vms", "vm-ckpt", "console.log"), "utf8");
  expect(consoleAfter).not.toMatch(/step-1\n/);
  expect(qemuProcessesFor(c.dir, "vm-ckpt")).toEqual([done.observed.pid]);
  await h1.deleteVm("vm-ckpt");
});

test("a checkpoint restores only into the same profile, and a corrupt one is refused by its checksum; nothing is left running", async () => {
  const h0 = c.client(c.agents[0]);
  const spec = vmSpec(c, "vm-ck2", { env: SUM_JOB });
  await h0.putVm("vm-ck2", spec);
  await waitForVm(h0, "vm-ck2", (v) => lastStep(v.consoleTail) >= 1, 180000);
  // As `vse checkpoint save vm-ck2` does it: the VM's agent, found from the stack's state.
  const { checkpoint: id, host } = await saveVmCheckpoint(stackState(), "vm-ck2");
  expect(host).toBe(0);
  await h0.deleteVm("vm-ck2");

  const put = (host: number, body: unknown) =>
    rawRequest(c.agents[host], "PUT", "/v1/vms/vm-ck2", { token: c.launch.token, body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });

  const bigger = vmSpec(c, "vm-ck2", { env: SUM_JOB, memoryMiB: 256 });
  const mismatch = await put(1, { ...bigger, restoreFrom: `checkpoint:${id}` });
  expect(mismatch.status).toBe(400);
  expect(mismatch.body.error).toMatch(/^restoreFrom: checkpoint [0-9a-f]{64} was taken of VM vm-ck2 with memoryMiB 128; this VM has memoryMiB 256: /);

  const unknown = await put(1, { ...spec, restoreFrom: `checkpoint:${"0".repeat(64)}` });
  expect(unknown.status).toBe(400);
  expect(unknown.body.error).toContain(`no checkpoint ${"0".repeat(64)} in this host's store`);

  const malformed = await put(1, { ...spec, restoreFrom: "checkpoint:../../etc" });
  expect(malformed.status).toBe(400);
  expect(malformed.body.error).toMatch(/^restoreFrom: expected "checkpoint:<64 hex digits>"/);

  // One byte flipped in the middle of the saved state.
  const file = path.join(c.cacheDir, "checkpoints", id, "vmstate");
  const fd = fs.openSync(file, "r+");
  const at = Math.floor(fs.fstatSync(fd).size / 2);
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0] ^= 0xff;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);
  const corrupt = await put(1, { ...spec, restoreFrom: `checkpoint:${id}` });
  expect(corrupt.status).toBe(400);
  expect(corrupt.body.error).toMatch(new RegExp(`^restoreFrom: checkpoint ${id} is corrupt: its state's sha256 is [0-9a-f]{64}; nothing was started$`));
  expect(qemuProcessesFor(c.dir, "vm-ck2")).toEqual([]);
  expect(await c.client(c.agents[1]).getVm("vm-ck2")).toBeUndefined();
});

test("checkpoint of a VM that does not run here: 404; a body other than {}: 400", async () => {
  const none = await rawRequest(c.agents[0], "POST", "/v1/vms/vm-none/checkpoint", { token: c.launch.token, body: "{}" });
  expect(none.status).toBe(404);
  const body = await rawRequest(c.agents[0], "POST", "/v1/vms/vm-none/checkpoint", { token: c.launch.token, body: '{"stop":true}' });
  expect(body.status).toBe(400);
  const noToken = await rawRequest(c.agents[0], "POST", "/v1/vms/vm-none/checkpoint", { body: "{}" });
  expect(noToken.status).toBe(401);
});

test("an agent that died while saving a checkpoint resumes the stopped guest on restart, instead of taking it for one that migrated away", async () => {
  const a = c.agents[0];
  const spec = vmSpec(c, "vm-ck3", { env: SUM_JOB });
  await c.client(a).putVm("vm-ck3", spec);
  const up = await waitForVm(c.client(a), "vm-ck3", (v) => lastStep(v.consoleTail) >= 1, 180000);
  process.kill(a.pid, "SIGKILL");
  while (fs.existsSync(`/proc/${a.pid}/cmdline`) && fs.readFileSync(`/proc/${a.pid}/cmdline`).length > 0) await new Promise((r) => setTimeout(r, 20));
  // Where the dead agent's save had got to: the marker written, the guest's state saved, QEMU stopped after it (postmigrate).
  const dir = path.join(a.stateDir, "vms", "vm-ck3");
  fs.writeFileSync(path.join(dir, CHECKPOINT_SAVING), "");
  await saveState(vmPaths(dir), path.join(c.dir, "half-saved"));
  expect(((await qmpCommand(vmPaths(dir).qmp, "query-status")) as { status: string }).status).toBe("postmigrate");
  const back = await c.start(0);
  const v = await c.client(back).getVm("vm-ck3");
  expect(v?.observed).toEqual(expect.objectContaining({ state: "running", pid: up.observed.pid }));
  expect(((await qmpCommand(vmPaths(dir).qmp, "query-status")) as { status: string }).status).toBe("running");
  expect(fs.existsSync(path.join(dir, CHECKPOINT_SAVING))).toBe(false);
  const at = lastStep(v?.consoleTail);
  await waitForVm(c.client(back), "vm-ck3", (x) => lastStep(x.consoleTail) > at, 60000);
  await c.client(back).deleteVm("vm-ck3");
});
