// The `static` allocation manager (issue 9, foundation): hosts declared by
// address. Each host's agent serves the same API as a local agent, over HTTPS
// on the host's address only (never 0.0.0.0), with a server certificate from
// the cluster's CA (allocation/tls.ts); clients pin that CA and the address.
// Its unix socket stays too, for whoever runs on that host.
//
// How an agent reaches its host: today only on this machine, either in a
// network namespace host (allocation/netns.ts: `ip netns exec <ns> node
// agent/main.js …`, for tests and the multi-host demo) or, with no namespace,
// directly (the address must then be one of this machine's). Remote launchers
// (SSH, Slurm) come with the resource-manager issue; the state directory, CA
// and certificate files are then what has to be staged to the host.
// A cluster's agents are started over the k-ary bootstrap tree (agent/tree.ts,
// allocation.fanout): the controller starts host 0's agent, every agent its
// children, each with launchCommand (allocation/launcher.ts).
import * as fs from "fs";
import * as path from "path";
import { AgentClient } from "../agent/client";
import { readJson } from "../agent/state";
import { AGENT_MAIN, AgentLaunch, AgentRecord, isAgentProcess, stopAgent } from "./local";
import { launchCommand } from "./launcher";
import { spawnDetached } from "./spawn-detached";
import { checkListenAddress, ClusterCa, ensureClusterCa, issueServerCert } from "./tls";
import { bootstrapTree, HostCredentials, TreeTimers } from "../agent/tree";

/** One declared host: its address, and for namespace hosts the namespace to start its agent in. */
export interface StaticHost {
  address: string;
  /** A namespace host (vse-<tag>-h<n>): the agent runs under `ip netns exec`. */
  netns?: string;
  /**
   * The agent gets an image store of its own, <stateDir>/images, filled by
   * staging (allocation/staging.ts stageImage), instead of this machine's
   * (launch.imageStore, which namespace hosts could otherwise share).
   */
  ownImageStore?: boolean;
}

/** A static host's agent: url is https://<address>:<port>; localUrl its unix socket on the host. */
export interface StaticAgentRecord extends AgentRecord {
  address: string;
  port: number;
  netns?: string;
  localUrl: string;
}

/** The port agents of static hosts serve on unless told otherwise (each host has its own address). */
export const DEFAULT_AGENT_PORT = 7443;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The cluster's CA lives in <clusterDir>/ca (0700); made at cluster create time, reused afterwards. */
export function clusterCa(clusterDir: string, clusterKey: string): Promise<ClusterCa> {
  return ensureClusterCa(path.join(clusterDir, "ca"), clusterKey);
}

/** A client for a static host's agent, pinned to the cluster's CA and the host's address. */
export function staticClient(a: Pick<StaticAgentRecord, "url">, token: string, caPem: string): AgentClient {
  return new AgentClient(a.url, token, { ca: caPem });
}

function checkHosts(hosts: StaticHost[]): void {
  const seen = new Set<string>();
  hosts.forEach((h, i) => {
    try {
      checkListenAddress(h.address);
    } catch (err) {
      throw new Error(`hosts[${i}]: ${(err as Error).message}`);
    }
    if (seen.has(h.address)) throw new Error(`hosts[${i}]: address ${h.address} is declared twice`);
    seen.add(h.address);
  });
}

/**
 * Starts (or restarts, on the same state) the agent of one static host and
 * waits until it answers over TLS with the cluster's CA pinned. Its state
 * directory and certificate are on this machine's filesystem, which namespace
 * hosts share.
 */
export async function startStaticAgent(
  stateDir: string,
  launch: AgentLaunch,
  ca: ClusterCa,
  host: number,
  h: StaticHost,
  port = DEFAULT_AGENT_PORT,
): Promise<StaticAgentRecord> {
  return startTlsAgent(stateDir, launch, ca.cert, host, h, port, (tlsDir) => issueServerCert(ca, h.address, tlsDir));
}

