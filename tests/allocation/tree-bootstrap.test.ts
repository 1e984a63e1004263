// The k-ary bootstrap tree (issue 9; seed 000 §3.2) over 10 namespace hosts:
// the controller starts only host 0's agent, each agent launches its k
// children; every agent then answers over TLS with the CA pinned, its
// membership file matches the tree, and each agent's process was started by
// its parent's. A host whose agent cannot start fails the whole bootstrap
// with an error naming it and leaves nothing behind; a parent killed (or
// frozen) before the commit makes its subtree end itself. Needs root
// (iproute2) and the compiled agent (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { execFileSync } from "child_process";
import { AgentClient } from "../../provider/agent/client";
import { readMembership } from "../../provider/agent/membership";
import { newClusterToken } from "../../provider/agent/protocol";
import { bootstrapTree, hostStateDir, TreeAgentInfo, TreeBootstrap, treeChildren, treeParent } from "../../provider/agent/tree";
import { AgentLaunch } from "../../provider/allocation/local";
import { netnsLeftovers, NetnsHosts, netnsPids, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import {
  clusterAgentPids,
  clusterCa,
  issueHostCredentials,
  StaticAgentRecord,
  startStaticCluster,
  StaticHost,
  stopStaticCluster,
} from "../../provider/allocation/static";
import { clusterKey } from "../../provider/drivers/network";
import { processesUnder } from "../support/stack";

jest.setTimeout(240 * 1000);

// Only addresses in this subnet are ever used; a fixed tag, torn down first.
const SUBNET = "10.213.2.0/26";
const TAG = "ttree";
const N = 10;
const PORT = 7443;
let dir: string;
let plan: NetnsHosts;
let declared: StaticHost[];
let runs = 0;

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-tree-"));
  plan = await setUpNetnsHosts({ tag: TAG, count: N, subnet: SUBNET });
  declared = plan.hosts.map((h) => ({ address: h.address, netns: h.netns }));
});

