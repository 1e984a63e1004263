// Live migration between namespace hosts (issue 9): the target agent listens
// for the VM on its host's address only (QEMU -incoming over TCP), under TLS
// with the cluster's CA both ways (tls-creds-x509, verify-peer); the source
// agent sends only to what the target's agent announces for that VM. A
// guest's counting loop carries on at the target (the same guest, no boot);
// a migration whose target dies mid-stream leaves it running at the source
// with the same pid, and no waiting target behind.
// Needs root (iproute2) and the compiled agent (npx tsc -p tsconfig.json).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as tls from "tls";
import { AgentClient } from "../../provider/agent/client";
import { newClusterToken, VmSpec } from "../../provider/agent/protocol";
import { AgentLaunch } from "../../provider/allocation/local";
import { capHostLink, netnsLeftovers, NetnsHosts, setUpNetnsHosts, tearDownNetnsHosts } from "../../provider/allocation/netns";
import { StaticAgentRecord, startStaticCluster, staticClient, stopStaticCluster } from "../../provider/allocation/static";
import { ClusterCa, ensureClusterCa, issueServerCert } from "../../provider/allocation/tls";
import { CLUSTER_NETWORK_EXTRAS, clusterKey, clusterNetwork, nicsFor } from "../../provider/drivers/network";
import { processArgv, vmPaths } from "../../provider/drivers/qemu";
import { qmpCommand } from "../../provider/drivers/qmp";
import { buildImage, imageRef, markersFor } from "../../provider/image/busybox";
import type { VmModel } from "../../provider/model/resolve";
import { renderVmConfig } from "../../provider/render/render";
import { moveVm } from "../../provider/resources/virtual-machine";
import { jobEnv, waitForVm } from "../support/agent";
import { processesUnder, qemuProcessesFor, processEnded } from "../support/stack";
import { ticks, waitForTicks } from "../support/ticks";

jest.setTimeout(8 * 60 * 1000);

// A fixed tag with its own subnet (this file's only): whatever a killed earlier run left under it is torn down first.
const TAG = "txh2";
const SUBNET = "10.213.4.64/26";
const VM = "tick-0";
// The job returns at once; the loop it leaves behind prints a tick a second on the console.
const TICKER = ["/bin/sh", "-c", "( i=0; while sleep 1; do i=$((i+1)); echo tick $i; done ) & echo started"];

let dir: string;
let clusterDir: string;
let hosts: NetnsHosts;
let launch: AgentLaunch;
let ca: ClusterCa;
let agents: StaticAgentRecord[] = [];
let stopped = false;

beforeAll(async () => {
  await tearDownNetnsHosts(TAG);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "vse-xmig-"));
  clusterDir = path.join(dir, "clusters", "c");
  hosts = await setUpNetnsHosts({ tag: TAG, count: 2, subnet: SUBNET });
  const key = clusterKey("test", path.basename(dir), "c");
  launch = { token: newClusterToken(key), clusterKey: key, imageStore: path.join(dir, "cache", "images") };
  ({ ca, agents } = await startStaticCluster(
    clusterDir,
    launch,
    hosts.hosts.map((h) => ({ address: h.address, netns: h.netns })),
  ));
});