/**
 * What starting any agent that serves over TLS takes, wherever its certificate
 * comes from (certify writes it into the given directory): check the host and
 * port, refuse a state directory another live agent holds, write the token,
 * start the agent detached (in the host's namespace if it has one) and wait
 * until it answers on https://<address>:<port> with caPem pinned. Used on this
 * machine for static hosts, and on the remote host itself for SSH hosts
 * (allocation/ssh.ts), where the certificate arrives over the SSH connection.
 */
export async function startTlsAgent(
  stateDir: string,
  launch: AgentLaunch,
  caPem: string,
  host: number,
  h: StaticHost,
  port: number,
  certify: (tlsDir: string) => Promise<{ certFile: string; keyFile: string }>,
): Promise<StaticAgentRecord> {
  const { writeFileAtomic } = require("../agent/state") as typeof import("../agent/state");
  checkHosts([h]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`port: expected 1 to 65535, found ${port}`);
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(stateDir, 0o700);
  const infoFile = path.join(stateDir, "agent.json");
  const live = readJson<{ pid: number }>(infoFile);
  if (live && isAgentProcess(live.pid, stateDir))
    throw new Error(`node agent for host ${host} (${h.address}): another agent (pid ${live.pid}) holds ${stateDir}`);
  const tokenFile = path.join(stateDir, "token");
  writeFileAtomic(tokenFile, launch.token, 0o600);
  const cert = await certify(path.join(stateDir, "tls"));
  const argv = [process.execPath, AGENT_MAIN, "--state-dir", stateDir, "--token-file", tokenFile, "--cluster-key", launch.clusterKey];
  const imageStore = h.ownImageStore ? path.join(stateDir, "images") : launch.imageStore;
  if (h.ownImageStore) fs.mkdirSync(imageStore, { recursive: true, mode: 0o755 });
  argv.push("--image-store", imageStore, "--listen", `${h.address}:${port}`, "--tls-cert", cert.certFile, "--tls-key", cert.keyFile);
  if (launch.policyFile) argv.push("--policy", launch.policyFile);
  const cmd = launchCommand(h, argv);
  const child = spawnDetached(cmd.file, cmd.args, { logFile: path.join(stateDir, "agent.log") });
  const url = `https://${h.address}:${port}`;
  const deadline = Date.now() + 20000;
  let lastError = "";
  // `ip netns exec` execs the agent in place, so the child's pid is the agent's.
  while (Date.now() < deadline && !child.exited()) {
    const info = readJson<{ pid: number; url: string; tlsUrl?: string }>(infoFile);
    if (info && info.pid === child.pid && info.tlsUrl === url) {
      try {
        const health = await staticClient({ url }, launch.token, caPem).health();
        if (health.pid === child.pid) {
          child.unref();
          return { host, url, pid: info.pid, stateDir, address: h.address, port, ...(h.netns ? { netns: h.netns } : {}), localUrl: info.url };
        }
        lastError = `pid ${health.pid} answers on ${url}, not the agent started (pid ${child.pid})`;
      } catch (err) {
        lastError = (err as Error).message;
      }
    }
    await sleep(50);
  }
  const logTail = fs.readFileSync(path.join(stateDir, "agent.log"), "utf8").trim().split("\n").slice(-5).join("\n");
  child.kill();
  throw new Error(`node agent for host ${host} (${h.address}) did not start (state ${stateDir})${lastError ? `: ${lastError}` : ""}:\n${logTail}`);
}