afterAll(async () => {
  try {
    await tearDownNetnsHosts(TAG);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A fresh cluster directory and launch settings. */
function newCluster(): { clusterDir: string; launch: AgentLaunch } {
  const name = `c${runs++}`;
  const k = clusterKey("test", path.basename(dir), name);
  return {
    clusterDir: path.join(dir, "clusters", name),
    launch: { token: newClusterToken(k), clusterKey: k, imageStore: path.join(dir, "cache", "images") },
  };
}

function alive(pid: number): boolean {
  try {
    return !/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

function ppidOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}

async function until<T>(what: string, fn: () => T | undefined | false, deadlineMs = 60000): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`not within ${deadlineMs} ms: ${what}`);
    await sleep(100);
  }
}

/** No agent process in any of our namespaces, none of the cluster's anywhere, and no state. */
async function expectNothingLeft(clusterDir: string): Promise<void> {
  await until(`no agent of ${clusterDir} left`, () => clusterAgentPids(clusterDir).filter(alive).length === 0);
  for (const h of plan.hosts) expect({ host: h.netns, pids: (await netnsPids(h.netns)).filter(alive) }).toEqual({ host: h.netns, pids: [] });
  expect(fs.existsSync(clusterDir)).toBe(false);
}

async function checkTree(fanout: number, clusterDir: string, launch: AgentLaunch, caPem: string, agents: StaticAgentRecord[]): Promise<void> {
  expect(agents.map((a) => a.host)).toEqual(Array.from({ length: N }, (_, i) => i));
  for (const a of agents) {
    // Over TLS on the host's own address, the CA pinned; the process is the one recorded, in its host's namespace.
    expect(a.url).toBe(`https://${plan.hosts[a.host].address}:${PORT}`);
    const h = await new AgentClient(a.url, launch.token, { ca: caPem }).health();
    expect({ host: a.host, pid: h.pid }).toEqual({ host: a.host, pid: a.pid });
    expect(fs.readlinkSync(`/proc/${a.pid}/ns/net`)).toBe(
      execFileSync("ip", ["netns", "exec", plan.hosts[a.host].netns, "readlink", "/proc/self/ns/net"]).toString().trim(),
    );
    // The launch order is the tree: each agent's process was started by its parent's (the root's by this controller).
    const parent = treeParent(a.host, fanout);
    expect({ host: a.host, ppid: ppidOf(a.pid) }).toEqual({ host: a.host, ppid: parent === null ? process.pid : agents[parent].pid });
    expect(fs.readFileSync(path.join(a.stateDir, "agent.log"), "utf8")).toContain(
      `tree: host ${a.host} serving, launched by ${parent === null ? "the controller" : `host ${parent}`}`,
    );
    expect(a.stateDir).toBe(hostStateDir(clusterDir, a.host));
  }
  // Memberships appear once the commit reaches each agent.
  const memberships = await until("every membership file", () => {
    const ms = agents.map((a) => readMembership(a.stateDir));
    return ms.every((m) => m) ? ms : undefined;
  });
  memberships.forEach((m, i) => {
    expect(m).toEqual({
      self: i,
      fanout,
      parent: treeParent(i, fanout),
      children: treeChildren(i, fanout, N),
      agents: agents.map((a) => ({ host: a.host, url: a.url })),
    });
  });
  // Children lists and parents agree across files: each non-root host is the child of exactly its parent.
  for (let i = 1; i < N; i++) expect(memberships.filter((m) => m!.children.includes(i)).map((m) => m!.self)).toEqual([memberships[i]!.parent]);
  for (const a of agents) {
    const v = await new AgentClient(a.url, launch.token, { ca: caPem }).request<{ state: string }>("GET", "/v1/tree");
    expect({ host: a.host, state: v.state }).toEqual({ host: a.host, state: "running" });
  }
}

for (const fanout of [2, 3]) {
  test(`a ${fanout}-ary bootstrap over ${N} namespace hosts: every agent answers over TLS, memberships match, each was launched by its parent`, async () => {
    const { clusterDir, launch } = newCluster();
    const { ca, agents } = await startStaticCluster(clusterDir, launch, declared, PORT, { fanout });
    try {
      await checkTree(fanout, clusterDir, launch, ca.cert, agents);
    } finally {
      await stopStaticCluster(clusterDir, agents, launch, ca.cert);
    }
    for (const a of agents) expect(alive(a.pid)).toBe(false);
    await expectNothingLeft(clusterDir);
  });
}

test("a host whose address is not there fails the bootstrap, naming it, and nothing is left", async () => {
  const { clusterDir, launch } = newCluster();
  // Host 6's namespace does not have this address: its agent cannot listen.
  const hosts = declared.map((h, i) => (i === 6 ? { ...h, address: "10.213.2.60" } : h));
  const err = await startStaticCluster(clusterDir, launch, hosts, PORT, { fanout: 2 }).then(
    () => new Error("the bootstrap succeeded"),
    (e: Error) => e,
  );
  console.log(err.message);
  expect(err.message).toMatch(/^bootstrap of 10 hosts \(fanout 2\) failed: host 6 \(10\.213\.2\.60\): .*(EADDRNOTAVAIL|address not available)/s);
  await expectNothingLeft(clusterDir);
});

test("a host whose link is down fails the bootstrap by its handshake timer, naming it, and nothing is left", async () => {
  const { clusterDir, launch } = newCluster();
  execFileSync("ip", ["-n", plan.hosts[7].netns, "link", "set", "eth0", "down"]);
  try {
    const err = await startStaticCluster(clusterDir, launch, declared, PORT, { fanout: 2, timers: { linkTimeoutMs: 5000, parentTimeoutMs: 30000 } }).then(
      () => new Error("the bootstrap succeeded"),
      (e: Error) => e,
    );
    console.log(err.message);
    expect(err.message).toMatch(
      /^bootstrap of 10 hosts \(fanout 2\) failed: host 7 \(10\.213\.2\.9\): no TLS handshake with https:\/\/10\.213\.2\.9:7443 \(CA pinned\) within 5000 ms/,
    );
    await expectNothingLeft(clusterDir);
  } finally {
    execFileSync("ip", ["-n", plan.hosts[7].netns, "link", "set", "eth0", "up"]);
  }
});

/** A bootstrap that answered but is not committed yet: its agents still check their parents. */
async function uncommitted(parentTimeoutMs: number): Promise<{ clusterDir: string; boot: TreeBootstrap; byHost: TreeAgentInfo[] }> {
  const { clusterDir, launch } = newCluster();
  const ca = await clusterCa(clusterDir, launch.clusterKey);
  const certs = await issueHostCredentials(
    ca,
    clusterDir,
    declared.map((h) => h.address),
  );
  const boot = await bootstrapTree({
    clusterDir,
    hosts: declared.map((h) => ({ address: h.address, port: PORT, netns: h.netns })),
    fanout: 2,
    token: launch.token,
    clusterKey: launch.clusterKey,
    caPem: ca.cert,
    certs,
    imageStore: launch.imageStore,
    timers: { parentCheckMs: 500, parentTimeoutMs },
  });
  expect(boot.agents.map((a) => a.host)).toEqual(Array.from({ length: N }, (_, i) => i));
  return { clusterDir, boot, byHost: boot.agents };
}

test("killing a parent before the commit: its subtree's agents end themselves (their links close), the rest is aborted, nothing is left", async () => {
  const { clusterDir, boot, byHost } = await uncommitted(60000);
  // Host 2's subtree in a binary tree of 10: 5 and 6. Nobody else can reach them: only their own rules end them.
  const subtree = [5, 6];
  process.kill(byHost[2].pid, "SIGKILL");
  await until("hosts 5 and 6 ended themselves", () => subtree.every((h) => !alive(byHost[h].pid)));
  for (const h of subtree) expect(fs.existsSync(byHost[h].stateDir)).toBe(false);
  // The others still stand until the controller aborts.
  for (const h of [0, 1, 3, 4, 7, 8, 9]) expect(alive(byHost[h].pid)).toBe(true);
  await boot.abort("test over");
  fs.rmSync(path.join(clusterDir, "ca"), { recursive: true, force: true });
  fs.rmSync(path.join(clusterDir, "host-2"), { recursive: true, force: true });
  fs.rmdirSync(clusterDir);
  await expectNothingLeft(clusterDir);
});

test("a parent that stops answering before the commit: its subtree ends itself when the parent-check timer runs out", async () => {
  const { clusterDir, boot, byHost } = await uncommitted(3000);
  // Frozen, host 1 keeps its links open but answers nothing: only the timers of 3 and 4 can see it.
  const subtree = [3, 4, 7, 8, 9];
  process.kill(byHost[1].pid, "SIGSTOP");
  try {
    await until("hosts 3, 4, 7, 8, 9 ended themselves", () => subtree.every((h) => !alive(byHost[h].pid)));
    for (const h of subtree) expect(fs.existsSync(byHost[h].stateDir)).toBe(false);
    for (const h of [0, 2, 5, 6]) expect(alive(byHost[h].pid)).toBe(true);
  } finally {
    process.kill(byHost[1].pid, "SIGKILL");
    process.kill(byHost[1].pid, "SIGCONT");
  }
  await boot.abort("test over");
  fs.rmSync(path.join(clusterDir, "ca"), { recursive: true, force: true });
  fs.rmSync(path.join(clusterDir, "host-1"), { recursive: true, force: true });
  fs.rmdirSync(clusterDir);
  await expectNothingLeft(clusterDir);
});

test("tearing down the hosts leaves no namespace, link or process behind", async () => {
  await tearDownNetnsHosts(TAG);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  expect(processesUnder(dir)).toEqual([]);
});
