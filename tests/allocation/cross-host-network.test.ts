// The cluster network across hosts (issue 9): a cluster's guests on three
// namespace hosts ping each other over the per-cluster multicast group on the
// hosts' link, each NIC bound to its own host's address; a second cluster's
// guests on the same hosts (their agents on another port) reach their own
// peer but none of the first cluster's guests, and receive none of its
// frames. The agents refuse a NIC on another cluster's group, bound to
// another host's address, or to the wildcard address.
// Needs root (iproute2) and the compiled agent (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { AgentError } from "../../provider/agent/client";
import { newClusterToken, VmSpec } from "../../provider/agent/protocol";
import { AgentLaunch } from "../../provider/allocation/local";
import { netnsLeftovers, NetnsHosts, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { StaticAgentRecord, startStaticCluster, staticClient, stopStaticCluster } from "../../provider/allocation/static";
import { ClusterCa } from "../../provider/allocation/tls";
import { CLUSTER_NETWORK_EXTRAS, clusterKey, clusterNetwork, HOST_ADDRESS_PLACEHOLDER, nicsFor } from "../../provider/drivers/network";
import { processArgv } from "../../provider/drivers/qemu";
import { buildImage, imageRef, markersFor } from "../../provider/image/busybox";
import type { VmModel } from "../../provider/model/resolve";
import { renderVmConfig } from "../../provider/render/render";
import { jobEnv, waitForVm } from "../support/agent";
import { processesUnder, processEnded } from "../support/stack";

jest.setTimeout(10 * 60 * 1000);

// A fixed tag with its own subnet (this file's only): whatever a killed earlier run left under it is torn down first.
const TAG = "txh";
const SUBNET = "10.213.4.0/26";

// Pings every peer its kernel command line names (retrying while they boot), then, for the window it names, counts the frames
// its NIC receives while it sends nothing itself; then tries the address vse.probe names, if any. While it lives it keeps
// sending ARP broadcasts for an address nobody has when vse.noise=1: traffic any NIC on the segment would receive.
const JOB = [
  "/bin/sh",
  "-c",
  [
    'arg() { sed -n "s/.*vse[.]$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }',
    "me=$(arg ip | sed 's,/.*,,')",
    "for p in $(arg peers | tr , ' '); do",
    "  i=0; while [ $i -lt 150 ] && ! ping -c 1 -W 1 $p >/dev/null 2>&1; do i=$((i+1)); done",
    '  if [ $i -lt 150 ]; then echo "$me reached $p"; else echo "$me cannot reach $p"; fi',
    "done",
    '[ "$(arg noise)" = 1 ] && ( while :; do arping -c 1 -w 1 -I eth0 10.77.0.200 >/dev/null 2>&1; done ) &',
    "sleep $(arg settle)",
    "rx() { cat /sys/class/net/eth0/statistics/rx_packets; }",
    "a=$(rx); sleep $(arg window); b=$(rx)",
    'echo "heard $((b - a))"',
    'probe=$(arg probe); if [ -n "$probe" ]; then sleep 10; if ping -c 3 -W 1 $probe >/dev/null 2>&1; then echo "$me reached $probe"; else echo "$me cannot reach $probe"; fi; fi',
  ].join("\n"),
];

let dir: string;
let hosts: NetnsHosts;

interface Cluster {
  name: string;
  dir: string;
  launch: AgentLaunch;
  ca: ClusterCa;
  agents: StaticAgentRecord[];
  stopped?: boolean;
}
const clusters: Cluster[] = [];

async function startCluster(name: string, port: number): Promise<Cluster> {
  const key = clusterKey("test", path.basename(dir), name);
  const launch = { token: newClusterToken(key), clusterKey: key, imageStore: path.join(dir, "cache", "images") };
  const clusterDir = path.join(dir, "clusters", name);
  const c: Cluster = {
    name,
    dir: clusterDir,
    launch,
    ...(await startStaticCluster(
      clusterDir,
      launch,
      hosts.hosts.map((h) => ({ address: h.address, netns: h.netns })),
      port,
    )),
  };
  clusters.push(c);
  return c;
}

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-xnet-"));
  hosts = await setUpNetnsHosts({ tag: TAG, count: 3, subnet: SUBNET });
  // Two clusters on the same three hosts: the second one's agents serve on another port of the same addresses.
  await startCluster("a", 7443);
  await startCluster("b", 7444);
});