// Certificates: the controller issues every host's certificate and key (with
// the CA key, which never leaves <clusterDir>/ca) before the bootstrap, and
// each agent hands its children only their subtree's credentials over the
// link. The other way, the CA key travelling down the tree, would let any
// interior host mint a certificate for any address of the cluster and
// impersonate a host it does not own, and a leaked key would outlive the
// cluster's hosts; here an interior host sees only the keys of hosts it
// launches itself, holding the cluster's token anyway, so it gains nothing it
// could not already do. Issuing is O(n) openssl runs on the controller, but
// done once per cluster (kept in <clusterDir>/ca/hosts/) and not on the
// bootstrap's critical path.
/** Every host's certificate and key for its address (issued once, kept under <clusterDir>/ca/hosts/<address>/). */
export async function issueHostCredentials(ca: ClusterCa, clusterDir: string, addresses: string[]): Promise<Record<string, HostCredentials>> {
  const unique = [...new Set(addresses)];
  const out: Record<string, HostCredentials> = {};
  let next = 0;
  const worker = async () => {
    while (next < unique.length) {
      const address = unique[next++];
      checkListenAddress(address);
      const dir = path.join(clusterDir, "ca", "hosts", address);
      const certFile = path.join(dir, "agent.pem");
      const keyFile = path.join(dir, "agent.key");
      if (!fs.existsSync(certFile) || !fs.existsSync(keyFile)) await issueServerCert(ca, address, dir);
      out[address] = { cert: fs.readFileSync(certFile, "utf8"), key: fs.readFileSync(keyFile, "utf8") };
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  return out;
}

/** The pids of agent processes (argv: AGENT_MAIN … --state-dir <clusterDir>/…) on this machine: a failed bootstrap's backstop. */
export function clusterAgentPids(clusterDir: string, main = AGENT_MAIN): number[] {
  const pids: number[] = [];
  for (const e of fs.readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(e)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${e}/cmdline`, "utf8").split("\0");
      const dir = argv[argv.indexOf("--state-dir") + 1];
      if (argv.includes(main) && argv.includes("--state-dir") && dir.startsWith(`${clusterDir}/`)) pids.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** Kills whatever agent process of the cluster is still on this machine and waits until none is left. */
export async function killClusterAgents(clusterDir: string, main = AGENT_MAIN): Promise<number[]> {
  const killed = new Set<number>();
  for (let round = 0; round < 200; round++) {
    const pids = clusterAgentPids(clusterDir, main).filter((pid) => {
      try {
        return !/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
      } catch {
        return false;
      }
    });
    if (!pids.length) return [...killed];
    for (const pid of pids) {
      killed.add(pid);
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    await sleep(50);
  }
  throw new Error(`agents of ${clusterDir} would not end: ${clusterAgentPids(clusterDir, main).join(", ")}`);
}

/**
 * Starts the agents of every declared host over the k-ary bootstrap tree
 * (agent/tree.ts; k = fanout): the cluster's CA first (made here if new) and
 * every host's certificate, then host 0's agent with the whole host list;
 * each agent launches its children. All or nothing: when a host fails, the
 * tree ends itself, whatever agent process of the cluster is still here is
 * killed, the cluster's directory is removed, and the error names the host.
 */
export async function startStaticCluster(
  clusterDir: string,
  launch: AgentLaunch,
  hosts: StaticHost[],
  port = DEFAULT_AGENT_PORT,
  opts: { fanout?: number; timers?: Partial<TreeTimers> } = {},
): Promise<{ ca: ClusterCa; agents: StaticAgentRecord[] }> {
  checkHosts(hosts);
  const fanout = opts.fanout ?? 2;
  if (!Number.isInteger(fanout) || fanout < 1 || fanout > 64) throw new Error(`allocation.fanout: expected an integer 1 to 64, found ${fanout}`);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`port: expected 1 to 65535, found ${port}`);
  const ca = await clusterCa(clusterDir, launch.clusterKey);
  try {
    const certs = await issueHostCredentials(
      ca,
      clusterDir,
      hosts.map((h) => h.address),
    );
    const boot = await bootstrapTree({
      clusterDir,
      hosts: hosts.map((h) => ({ address: h.address, port, ...(h.netns ? { netns: h.netns } : {}), ...(h.ownImageStore ? { ownImageStore: true } : {}) })),
      fanout,
      token: launch.token,
      clusterKey: launch.clusterKey,
      caPem: ca.cert,
      certs,
      imageStore: launch.imageStore,
      ...(launch.policyFile ? { policyFile: launch.policyFile } : {}),
      ...(opts.timers ? { timers: opts.timers } : {}),
    });
    boot.commit();
    const agents = boot.agents.map((a): StaticAgentRecord => ({
      host: a.host,
      url: a.url,
      pid: a.pid,
      stateDir: a.stateDir,
      address: a.address,
      port: a.port,
      ...(a.netns ? { netns: a.netns } : {}),
      localUrl: a.localUrl,
    }));
    return { ca, agents };
  } catch (err) {
    await killClusterAgents(clusterDir).catch(() => undefined);
    fs.rmSync(clusterDir, { recursive: true, force: true });
    throw new Error(`bootstrap of ${hosts.length} hosts (fanout ${fanout}) failed: ${(err as Error).message}`);
  }
}

/**
 * Stops a static host's agent and every VM it runs, then removes its state.
 * Asked over TLS first; when it does not answer, the process is killed and,
 * its state being on this machine, the agent's own code stops what it left
 * (as for local agents). Errors are reported at the end, and the state kept.
 */
export async function stopStaticAgent(a: StaticAgentRecord, launch: Pick<AgentLaunch, "token" | "clusterKey" | "imageStore">, caPem: string): Promise<void> {
  await stopAgent(a, launch.clusterKey, staticClient(a, launch.token, caPem), `host ${a.host} (${a.address})`);
}

/** Stops every agent of a static cluster (all tried, failures reported together), then removes the cluster's directory and its CA. */
export async function stopStaticCluster(clusterDir: string, agents: StaticAgentRecord[], launch: AgentLaunch, caPem: string): Promise<void> {
  const results = await Promise.allSettled(agents.map((a) => stopStaticAgent(a, launch, caPem)));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
  if (failed.length) throw new Error(failed.join("\n"));
  fs.rmSync(clusterDir, { recursive: true, force: true });
}

function declaredHosts(req: import("./allocator").AllocationRequest): StaticHost[] {
  const list = req.allocation.hostList;
  if (!list) throw new Error(`cluster ${req.clusterName}: allocation.hosts: manager static needs the list of declared hosts`);
  // Each declared host keeps its own image store: the cluster's images are staged into it down the tree.
  return list.map((h) => ({ address: h.address, ...(h.netns ? { netns: h.netns } : {}), ownImageStore: true }));
}

/** The `static` manager: hosts declared by address, each agent serving HTTPS there with the cluster CA's certificate. */
export const staticAllocator: import("./allocator").Allocator = {
  async allocate(req) {
    const { ca, agents } = await startStaticCluster(req.clusterDir, req.launch, declaredHosts(req), req.allocation.port ?? DEFAULT_AGENT_PORT, {
      fanout: req.allocation.fanout ?? 2,
    });
    return { agents, ca: ca.cert, info: { hosts: agents.map((a) => (a as StaticAgentRecord).address).join(",") } };
  },
  async healthy(req, state, a) {
    try {
      const h = await staticClient(a, req.launch.token, state.ca!).health();
      // Agents started on this machine (namespace hosts share its pids) must also be the process recorded.
      return h.ok === true && isAgentProcess(h.pid, a.stateDir);
    } catch {
      return false;
    }
  },
  async restartAgent(req, _state, a) {
    const { terminateLocalAgent } = require("./local") as typeof import("./local");
    await terminateLocalAgent(a);
    const ca = await clusterCa(req.clusterDir, req.clusterKey);
    return startStaticAgent(a.stateDir, req.launch, ca, a.host, declaredHosts(req)[a.host], req.allocation.port ?? DEFAULT_AGENT_PORT);
  },
  async release(req, state) {
    await stopStaticCluster(req.clusterDir, state.agents as StaticAgentRecord[], req.launch, state.ca!);
  },
};
