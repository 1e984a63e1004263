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
import * as fs from "fs";
import * as path from "path";
import { AgentClient } from "../agent/client";
import { readJson } from "../agent/state";
import { AGENT_MAIN, AgentLaunch, AgentRecord, isAgentProcess, stopAgent } from "./local";
import { netnsExec } from "./netns";
import { checkListenAddress, ClusterCa, ensureClusterCa, issueServerCert } from "./tls";

/** One declared host: its address, and for namespace hosts the namespace to start its agent in. */
export interface StaticHost {
  address: string;
  /** A namespace host (vse-<tag>-h<n>): the agent runs under `ip netns exec`. */
  netns?: string;
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
  const execa = require("execa") as typeof import("execa");
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
  const cert = await issueServerCert(ca, h.address, path.join(stateDir, "tls"));
  const argv = [process.execPath, AGENT_MAIN, "--state-dir", stateDir, "--token-file", tokenFile, "--cluster-key", launch.clusterKey];
  argv.push("--image-store", launch.imageStore, "--listen", `${h.address}:${port}`, "--tls-cert", cert.certFile, "--tls-key", cert.keyFile);
  if (launch.policyFile) argv.push("--policy", launch.policyFile);
  const cmd = h.netns ? netnsExec(h.netns, argv) : { file: argv[0], args: argv.slice(1) };
  const logFd = fs.openSync(path.join(stateDir, "agent.log"), "a");
  let child;
  try {
    child = execa(cmd.file, cmd.args, { detached: true, stdin: "ignore", stdout: logFd, stderr: logFd, cleanup: false, reject: false, buffer: false });
  } finally {
    fs.closeSync(logFd);
  }
  child.catch(() => undefined);
  let exited = false;
  child.on("exit", () => (exited = true));
  const url = `https://${h.address}:${port}`;
  const deadline = Date.now() + 20000;
  let lastError = "";
  // `ip netns exec` execs the agent in place, so the child's pid is the agent's.
  while (Date.now() < deadline && !exited) {
    const info = readJson<{ pid: number; url: string; tlsUrl?: string }>(infoFile);
    if (info && info.pid === child.pid && info.tlsUrl === url) {
      try {
        const health = await staticClient({ url }, launch.token, ca.cert).health();
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
  try {
    child.kill("SIGKILL");
  } catch {
    // already gone
  }
  throw new Error(`node agent for host ${host} (${h.address}) did not start (state ${stateDir})${lastError ? `: ${lastError}` : ""}:\n${logTail}`);
}

/**
 * Starts the agents of every declared host (the cluster's CA first, made
 * here if new). All or nothing: when one fails, those started are stopped
 * and their state removed before the error is thrown.
 */
export async function startStaticCluster(
  clusterDir: string,
  launch: AgentLaunch,
  hosts: StaticHost[],
  port = DEFAULT_AGENT_PORT,
): Promise<{ ca: ClusterCa; agents: StaticAgentRecord[] }> {
  checkHosts(hosts);
  const ca = await clusterCa(clusterDir, launch.clusterKey);
  const agents: StaticAgentRecord[] = [];
  try {
    // In parallel: each host's agent is independent (the bootstrap tree of issue 9 replaces this).
    const results = await Promise.allSettled(hosts.map((h, i) => startStaticAgent(path.join(clusterDir, `host-${i}`), launch, ca, i, h, port)));
    for (const r of results) if (r.status === "fulfilled") agents.push(r.value);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed.length) throw new Error(failed.map((r) => (r.reason as Error).message).join("\n"));
  } catch (err) {
    await Promise.allSettled(agents.map((a) => stopStaticAgent(a, launch, ca.cert)));
    fs.rmSync(clusterDir, { recursive: true, force: true });
    throw err;
  }
  return { ca, agents };
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
