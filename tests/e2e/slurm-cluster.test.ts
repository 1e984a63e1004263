// examples/slurm-cluster through the real engine against the real Slurm of
// scripts/slurm-up.sh: `pulumi up` allocates the cluster's 2 hosts as one
// Slurm job (its id in the cluster's outputs), the VMs run their job on the
// Slurm nodes (job output as VM outputs), a preview right after shows no
// change, and `pulumi destroy` releases the allocation. Then, on a new
// allocation, `scancel` from outside: the agents power the VMs off,
// `pulumi refresh` shows the allocation ended and the VMs not running.
import * as fs from "fs";
import * as path from "path";
import { PROJECT_ROOT } from "../../provider/cli/engine";
import { clusterKey } from "../../provider/drivers/network";
import { scontrolJob, squeueState } from "../../provider/allocation/slurm";
import { ensureSlurm, jobsNamed } from "../support/slurm";
import { createTestStack, processesUnder, TestStack, upAndCheckNoDiff } from "../support/stack";

jest.setTimeout(20 * 60 * 1000);

let t: TestStack;

interface ClusterState {
  allocationInfo: Record<string, string>;
  agents: { host: number; url: string; healthy: boolean }[];
}

/** A resource's outputs as the stack's state holds them (refresh updates these, not the stack outputs). */
async function resourceOutputs(urnTail: string): Promise<Record<string, unknown>> {
  const state = await t.stack.exportStack();
  const resources = (state.deployment as { resources?: { urn: string; outputs?: Record<string, unknown> }[] }).resources ?? [];
  const r = resources.find((x) => x.urn.endsWith(urnTail));
  if (!r?.outputs) throw new Error(`no ${urnTail} in the stack's state`);
  return r.outputs;
}

async function clusterState(): Promise<ClusterState> {
  return (await resourceOutputs("vse:VirtualCluster::slurm-cluster")) as unknown as ClusterState;
}

async function vmOutputs(): Promise<Record<string, { status: string; output: string | null; exitCode: number | null }>> {
  return (await t.stack.outputs()).vms.value;
}

beforeAll(async () => {
  await ensureSlurm();
  t = await createTestStack({ "cluster.yaml": fs.readFileSync(path.join(PROJECT_ROOT, "examples", "slurm-cluster", "cluster.yaml"), "utf8") });
});

afterAll(async () => {
  if (t) await t.cleanup();
});

const jobName = () => `vse-slurm-cluster-${clusterKey("vse", t.name, "slurm-cluster")}`;

test("up allocates one Slurm job and runs the VMs on its nodes; destroy releases it", async () => {
  await upAndCheckNoDiff(t.stack);
  const c = await clusterState();
  const jobId = c.allocationInfo.slurmJobId;
  expect(jobId).toMatch(/^[0-9]+$/);
  expect(await jobsNamed(jobName())).toEqual([[jobId, "RUNNING"]]);
  expect(c.allocationInfo.nodes.split(",").sort()).toEqual(["vse-tslm-h0", "vse-tslm-h1"]);
  // The agents serve over TLS on the Slurm nodes' addresses.
  for (const a of c.agents) expect(a.url).toMatch(/^https:\/\/10\.213\.1\.[0-9]+:[0-9]+$/);
  const vms = await vmOutputs();
  for (const vm of ["slurm-cluster-0", "slurm-cluster-1"]) {
    expect(vms[vm]).toMatchObject({ status: "running", exitCode: 0 });
    expect(vms[vm].output?.trim()).toBe("5");
  }

  await t.stack.destroy();
  expect(await squeueState(jobId)).toBeUndefined();
  expect(await jobsNamed(jobName())).toEqual([]);
  expect((await scontrolJob(jobId))?.JobState).toBe("COMPLETED");
  expect(processesUnder(t.stateRoot)).toEqual([]);
});

test("scancel from outside: VMs powered off, refresh shows the allocation ended and the VMs not running", async () => {
  await t.stack.up();
  const jobId = (await clusterState()).allocationInfo.slurmJobId;
  expect(processesUnder(t.stateRoot).filter((p) => path.basename(p.argv[0]).startsWith("qemu-system"))).toHaveLength(2);

  await require("execa")("scancel", [jobId]);
  const end = Date.now() + 120000;
  while ((processesUnder(t.stateRoot).length > 0 || (await squeueState(jobId))) && Date.now() < end) await new Promise((r) => setTimeout(r, 500));
  expect(processesUnder(t.stateRoot)).toEqual([]);

  await t.stack.refresh();
  const c = await clusterState();
  expect(c.allocationInfo.allocation).toMatch(new RegExp(`^ended: Slurm job ${jobId} CANCELLED`));
  expect(c.agents.map((a) => a.healthy)).toEqual([false, false]);
  for (const vm of ["slurm-cluster-0", "slurm-cluster-1"]) {
    const o = await resourceOutputs(`vse:VirtualMachine::${vm}`);
    // Not "unreachable": the VM knows its allocation (allocationRef) and the scheduler says it ended.
    expect(o.status).toBe("stopped");
    expect(o.message).toContain(`allocation ended: Slurm job ${jobId} CANCELLED`);
  }
  expect(await jobsNamed(jobName())).toEqual([]);
  // An ended allocation cannot be resumed: the next up would make a new one (the cluster and its VMs replaced).
  const preview = await t.stack.preview();
  expect(preview.changeSummary.replace).toBe(3);
  // Destroy goes through: the VMs' allocation ended (their agents powered them off), the cluster's release finds nothing running.
  await t.stack.destroy();
  expect(processesUnder(t.stateRoot)).toEqual([]);
  const clusters = path.join(t.stateRoot, "clusters");
  expect(fs.existsSync(clusters) ? fs.readdirSync(clusters) : []).toEqual([]);
});