afterAll(async () => {
  try {
    if (!stopped && agents.length) await stopStaticCluster(clusterDir, agents, launch, ca.cert);
  } finally {
    await tearDownNetnsHosts(TAG);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const client = (host: number): AgentClient => staticClient(agents[host], launch.token, ca.cert);
const consoleOf = (host: number) => vmPaths(path.join(agents[host].stateDir, "vms", VM)).console;

/** The VM as the program renders it for a host: on the cluster network, its NIC bound to that host's address. */
function specFor(host: number): VmSpec {
  const env = jobEnv("stay-up", TICKER);
  const img = buildImage(env, path.join(dir, "cache"), undefined, CLUSTER_NETWORK_EXTRAS);
  const vm: VmModel = { name: VM, index: 0, host, profile: { name: "p", hypervisor: "qemu", memoryMiB: 128, vcpus: 1, machine: "pc", accel: "tcg" } };
  const config = renderVmConfig({
    cluster: "c",
    clusterKey: launch.clusterKey,
    vm,
    image: imageRef(img.id),
    accel: "tcg",
    kernelArgs: [`vse.ip=${nicsFor(launch.clusterKey, 0)[0].ipv4}/16`],
    network: clusterNetwork(launch.clusterKey),
    hostAddress: hosts.hosts[host].address,
  });
  return { hypervisor: "qemu", config, markers: markersFor(img.id), stopGraceSeconds: 0, afterJob: "stay-up" };
}

/** The TCP listeners of a process in its own namespace: "address:port". */
function tcpListeners(pid: number): string[] {
  const inodes = new Set(
    fs
      .readdirSync(`/proc/${pid}/fd`)
      .map((fd) => {
        try {
          return /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1];
        } catch {
          return undefined;
        }
      })
      .filter((x): x is string => !!x),
  );
  return fs
    .readFileSync(`/proc/${pid}/net/tcp`, "utf8")
    .split("\n")
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 10 && f[3] === "0A" && inodes.has(f[9]))
    .map((f) => {
      const [hex, port] = f[1].split(":");
      return `${[3, 2, 1, 0].map((i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16)).join(".")}:${parseInt(port, 16)}`;
    });
}

/** A TLS handshake with the waiting target, as some client: what it presented, and whether the target then took anything from us. */
async function tryTarget(
  address: string,
  port: number,
  client?: { cert: string; key: string },
): Promise<{ presented: string | undefined; accepted: boolean; error?: string }> {
  return new Promise((resolve) => {
    let presented: string | undefined;
    const sock = tls.connect({
      host: address,
      port,
      ca: ca.cert,
      checkServerIdentity: (_h, cert) => tls.checkServerIdentity(address, cert),
      ...(client ?? {}),
    });
    const done = (accepted: boolean, error?: string) => {
      sock.destroy();
      resolve({ presented, accepted, error });
    };
    sock.once("secureConnect", () => {
      presented = sock.getPeerCertificate().subjectaltname;
      // TLS 1.3: the server checks our certificate after the client's handshake is done; a refusal arrives as an alert.
      sock.write("QEVM");
      setTimeout(() => done(!sock.destroyed), 3000);
    });
    sock.once("error", (err) => done(false, err.message));
  });
}

test("a running guest moves from host A to host B over TLS: its count goes on at B, the same guest", async () => {
  const a = client(0);
  const b = client(1);
  const first = await a.putVm(VM, specFor(0));
  await waitForVm(a, VM, (v) => v.job.state === "done", 240000);
  const onA = await waitForTicks(consoleOf(0), 2);
  expect(first.observed.pid).toBeDefined();
  // Its NIC is bound to host A's address, nothing else.
  expect(processArgv(first.observed.pid!).join(" ")).toContain(`,localaddr=${hosts.hosts[0].address} `);

  // The target announces where it waits: on B's address only, and its listener asks for TLS with B's certificate from the cluster's CA.
  const landing = await b.incoming(VM, specFor(1));
  const m = /^tcp:([0-9.]+):([0-9]+)$/.exec(landing.observed.incoming ?? "");
  expect(m?.[1]).toBe(hosts.hosts[1].address);
  expect(tcpListeners(landing.observed.pid!)).toEqual([`${hosts.hosts[1].address}:${m![2]}`]);
  // A client without a certificate, and one with a certificate of another CA, get nothing in; the target keeps waiting.
  const noCert = await tryTarget(m![1], Number(m![2]));
  expect(noCert.presented).toBe(`IP Address:${hosts.hosts[1].address}`);
  expect(noCert.accepted).toBe(false);
  const impostorCa = await ensureClusterCa(path.join(dir, "impostor", "ca"), launch.clusterKey);
  const impostor = await issueServerCert(impostorCa, hosts.hosts[0].address, path.join(dir, "impostor", "host"));
  const foreign = await tryTarget(m![1], Number(m![2]), { cert: fs.readFileSync(impostor.certFile, "utf8"), key: fs.readFileSync(impostor.keyFile, "utf8") });
  expect(foreign.accepted).toBe(false);
  expect((await b.getVm(VM))?.observed).toMatchObject({ state: "running", incoming: landing.observed.incoming });
  await b.deleteVm(VM);

  // The source refuses targets the target's agent did not announce: a made-up port, and a host outside the cluster.
  await expect(a.migrate(VM, `tcp:${hosts.hosts[1].address}:${Number(m![2])}`)).rejects.toThrow(/does not wait for tick-0 there/);
  await expect(a.migrate(VM, `tcp:${hosts.gateway}:4444`)).rejects.toThrow(/could not confirm it waits for tick-0/);
  await expect(a.migrate(VM, "tcp:0.0.0.0:4444")).rejects.toThrow(/expected tcp:<IPv4 address of a host of this cluster>/);
  expect((await a.getVm(VM))?.observed.pid).toBe(first.observed.pid);

  const lastOnA = ticks(consoleOf(0)).pop()!;
  const moved = await moveVm(a, b, VM, specFor(1));
  expect(moved.view.observed).toMatchObject({ state: "running" });
  expect(moved.view.observed.incoming).toBeUndefined();
  console.log(
    `migrated ${VM} from ${hosts.hosts[0].address} to ${hosts.hosts[1].address} over TLS: total ${moved.totalMs} ms, downtime ${moved.downtimeMs} ms`,
  );
  expect(await a.getVm(VM)).toBeUndefined();
  expect(processEnded(first.observed.pid!)).toBe(true);

  const onB = await waitForTicks(consoleOf(1), 3);
  // The count carries on from where it was on A: the same loop in the same guest, not a new boot (which would start at 1 and print the job's markers).
  expect(onB[0]).toBeGreaterThan(onA[0]);
  expect(onB[0]).toBeGreaterThanOrEqual(lastOnA);
  expect(onB).toEqual(Array.from({ length: onB.length }, (_, i) => onB[0] + i));
  const onBView = (await b.getVm(VM))!;
  expect(fs.readFileSync(consoleOf(1), "utf8")).not.toContain(onBView.spec.markers.begin);
  expect(fs.readFileSync(consoleOf(1), "utf8")).not.toContain("Linux version");
  // At B, bound to B's address.
  expect(processArgv(onBView.observed.pid!).join(" ")).toContain(`,localaddr=${hosts.hosts[1].address} `);
});

test("a migration whose target dies mid-stream leaves the guest running on its source, same pid, no waiting target", async () => {
  const b = client(1);
  const a = client(0);
  const before = (await b.getVm(VM))!;
  // A capped link makes the stream last long enough to cut it in the middle.
  await capHostLink(hosts, 0, "8mbit");
  try {
    // The real flow (VirtualMachine's update): moveVm asks A to wait, then B to send.
    const migration = moveVm(b, a, VM, specFor(0)).then(
      () => "completed",
      (err: Error) => err.message,
    );
    const waiting = await waitForVm(a, VM, (v) => v.observed.state === "running" && !!v.observed.incoming, 60000);
    const targetPid = waiting.observed.pid!;
    // Mid-stream: the source has sent some of the guest's memory, not all.
    const qmp = vmPaths(path.join(agents[1].stateDir, "vms", VM)).qmp;
    let transferred = 0;
    // Until the outgoing migration is active, query-migrate still reports how this copy came in (completed).
    for (let i = 0; i < 600 && transferred < 2 * 1024 * 1024; i++) {
      const info = (await qmpCommand(qmp, "query-migrate").catch(() => ({}))) as { status?: string; ram?: { transferred?: number } };
      transferred = info.status === "active" ? (info.ram?.transferred ?? 0) : 0;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(transferred).toBeGreaterThanOrEqual(2 * 1024 * 1024);
    process.kill(targetPid, "SIGKILL");
    const result = await migration;
    expect(result).toMatch(/migration of tick-0 to tcp:.* failed: .*keeps running on the source/);
  } finally {
    await capHostLink(hosts, 0, undefined);
  }
  const after = (await b.getVm(VM))!;
  expect(after.observed).toMatchObject({ state: "running", pid: before.observed.pid });
  expect(await a.getVm(VM)).toBeUndefined();
  const n = ticks(consoleOf(1)).length;
  await waitForTicks(consoleOf(1), n + 2);
  expect(qemuProcessesFor(agents[0].stateDir, VM)).toEqual([]);
});

test("stopping the cluster and tearing down the hosts leaves no agent, VM, namespace or link behind", async () => {
  const pids = agents.map((a) => a.pid);
  await stopStaticCluster(clusterDir, agents, launch, ca.cert);
  stopped = true;
  await tearDownNetnsHosts(TAG);
  expect(await netnsLeftovers(TAG)).toEqual({ netns: [], links: [] });
  for (const pid of pids) expect([pid, processEnded(pid)]).toEqual([pid, true]);
  expect(processesUnder(dir)).toEqual([]);
});
