import * as fs from "fs";
import * as path from "path";
import { AgentClient, AgentError } from "../agent/client";
import { readJson, writeFileAtomic } from "../agent/state";
import { spawnDetached } from "./spawn-detached";

/** One node agent, as the cluster resource records it. */
export interface AgentRecord {
  host: number;
  /** unix:<stateDir>/agent.sock */
  url: string;
  pid: number;
  stateDir: string;
}

/** What every agent of a cluster is started with. */
export interface AgentLaunch {
  token: string;
  clusterKey: string;
  /** The host's content-addressed image store. */
  imageStore: string;
  /** The site policy file; without one the agent enforces the permissive local default. */
  policyFile?: string;
}

// The daemon always runs compiled code, also when this module is loaded from sources (ts-jest).
export const AGENT_MAIN = __filename.endsWith(".ts")
  ? path.resolve(__dirname, "..", "..", "dist", "provider", "agent", "main.js")
  : path.resolve(__dirname, "..", "agent", "main.js");

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** True when pid is a live agent daemon of stateDir (its argv names both): never a pid alone. */
export function isAgentProcess(pid: number, stateDir: string): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return argv.includes(AGENT_MAIN) && argv[argv.indexOf("--state-dir") + 1] === stateDir;
  } catch {
    return false;
  }
}

/**
 * Starts (or restarts) the agent for one host as a detached daemon serving on
 * a unix socket in its state directory, and waits until it serves. A restart
 * reuses the state directory, so the agent re-attaches to the VMs it was running.
 */
export async function startLocalAgent(stateDir: string, launch: AgentLaunch, host: number): Promise<AgentRecord> {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(stateDir, 0o700);
  const infoFile = path.join(stateDir, "agent.json");
  const live = readJson<{ pid: number }>(infoFile);
  if (live && isAgentProcess(live.pid, stateDir)) throw new Error(`node agent for host ${host}: another agent (pid ${live.pid}) holds ${stateDir}`);
  const tokenFile = path.join(stateDir, "token");
  writeFileAtomic(tokenFile, launch.token, 0o600);
  const args = [AGENT_MAIN, "--state-dir", stateDir, "--token-file", tokenFile, "--cluster-key", launch.clusterKey, "--image-store", launch.imageStore];
  if (launch.policyFile) args.push("--policy", launch.policyFile);
  // Set only by `npm run bench` (control plane): agents run stand-in processes instead of QEMU (drivers/standin.ts).
  if (process.env.VSE_BENCH_STANDIN_GUESTS === "1") args.push("--standin-guests");
  const child = spawnDetached(process.execPath, args, { logFile: path.join(stateDir, "agent.log") });
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline && !child.exited()) {
    const info = readJson<{ pid: number; url: string }>(infoFile);
    if (info && info.pid === child.pid) {
      child.unref();
      return { host, url: info.url, pid: info.pid, stateDir };
    }
    await sleep(25);
  }
  const logTail = fs.readFileSync(path.join(stateDir, "agent.log"), "utf8").trim().split("\n").slice(-5).join("\n");
  child.kill();
  throw new Error(`node agent for host ${host} did not start (state ${stateDir}):\n${logTail}`);
}

/**
 * Runs the agent's own code in this process over the state directory of an
 * agent that is dead: it re-attaches to what still runs through the drivers,
 * so removing VMs works as the agent would do it. Refuses while the agent lives.
 */
export async function withOfflineAgent<T>(stateDir: string, clusterKey: string, fn: (agent: import("../agent/agent").Agent) => Promise<T>): Promise<T> {
  const info = readJson<{ pid: number }>(path.join(stateDir, "agent.json"));
  if (info && isAgentProcess(info.pid, stateDir)) throw new Error(`the agent of ${stateDir} (pid ${info.pid}) is alive; ask it instead`);
  const { Agent } = require("../agent/agent") as typeof import("../agent/agent");
  const { ImageStore } = require("../agent/image-store") as typeof import("../agent/image-store");
  const { PERMISSIVE_SITE_POLICY } = require("../model/site-policy") as typeof import("../model/site-policy");
  // Only removals run here: an empty image store admits nothing new.
  const { waitForLock } = require("../agent/lock") as typeof import("../agent/lock");
  // The agent's own lock: no agent starts meanwhile, and two removals here take turns.
  const lock = await waitForLock(stateDir, 60000);
  const agent = new Agent({ stateDir, clusterKey, images: new ImageStore(path.join(stateDir, "no-images")), policy: () => PERMISSIVE_SITE_POLICY });
  try {
    await agent.load();
    return await fn(agent);
  } finally {
    agent.close();
    lock.close();
  }
}

