// The recovery policy (issue 9, agent/recovery.ts) over eight namespace hosts
// with real QEMU guests: when failure detection records a lost host,
// `terminate` stops every survivor's VMs cleanly and ends every agent
// (nothing left running), and `restart` brings the lost host's VM back on a
// survivor from the replica its watchers held, where its job runs again.
// Needs root (iproute2), QEMU and the compiled agent (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import type { FailureRecord, FailureView } from "../../provider/agent/heartbeat";
import { readFailures } from "../../provider/agent/heartbeat";
import { writeMembership } from "../../provider/agent/membership";
import { newClusterToken } from "../../provider/agent/protocol";
import { ClusterAgentsIndex, readClusterFailures, RecoveryPolicy, vmFate, writeRecoveryPolicy } from "../../provider/agent/recovery";
import { AgentLaunch, isAgentProcess } from "../../provider/allocation/local";
import { netnsLeftovers, netnsPids, NetnsHosts, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { StaticAgentRecord, startStaticCluster, staticClient, stopStaticCluster } from "../../provider/allocation/static";
import { clusterKey } from "../../provider/drivers/network";
import { vmSpec, waitForVm } from "../support/agent";
import { processesUnder, processEnded } from "../support/stack";

jest.setTimeout(300 * 1000);

const TAG = "tfd";
const SUBNET = "10.213.5.0/26";
const N = 8;
let dir: string;
let cacheDir: string;
let hosts: NetnsHosts;

interface Cluster {
  key: string;
  clusterDir: string;
  launch: AgentLaunch;
  ca: string;
  agents: StaticAgentRecord[];
}
const clusters: Cluster[] = [];

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-fr-"));
  cacheDir = path.join(dir, "cache");
  hosts = await setUpNetnsHosts({ tag: TAG, count: N, subnet: SUBNET });
});

