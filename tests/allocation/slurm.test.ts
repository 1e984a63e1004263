// The `slurm` allocation manager against the real daemons of
// scripts/slurm-up.sh (munged, slurmctld, one slurmd in each namespace host
// vse-tslm-h<i>): an allocation of 2 nodes is one Slurm job whose srun'd
// agents answer over TLS on the nodes' addresses; a QEMU job runs through
// one of them; release leaves no job, agent, QEMU or state; scancel from
// outside makes the agents power their VMs off and leave nothing; a bad
// partition is refused by Slurm with an error naming the field, leaving nothing.
// Needs root and the compiled agent (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { newClusterToken } from "../../provider/agent/protocol";
import { agentClient, AllocationRequest, ClusterAgents } from "../../provider/allocation/allocator";
import { netnsLeftovers } from "../../provider/allocation/netns";
import { scontrolJob, SlurmAgentRecord, slurmAllocator, squeueState } from "../../provider/allocation/slurm";
import { clusterKey } from "../../provider/drivers/network";
import type { AllocationModel } from "../../provider/model/resolve";
import { vmSpec, waitForVm } from "../support/agent";
import { ensureSlurm, jobsNamed, netnsOf, SLURM_TAG } from "../support/slurm";
import { processesUnder } from "../support/stack";

jest.setTimeout(240 * 1000);

let dir: string;
const made: { req: AllocationRequest; state?: ClusterAgents }[] = [];

function request(name: string, slurm: Record<string, unknown> = { partition: "debug", timeLimit: 30 }): AllocationRequest {
  const key = clusterKey("test", path.basename(dir), name);
  const allocation = { manager: "slurm", hosts: 2, port: 7443, slurm } as unknown as AllocationModel;
  const req: AllocationRequest = {
    clusterName: name,
    clusterKey: key,
    clusterDir: path.join(dir, "clusters", `${name}-${key}`),
    launch: { token: newClusterToken(key), clusterKey: key, imageStore: path.join(dir, "cache", "images") },
    allocation,
  };
  made.push({ req });
  return req;
}

async function waitUntil<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 120000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

beforeAll(async () => {
  await ensureSlurm();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-slurm-"));
});

afterAll(async () => {
  // Whatever a failed test left: its agents and VMs stopped, its job cancelled.
  for (const m of made) {
    if (m.state) await slurmAllocator.release(m.req, m.state).catch(() => undefined);
    for (const [id] of await jobsNamed(`vse-${m.req.clusterName}-${m.req.clusterKey}`)) await require("execa")("scancel", [id], { reject: false });
  }
  fs.rmSync(dir, { recursive: true, force: true });
  // The Slurm nodes' namespace hosts stay for the next test file; only they carry the tag.
  const left = await netnsLeftovers(SLURM_TAG);
  expect(left.netns.sort()).toEqual(["vse-tslm-h0", "vse-tslm-h1"]);
});

test("allocate 2 hosts: one Slurm job, agents on both nodes over TLS, a QEMU job through one, release leaves nothing", async () => {
  const req = request("alloc");
  const state = await slurmAllocator.allocate(req);
  made[made.length - 1].state = state;
  const jobId = state.info.slurmJobId;
  expect(jobId).toMatch(/^[0-9]+$/);
  // Slurm lists it, running, under the cluster's job name, on two distinct nodes.
  expect(await jobsNamed(`vse-alloc-${req.clusterKey}`)).toEqual([[jobId, "RUNNING"]]);
  const agents = state.agents as SlurmAgentRecord[];
  expect(agents.map((a) => a.host)).toEqual([0, 1]);
  expect(new Set(agents.map((a) => a.node)).size).toBe(2);
  expect(state.info.nodes.split(",").sort()).toEqual(["vse-tslm-h0", "vse-tslm-h1"]);
  expect(state.ca).toContain("BEGIN CERTIFICATE");
  for (const a of agents) {
    expect(a.url).toBe(`https://${a.address}:${a.port}`);
    expect(a.address).toMatch(/^10\.213\.1\.[0-9]+$/);
    expect(a.stateDir).toBe(path.join(req.clusterDir, `host-${a.host}`));
    expect((await agentClient(a.url, req.launch.token, state.ca).health()).pid).toBe(a.pid);
    expect(await slurmAllocator.healthy(req, state, a)).toBe(true);
    // The agent runs on its Slurm node (the namespace host), not beside the test.
    expect(netnsOf(a.pid)).not.toBe(netnsOf(process.pid));
  }
  expect(await slurmAllocator.status!(req, state)).toEqual({ active: true });

  // A QEMU VM runs its job through the agent on host 1.
  const c = { key: req.clusterKey, cacheDir: path.join(dir, "cache") };
  const client = agentClient(agents[1].url, req.launch.token, state.ca);
  await client.putVm("alloc-1", vmSpec(c, "alloc-1"));
  const v = await waitForVm(client, "alloc-1", (x) => x.job.exitCode !== undefined);
  expect(v.job.exitCode).toBe(0);
  expect(v.job.output?.trim()).toBe("job-42");
  const qemu = processesUnder(req.clusterDir).filter((p) => path.basename(p.argv[0]).startsWith("qemu-system"));
  expect(qemu).toHaveLength(1);
  expect(netnsOf(qemu[0].pid)).toBe(netnsOf(agents[1].pid));

  await slurmAllocator.release(req, state);
  made[made.length - 1].state = undefined;
  expect(await squeueState(jobId)).toBeUndefined();
  expect(await jobsNamed(`vse-alloc-${req.clusterKey}`)).toEqual([]);
  expect(processesUnder(req.clusterDir)).toEqual([]);
  expect(fs.existsSync(req.clusterDir)).toBe(false);
  // The job ended because its agents did: completed, not cancelled under them.
  expect((await scontrolJob(jobId))?.JobState).toBe("COMPLETED");
});

