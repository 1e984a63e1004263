// Failure detection over a binomial graph (issue 9, seed 000 §3.3): eight
// namespace hosts, an agent in each serving HTTPS with the cluster's CA; each
// agent watches (i + 2^j) mod 8 (three peers) once its membership.json is
// written. A host lost by SIGKILL of its agent, or by cutting its link, is
// detected by several survivors, reported to the coordinator over the graph
// (around failed agents, also when the lost host is a tree parent) and
// recorded there. No VMs: recovery is `restart`, with nothing to restart.
// Needs root (iproute2) and the compiled agent (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { binomialTargets, binomialWatchers, FailureView, nextHops, readFailures } from "../../provider/agent/heartbeat";
import { writeMembership } from "../../provider/agent/membership";
import { newClusterToken } from "../../provider/agent/protocol";
import { writeRecoveryPolicy } from "../../provider/agent/recovery";
import { AgentLaunch, isAgentProcess } from "../../provider/allocation/local";
import { netnsLeftovers, NetnsHosts, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { StaticAgentRecord, startStaticCluster, staticClient, stopStaticCluster } from "../../provider/allocation/static";
import { clusterKey } from "../../provider/drivers/network";
import { processesUnder } from "../support/stack";

jest.setTimeout(180 * 1000);

const TAG = "tfd";
const SUBNET = "10.213.5.0/26";
const N = 8;
let dir: string;
let hosts: NetnsHosts;

interface Cluster {
  clusterDir: string;
  launch: AgentLaunch;
  ca: string;
  agents: StaticAgentRecord[];
  stopped: boolean;
}
const clusters: Cluster[] = [];

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-fd-"));
  hosts = await setUpNetnsHosts({ tag: TAG, count: N, subnet: SUBNET });
});