afterAll(async () => {
  try {
    for (const c of clusters) await stopStaticCluster(c.clusterDir, c.agents, c.launch, c.ca).catch(() => undefined);
  } finally {
    await tearDownNetnsHosts(TAG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function startCluster(name: string, policy: RecoveryPolicy): Promise<Cluster> {
  const clusterDir = path.join(dir, "clusters", name);
  const key = clusterKey("test", path.basename(dir), name);
  const launch: AgentLaunch = { token: newClusterToken(key), clusterKey: key, imageStore: path.join(cacheDir, "images") };
  const { ca, agents } = await startStaticCluster(
    clusterDir,
    launch,
    hosts.hosts.map((h) => ({ address: h.address, netns: h.netns })),
  );
  const c: Cluster = { key, clusterDir, launch, ca: ca.cert, agents };
  clusters.push(c);
  const urls = agents.map((a) => ({ host: a.host, url: a.url }));
  for (const a of agents) {
    writeRecoveryPolicy(a.stateDir, policy);
    const children = [2 * a.host + 1, 2 * a.host + 2].filter((x) => x < N);
    writeMembership(a.stateDir, { self: a.host, fanout: 2, parent: a.host === 0 ? null : Math.floor((a.host - 1) / 2), children, agents: urls });
  }
  for (const a of agents) {
    for (let i = 0; !(await failures(c, a.host).catch(() => undefined)); i++) {
      if (i > 100) throw new Error(`host ${a.host}: heartbeats did not start`);
      await sleep(100);
    }
  }
  return c;
}

function failures(c: Cluster, host: number): Promise<FailureView> {
  return staticClient(c.agents[host], c.launch.token, c.ca).request<FailureView>("GET", "/v1/cluster/failures", undefined, 5000);
}

const client = (c: Cluster, host: number) => staticClient(c.agents[host], c.launch.token, c.ca);
const indexOf = (c: Cluster): ClusterAgentsIndex => ({ urls: c.agents.map((a) => a.url), stateDirs: c.agents.map((a) => a.stateDir), ca: c.ca });

/** A whole host lost: every process in its namespace (its agent and its QEMUs) killed at once. */
async function loseHost(host: number): Promise<void> {
  for (const pid of await netnsPids(hosts.hosts[host].netns)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, ms = 120000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

test("terminate: a lost host ends the cluster, every survivor's VM stopped cleanly and every agent gone", async () => {
  const c = await startCluster("term", "terminate");
  const spec = vmSpec({ key: c.key, cacheDir }, "job-t");
  await client(c, 4).putVm("job-t", spec);
  const v = await waitForVm(client(c, 4), "job-t", (x) => x.job.state === "done", 120000);
  expect(v.job.output).toContain("job-42");
  const qemuPid = v.observed.pid!;
  expect(qemuPid).toBeGreaterThan(0);

  process.kill(c.agents[6].pid, "SIGKILL");
  // Every agent ends: the survivors when the coordinator tells them, the coordinator after them.
  for (const a of c.agents) await waitFor(`agent of host ${a.host} to end`, async () => (isAgentProcess(a.pid, a.stateDir) ? undefined : true));
  // The survivor's VM was stopped by its agent (a clean stop through the driver), not left behind.
  expect(processEnded(qemuPid)).toBe(true);
  expect(fs.readFileSync(path.join(c.agents[4].stateDir, "agent.log"), "utf8")).toMatch(/terminate requested by host 0: host 6 lost/);
  const state = JSON.parse(fs.readFileSync(path.join(c.agents[4].stateDir, "state.json"), "utf8")) as { vms: unknown[] };
  expect(state.vms).toEqual([]);
  // The coordinator's record outlives it: who was lost, who saw it, what was done.
  const rec = readFailures(c.agents[0].stateDir)!.find((f) => f.host === 6)!;
  expect(rec.detectedBy.length).toBeGreaterThanOrEqual(2);
  expect(rec.recovery?.policy).toBe("terminate");
  const terminated = rec.recovery!.actions.filter((a) => a.ok && a.action.startsWith("terminated")).map((a) => a.host);
  expect(terminated.sort()).toEqual([0, 1, 2, 3, 4, 5, 7]);
  expect(processesUnder(c.clusterDir)).toEqual([]);
  // What refresh shows: no agent answers, the record comes from what they left on disk; the VM was terminated.
  const seen = await readClusterFailures(indexOf(c), c.launch.token);
  expect(seen?.from).toMatch(/left on this machine/);
  const fate = vmFate(seen!.failures, "job-t", c.agents[4].url, indexOf(c).urls);
  expect(fate).toEqual({ status: "terminated", message: `terminated: host 6 lost (detected by ${rec.detectedBy.map((d) => d.host).join(",")})` });
  await stopStaticCluster(c.clusterDir, c.agents, c.launch, c.ca);
  clusters.splice(clusters.indexOf(c), 1);
});

test("restart: the lost host's VM runs again on a survivor and its job's output is there", async () => {
  const c = await startCluster("rst", "restart");
  const spec = vmSpec({ key: c.key, cacheDir }, "job-r");
  await client(c, 5).putVm("job-r", spec);
  await waitForVm(client(c, 5), "job-r", (x) => x.job.state === "done", 120000);
  // The VM's spec has reached the hosts that watch host 5 (its beats carry the new version, they fetch the replica).
  await sleep(3000);

  await loseHost(5);
  const rec = await waitFor<FailureRecord>("the restart to be recorded", async () => {
    const r = (await failures(c, 0)).failures.find((f) => f.host === 5);
    return r?.recovery?.actions.some((a) => a.vm === "job-r") ? r : undefined;
  });
  expect(rec.detectedBy.length).toBeGreaterThanOrEqual(2);
  expect(rec.replica?.vms.map((v) => v.name)).toEqual(["job-r"]);
  const action = rec.recovery!.actions.find((a) => a.vm === "job-r")!;
  expect(action).toMatchObject({ ok: true, action: `restarted on host ${action.host}` });
  expect(action.host).not.toBe(5);
  const there = await waitForVm(client(c, action.host!), "job-r", (x) => x.job.state === "done", 180000);
  expect(there.job).toMatchObject({ state: "done", exitCode: 0 });
  expect(there.job.output).toContain("job-42");
  expect(there.spec.config).toBe(spec.config);
  // What refresh shows for the VM: restarted, and where it runs now (its recorded host and agent follow it).
  const seen = await readClusterFailures(indexOf(c), c.launch.token);
  expect(seen?.from).toBe("the coordinator, host 0");
  const fate = vmFate(seen!.failures, "job-r", c.agents[5].url, indexOf(c).urls);
  expect(fate).toMatchObject({ status: "restarted", host: action.host, agentUrl: c.agents[action.host!].url });
  expect(fate?.message).toMatch(new RegExp(`^restarted on host ${action.host} at .*: host 5 lost \\(detected by [0-9,]+\\)$`));
  // Every other survivor still runs, with nothing of job-r.
  for (const a of c.agents.filter((x) => x.host !== 5 && x.host !== action.host)) {
    expect(isAgentProcess(a.pid, a.stateDir)).toBe(true);
    expect(await client(c, a.host).getVm("job-r")).toBeUndefined();
  }
  await stopStaticCluster(c.clusterDir, c.agents, c.launch, c.ca);
  clusters.splice(clusters.indexOf(c), 1);
});

test("nothing is left: no agent, QEMU, namespace or link", async () => {
  await tearDownNetnsHosts(TAG);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  expect(processesUnder(dir)).toEqual([]);
});