test("scancel of the allocation: the agents power their VMs off and leave no process; status reports the cancellation", async () => {
  const req = request("cancel");
  const state = await slurmAllocator.allocate(req);
  made[made.length - 1].state = state;
  const jobId = state.info.slurmJobId;
  const c = { key: req.clusterKey, cacheDir: path.join(dir, "cache") };
  const clients = state.agents.map((a) => agentClient(a.url, req.launch.token, state.ca));
  // One VM per host, each asked to stop with a grace period, as the VM resource does.
  for (const [h, client] of clients.entries()) await client.putVm(`cancel-${h}`, { ...vmSpec(c, `cancel-${h}`), stopGraceSeconds: 2 });
  for (const [h, client] of clients.entries()) await waitForVm(client, `cancel-${h}`, (x) => x.job.exitCode === 0);
  const qemu = processesUnder(req.clusterDir).filter((p) => path.basename(p.argv[0]).startsWith("qemu-system"));
  expect(qemu).toHaveLength(2);

  await require("execa")("scancel", [jobId]);
  await waitUntil("the job to leave squeue", async () => (await squeueState(jobId)) === undefined);
  await waitUntil("every process under the cluster directory to end", () => processesUnder(req.clusterDir).length === 0);
  for (const a of state.agents) {
    const log = fs.readFileSync(path.join(a.stateDir, "agent.log"), "utf8");
    // Powered off through the driver by the agent itself, not killed with it.
    expect(log).toMatch(/SIGTERM: powering every VM off, then exiting/);
    expect(log).toMatch(/every VM powered off and removed/);
    // No VM directory (console, pidfile, sockets) is left on the host.
    expect(fs.readdirSync(path.join(a.stateDir, "vms"))).toEqual([]);
  }
  expect(await slurmAllocator.healthy(req, state, state.agents[0])).toBe(false);
  const status = await slurmAllocator.status!(req, state);
  expect(status.active).toBe(false);
  expect(status.reason).toMatch(new RegExp(`^Slurm job ${jobId} CANCELLED`));

  // Release after the fact: nothing to stop, the state goes.
  await slurmAllocator.release(req, state);
  made[made.length - 1].state = undefined;
  expect(fs.existsSync(req.clusterDir)).toBe(false);
});

test("a partition Slurm does not have: a clear error naming the field, and nothing left", async () => {
  const req = request("badpart", { partition: "nosuchpart" });
  await expect(slurmAllocator.allocate(req)).rejects.toThrow(/^allocation\.slurm\.partition: Slurm refused partition "nosuchpart": .*Invalid partition name/);
  expect(fs.existsSync(req.clusterDir)).toBe(false);
  expect(await jobsNamed(`vse-badpart-${req.clusterKey}`)).toEqual([]);
  expect(processesUnder(req.clusterDir)).toEqual([]);
  // A name that could be read as an option never reaches sbatch.
  await expect(slurmAllocator.allocate(request("badname", { partition: "--uid=0" }))).rejects.toThrow(
    /^allocation\.slurm\.partition: expected a Slurm partition name/,
  );
});