afterAll(async () => {
  try {
    for (const c of clusters) if (!c.stopped) await stopStaticCluster(c.clusterDir, c.agents, c.launch, c.ca).catch(() => undefined);
  } finally {
    await tearDownNetnsHosts(TAG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A fresh cluster on the eight hosts, its membership a binary tree (as the tree bootstrap writes it), recovery `restart`. */
async function withCluster(name: string, fn: (c: Cluster) => Promise<void>): Promise<void> {
  const c = await startCluster(name);
  try {
    await fn(c);
  } finally {
    await stopStaticCluster(c.clusterDir, c.agents, c.launch, c.ca);
    c.stopped = true;
  }
}

async function startCluster(name: string): Promise<Cluster> {
  const clusterDir = path.join(dir, "clusters", name);
  const k = clusterKey("test", path.basename(dir), name);
  const launch: AgentLaunch = { token: newClusterToken(k), clusterKey: k, imageStore: path.join(dir, "cache", "images") };
  const { ca, agents } = await startStaticCluster(
    clusterDir,
    launch,
    hosts.hosts.map((h) => ({ address: h.address, netns: h.netns })),
  );
  const c: Cluster = { clusterDir, launch, ca: ca.cert, agents, stopped: false };
  clusters.push(c);
  const urls = agents.map((a) => ({ host: a.host, url: a.url }));
  for (const a of agents) {
    writeRecoveryPolicy(a.stateDir, "restart");
    const children = [2 * a.host + 1, 2 * a.host + 2].filter((x) => x < N);
    writeMembership(a.stateDir, { self: a.host, fanout: 2, parent: a.host === 0 ? null : Math.floor((a.host - 1) / 2), children, agents: urls });
  }
  // Every agent serves its failure record once it has read its membership (looked for every second).
  for (const a of agents) {
    for (let i = 0; ; i++) {
      const v = await failures(c, a.host).catch(() => undefined);
      if (v) break;
      if (i > 100) throw new Error(`host ${a.host}: heartbeats did not start`);
      await sleep(100);
    }
  }
  // Each agent has heard each of its targets at least once (so silence is judged after suspectMs, not the start-up grace).
  await sleep(2000);
  return c;
}

function failures(c: Cluster, host: number): Promise<FailureView> {
  return staticClient(c.agents[host], c.launch.token, c.ca).request<FailureView>("GET", "/v1/cluster/failures", undefined, 5000);
}

/** Polls host's record until pred holds; the last view in the error otherwise. */
async function waitForRecord(c: Cluster, host: number, pred: (v: FailureView) => boolean, ms = 60000): Promise<FailureView> {
  const end = Date.now() + ms;
  let last: FailureView | undefined;
  for (;;) {
    last = await failures(c, host).catch(() => last);
    if (last && pred(last)) return last;
    if (Date.now() > end) throw new Error(`host ${host}'s failure record did not get there: ${JSON.stringify(last, null, 2)}`);
    await sleep(200);
  }
}

const detectors = (v: FailureView, lost: number) =>
  v.failures
    .find((f) => f.host === lost)
    ?.detectedBy.map((d) => d.host)
    .sort() ?? [];

test("the graph: each host watches (i + 2^j) mod n, is watched by as many, and routes strictly towards the coordinator", () => {
  expect(binomialTargets(0, 8)).toEqual([1, 2, 4]);
  expect(binomialTargets(5, 8)).toEqual([6, 7, 1]);
  expect(binomialWatchers(3, 8)).toEqual([2, 1, 7]);
  expect(binomialTargets(1023, 1024)).toHaveLength(10);
  for (let n = 2; n <= 64; n++) {
    for (let i = 0; i < n; i++) for (const t of binomialTargets(i, n)) expect(binomialWatchers(t, n)).toContain(i);
  }
  // From 1 towards 0: via 5 first; with 5 dead, around it via 3.
  expect(nextHops(1, 0, 8, new Set())).toEqual([5, 3, 2]);
  expect(nextHops(1, 0, 8, new Set([5]))).toEqual([3, 2]);
});

test("an agent killed with SIGKILL is detected by several survivors and recorded by the coordinator; then the coordinator itself is lost", async () => {
  await withCluster("kill", async (c) => {
    expect((await failures(c, 0)).failures).toEqual([]);
    process.kill(c.agents[3].pid, "SIGKILL");
    const watchers = binomialWatchers(3, N); // 2, 1, 7
    const v = await waitForRecord(c, 0, (x) => detectors(x, 3).length === watchers.length);
    expect(v.coordinator).toBe(0);
    // Only host 3 is lost: no survivor was reported.
    expect(v.failures.map((f) => f.host)).toEqual([3]);
    const rec = v.failures[0];
    expect(rec.url).toBe(c.agents[3].url);
    expect(detectors(v, 3)).toEqual([...watchers].sort());
    for (const d of rec.detectedBy) {
      expect(d.route[0]).toBe(d.host);
      expect(d.route[d.route.length - 1]).toBe(0);
      expect(d.route).not.toContain(3);
      expect(d.silentMs).toBeGreaterThanOrEqual(2000);
    }
    // The record is kept in the coordinator's state directory too.
    expect(readFailures(c.agents[0].stateDir)?.map((f) => f.host)).toEqual([3]);

    // Host 0 lost: its watchers (7, 6, 4) report to host 1, the lowest live host, around 0.
    process.kill(c.agents[0].pid, "SIGKILL");
    const v1 = await waitForRecord(c, 1, (x) => detectors(x, 0).length >= 2);
    expect(v1.coordinator).toBe(1);
    const rec0 = v1.failures.find((f) => f.host === 0)!;
    for (const d of rec0.detectedBy) {
      expect(binomialWatchers(0, N)).toContain(d.host);
      expect(d.route[d.route.length - 1]).toBe(1);
      expect(d.route).not.toContain(0);
    }
  });
});

test("a host whose link is cut is detected by several survivors and recorded; the cut-off host fences itself", async () => {
  await withCluster("link", async (c) => {
    const execa = require("execa") as typeof import("execa");
    const link = hosts.hosts[6].link;
    await execa("ip", ["link", "set", link, "down"]);
    try {
      const v = await waitForRecord(c, 0, (x) => detectors(x, 6).length >= 2);
      expect(v.failures.map((f) => f.host)).toEqual([6]);
      for (const d of detectors(v, 6)) expect(binomialWatchers(6, N)).toContain(d);
      // Host 6 saw every peer it watches go silent: it is the one cut off, and it ended itself.
      const a6 = c.agents[6];
      for (let i = 0; isAgentProcess(a6.pid, a6.stateDir); i++) {
        if (i > 300) throw new Error("the cut-off agent did not end itself");
        await sleep(100);
      }
      expect(fs.readFileSync(path.join(a6.stateDir, "agent.log"), "utf8")).toMatch(/is the one cut off/);
    } finally {
      await execa("ip", ["link", "set", link, "up"]);
    }
  });
});

test("the coordinator's child that is a tree parent lost with its child: both reports still arrive, routed around them", async () => {
  await withCluster("parent", async (c) => {
    // Host 2 is the root's child and the tree parent of 5 and 6; 5 is lost with it.
    process.kill(c.agents[2].pid, "SIGKILL");
    process.kill(c.agents[5].pid, "SIGKILL");
    const v = await waitForRecord(c, 0, (x) => detectors(x, 2).length >= 2 && detectors(x, 5).length === 3);
    expect(v.failures.map((f) => f.host)).toEqual([2, 5]);
    for (const f of v.failures) {
      for (const d of f.detectedBy) {
        expect(d.route).not.toContain(2);
        expect(d.route).not.toContain(5);
        expect(d.route[d.route.length - 1]).toBe(0);
      }
    }
    // Host 1's way to 0 starts through 5 (1 + 4); with 5 lost it went around it: 1 → 3 → 7 → 0.
    const from1 = v.failures.find((f) => f.host === 5)!.detectedBy.find((d) => d.host === 1)!;
    expect(from1.route).toEqual([1, 3, 7, 0]);
  });
});

test("nothing is left: no agent, namespace, link or process", async () => {
  const agents = clusters.flatMap((c) => c.agents);
  for (const c of clusters) if (!c.stopped) await stopStaticCluster(c.clusterDir, c.agents, c.launch, c.ca);
  for (const c of clusters) c.stopped = true;
  await tearDownNetnsHosts(TAG);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  // (A killed agent whose parent was killed too may stay a zombie until init reaps it: dead all the same.)
  for (const a of agents) expect(isAgentProcess(a.pid, a.stateDir)).toBe(false);
  expect(processesUnder(dir)).toEqual([]);
});