/** Ends an agent process but not its VMs (SIGTERM, then SIGKILL), so that a new one can re-attach to them. */
export async function terminateLocalAgent(a: AgentRecord): Promise<void> {
  const info = readJson<{ pid: number }>(path.join(a.stateDir, "agent.json"));
  for (const pid of new Set([a.pid, info?.pid].filter((p): p is number => p !== undefined))) {
    if (!isAgentProcess(pid, a.stateDir)) continue;
    process.kill(pid, "SIGTERM");
    const deadline = Date.now() + 5000;
    while (isAgentProcess(pid, a.stateDir) && Date.now() < deadline) await sleep(50);
    if (isAgentProcess(pid, a.stateDir)) process.kill(pid, "SIGKILL");
    while (isAgentProcess(pid, a.stateDir)) await sleep(20);
  }
}

/** Whether the recorded agent answers its health check. */
export async function agentHealthy(a: AgentRecord, token: string): Promise<boolean> {
  try {
    const h = await new AgentClient(a.url, token).health();
    return h.ok === true && isAgentProcess(h.pid, a.stateDir);
  } catch {
    return false;
  }
}

/**
 * Stops an agent and every VM it runs, then removes its state directory. When
 * the agent cannot do it (dead, or it failed), the same agent code runs here
 * over its state directory: it re-attaches to what still runs through the
 * drivers and destroys every VM, QEMU and libvirt alike. Every step runs even
 * when an earlier one failed; the errors are reported together at the end and
 * the state directory is then kept, so a retry can finish the job.
 */
export async function stopLocalAgent(a: AgentRecord, launch: Pick<AgentLaunch, "token" | "clusterKey" | "imageStore">): Promise<void> {
  await stopAgent(a, launch.clusterKey, new AgentClient(a.url, launch.token), `host ${a.host}`);
}

/**
 * What stopping any agent takes, however it is reached (client): ask it to
 * shut down; end its process; when it could not do the job itself, run the
 * agent's own code over its state; report every failure together, keeping the
 * state for a retry, else remove it.
 */
export async function stopAgent(a: AgentRecord, clusterKey: string, client: AgentClient, label: string): Promise<void> {
  const errors: string[] = [];
  let clean = false;
  try {
    await client.shutdown();
    clean = true;
  } catch (err) {
    if (!(err instanceof AgentError && err.status === 0)) errors.push(`agent of ${label}: ${(err as Error).message}`);
  }
  const info = readJson<{ pid: number }>(path.join(a.stateDir, "agent.json"));
  for (const pid of new Set([a.pid, info?.pid].filter((p): p is number => p !== undefined))) {
    const deadline = Date.now() + 5000;
    while (isAgentProcess(pid, a.stateDir) && Date.now() < deadline) await sleep(50);
    if (isAgentProcess(pid, a.stateDir)) process.kill(pid, "SIGKILL");
    while (isAgentProcess(pid, a.stateDir)) await sleep(20);
  }
  if (!clean && fs.existsSync(path.join(a.stateDir, "state.json"))) {
    await withOfflineAgent(a.stateDir, clusterKey, (agent) => agent.shutdown()).catch((err: Error) => errors.push(`${label}: ${err.message}`));
  }
  if (errors.length) throw new Error(`could not stop everything of ${label} (state kept in ${a.stateDir}): ${errors.join("; ")}`);
  fs.rmSync(a.stateDir, { recursive: true, force: true });
}

/** The `local` manager: one agent per host on this machine, each on the unix socket of its private state directory. */
export const localAllocator: import("./allocator").Allocator = {
  async allocate(req) {
    const { allOrReport } = require("./allocator") as typeof import("./allocator");
    const hosts = Array.from({ length: req.allocation.hosts }, (_, h) => h);
    // In parallel: the agents are independent, and each takes a node start (~0.2 s) to answer.
    const started = await Promise.allSettled(hosts.map((h) => startLocalAgent(path.join(req.clusterDir, `host-${h}`), req.launch, h)));
    const agents = started.filter((r): r is PromiseFulfilledResult<AgentRecord> => r.status === "fulfilled").map((r) => r.value);
    const failed = started.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed.length) {
      // Leave nothing behind from a half-made cluster.
      await allOrReport(agents, (a) => stopLocalAgent(a, req.launch)).catch(() => undefined);
      fs.rmSync(req.clusterDir, { recursive: true, force: true });
      throw new Error(failed.map((r) => (r.reason as Error).message).join("\n"));
    }
    return { agents: agents.sort((a, b) => a.host - b.host), ca: null, info: {} };
  },
  healthy: (req, _state, a) => agentHealthy(a, req.launch.token),
  async restartAgent(req, _state, a) {
    await terminateLocalAgent(a);
    return startLocalAgent(a.stateDir, req.launch, a.host);
  },
  async release(req, state) {
    const { allOrReport } = require("./allocator") as typeof import("./allocator");
    await allOrReport(state.agents, (a) => stopLocalAgent(a, req.launch));
    fs.rmSync(req.clusterDir, { recursive: true, force: true });
  },
};