afterAll(async () => {
  try {
    for (const c of clusters) if (!c.stopped) await stopStaticCluster(c.dir, c.agents, c.launch, c.ca.cert).catch(() => undefined);
  } finally {
    await tearDownNetnsHosts(TAG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const ip = (c: Cluster, index: number) => nicsFor(c.launch.clusterKey, index)[0].ipv4;

/** VM index of cluster c on host, rendered as the program does, with its NIC bound to hostAddress (default: that host's address). */
function spec(c: Cluster, index: number, host: number, args: Record<string, string>, hostAddress = hosts.hosts[host].address): VmSpec {
  const env = jobEnv("stay-up", JOB);
  const img = buildImage(env, path.join(dir, "cache"), undefined, CLUSTER_NETWORK_EXTRAS);
  const vm: VmModel = {
    name: `${c.name}-${index}`,
    index,
    host,
    profile: { name: "p", hypervisor: "qemu", memoryMiB: 96, vcpus: 1, machine: "pc", accel: "tcg" },
  };
  const config = renderVmConfig({
    cluster: c.name,
    clusterKey: c.launch.clusterKey,
    vm,
    image: imageRef(img.id),
    accel: "tcg",
    kernelArgs: [`vse.ip=${ip(c, index)}/16`, ...Object.entries(args).map(([k, v]) => `vse.${k}=${v}`)],
    network: clusterNetwork(c.launch.clusterKey),
    hostAddress,
  });
  return { hypervisor: "qemu", config, markers: markersFor(img.id), stopGraceSeconds: 0, afterJob: "stay-up" };
}

const client = (c: Cluster, host: number) => staticClient(c.agents[host], c.launch.token, c.ca.cert);

test("each agent refuses a NIC on another cluster's group, bound to another host's address or to the wildcard address", async () => {
  const [a, b] = clusters;
  const agent = client(a, 1);
  const refused = async (s: VmSpec): Promise<string> => {
    const err = await agent.putVm("a-1", s).then(
      () => undefined,
      (e: AgentError) => e,
    );
    expect(err).toBeInstanceOf(AgentError);
    expect(err!.status).toBe(403);
    return err!.message;
  };
  const own = spec(a, 1, 1, { settle: "1", window: "1" });
  const otherGroup = own.config.replace(
    `mcast=${clusterNetwork(a.launch.clusterKey).mcast.address}:${clusterNetwork(a.launch.clusterKey).mcast.port}`,
    `mcast=${clusterNetwork(b.launch.clusterKey).mcast.address}:${clusterNetwork(b.launch.clusterKey).mcast.port}`,
  );
  expect(otherGroup).not.toBe(own.config);
  expect(await refused({ ...own, config: otherGroup })).toMatch(/joins 239\.255\.[0-9.]+:[0-9]+; this cluster's network is /);
  expect(await refused(spec(a, 1, 1, { settle: "1", window: "1" }, hosts.hosts[0].address))).toContain(
    `is bound to ${hosts.hosts[0].address}; a VM on this host sends only from its host's address ${hosts.hosts[1].address}`,
  );
  expect(await refused({ ...own, config: own.config.replace(`localaddr=${hosts.hosts[1].address}`, "localaddr=0.0.0.0") })).toMatch(
    /-netdev expects socket,id=vse<N>,mcast=.*localaddr=<the host's IPv4 address, or agent:host-address>, found ".*localaddr=0\.0\.0\.0"/,
  );
  // Another cluster's MAC prefix, on this cluster's group.
  const otherMac = own.config.replace(nicsFor(a.launch.clusterKey, 1)[0].mac, nicsFor(b.launch.clusterKey, 1)[0].mac);
  expect(await refused({ ...own, config: otherMac })).toMatch(/is not of this cluster/);
  expect(await agent.getVm("a-1")).toBeUndefined();
});

test("a cluster's guests on three hosts reach each other; a second cluster's on the same hosts reaches its own, not them, and hears nothing of them", async () => {
  const [a, b] = clusters;
  const all = [0, 1, 2];
  // Cluster a: VM i on host i; each pings the two others, then keeps broadcasting.
  const aVms = all.map((i) => ({
    name: `a-${i}`,
    host: i,
    spec: spec(a, i, i, {
      peers: all
        .filter((j) => j !== i)
        .map((j) => ip(a, j))
        .join(","),
      noise: "1",
      settle: "3",
      window: "8",
    }),
  }));
  for (const v of aVms) await client(a, v.host).putVm(v.name, v.spec);
  const aDone = await Promise.all(aVms.map((v) => waitForVm(client(a, v.host), v.name, (x) => x.job.state === "done", 400000)));

  // Cluster b: VMs 0 and 1 on hosts 0 and 2, addresses 10.77.0.1 and .2 like a's; its NIC bound through the agent's placeholder.
  // Once they reached each other they stay silent for a window and count what they receive; then b-0 tries a-2's address.
  const bVms = [
    { name: "b-0", host: 0, spec: spec(b, 0, 0, { peers: ip(b, 1), settle: "5", window: "15", probe: ip(a, 2) }, HOST_ADDRESS_PLACEHOLDER) },
    { name: "b-1", host: 2, spec: spec(b, 1, 2, { peers: ip(b, 0), settle: "5", window: "15" }, HOST_ADDRESS_PLACEHOLDER) },
  ];
  for (const v of bVms) await client(b, v.host).putVm(v.name, v.spec);
  const bDone = await Promise.all(bVms.map((v) => waitForVm(client(b, v.host), v.name, (x) => x.job.state === "done", 400000)));

  aDone.forEach((v, i) => {
    const lines = v.job.output!.trim().split("\n");
    const others = all.filter((j) => j !== i).map((j) => `${ip(a, i)} reached ${ip(a, j)}`);
    expect(lines.slice(0, 2)).toEqual(others);
    // The positive control: a guest of a hears the other guests' broadcasts, from the other hosts.
    const heard = Number(/^heard (\d+)$/.exec(lines[2])?.[1]);
    expect(heard).toBeGreaterThan(0);
    expect(v.job.exitCode).toBe(0);
    // In its own host's namespace, its NIC bound to that host's address.
    expect(processArgv(v.observed.pid!).join(" ")).toContain(`,localaddr=${hosts.hosts[i].address} `);
  });
  // Cluster a's three guests broadcast about 3 frames a second between them (each of a's guests heard dozens in 8 s):
  // a b guest that could hear them would count dozens in its 15 s. At most a few frames of its own peer (a late ping
  // reply, an ARP refresh) may land in its window.
  const heardB = bDone.map((v) => Number(/^heard (\d+)$/m.exec(v.job.output!)?.[1]));
  for (const h of heardB) expect(h).toBeLessThanOrEqual(3);
  expect(bDone[0].job.output!.replace(/^heard \d+$/m, "heard _")).toBe(`${ip(b, 0)} reached ${ip(b, 1)}\nheard _\n${ip(b, 0)} cannot reach ${ip(a, 2)}\n`);
  expect(bDone[1].job.output!.replace(/^heard \d+$/m, "heard _")).toBe(`${ip(b, 1)} reached ${ip(b, 0)}\nheard _\n`);
  // The placeholder was bound to the agent's own host address.
  expect(processArgv(bDone[0].observed.pid!).join(" ")).toContain(`,localaddr=${hosts.hosts[0].address} `);
  expect(processArgv(bDone[1].observed.pid!).join(" ")).toContain(`,localaddr=${hosts.hosts[2].address} `);
  console.log(
    `cluster a heard ${aDone.map((v) => /heard (\d+)/.exec(v.job.output!)![1]).join(", ")} frames in 8 s; cluster b heard ${heardB.join(" and ")} in 15 s`,
  );
});

test("stopping both clusters and tearing down the hosts leaves no agent, VM, namespace or link behind", async () => {
  const pids = clusters.flatMap((c) => c.agents.map((a) => a.pid));
  for (const c of clusters) {
    await stopStaticCluster(c.dir, c.agents, c.launch, c.ca.cert);
    c.stopped = true;
  }
  await tearDownNetnsHosts(TAG);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  for (const pid of pids) expect([pid, processEnded(pid)]).toEqual([pid, true]);
  expect(processesUnder(dir)).toEqual([]);
});
