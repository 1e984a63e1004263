// What a cluster does when it loses a host (issue 9): the declarative
// recovery policy of the VirtualCluster (spec.recovery), carried out by the
// coordinator once failure detection (agent/heartbeat.ts) has recorded the loss.
//
//   none (default): the loss is recorded (refresh shows it) and nothing else;
//     the next `pulumi up` restarts the lost agent, which re-attaches to its VMs.
//   terminate: the coordinator tells every survivor to stop its VMs
//     cleanly and end (POST /v1/cluster/terminate), then does the same itself;
//     nothing of the cluster is left running.
//   restart: the lost host's VMs (its last replica, which its watchers held)
//     are started again on surviving hosts through their agents' ordinary
//     PUT /v1/vms/<name> (the same admission checks and driver contract),
//     spread over the survivors, fewest restarted VMs first.
//
// Under terminate or restart, a host that finds every peer it watches silent
// at once is the one cut off: it fences itself (stops its VMs, ends), because
// the others are about to terminate or restart what it runs.
//
// The policy is <stateDir>/recovery.json ({ "policy": "none" | "terminate" | "restart" }),
// set by the controller over the API (PUT /v1/cluster/recovery) when the
// cluster is made or its policy changes; read again at each failure.
import type * as http from "http";
import * as path from "path";
import type { Agent } from "./agent";
import { AgentClient } from "./client";
import type { ClusterMonitor, FailureRecord, RecoveryAction } from "./heartbeat";
import { AgentRefusal } from "./protocol";
import { readJson, writeFileAtomic } from "./state";

export const RECOVERY_POLICIES = ["none", "terminate", "restart"] as const;
export type RecoveryPolicy = (typeof RECOVERY_POLICIES)[number];
export const RECOVERY_FILE = "recovery.json";

/** The policy in <stateDir>/recovery.json; terminate when there is none. A malformed file is an error naming it. */
export function readRecoveryPolicy(stateDir: string): RecoveryPolicy {
  const file = path.join(stateDir, RECOVERY_FILE);
  const doc = readJson<{ policy?: unknown }>(file);
  if (doc === undefined) return "none";
  if (!RECOVERY_POLICIES.includes(doc.policy as RecoveryPolicy))
    throw new Error(`${file}: policy: expected one of ${RECOVERY_POLICIES.join(", ")}, found ${JSON.stringify(doc.policy)}`);
  return doc.policy as RecoveryPolicy;
}

export function writeRecoveryPolicy(stateDir: string, policy: RecoveryPolicy): void {
  if (!RECOVERY_POLICIES.includes(policy)) throw new Error(`recovery policy: expected one of ${RECOVERY_POLICIES.join(", ")}, found ${JSON.stringify(policy)}`);
  writeFileAtomic(path.join(stateDir, RECOVERY_FILE), JSON.stringify({ policy }) + "\n");
}

/** VM states worth bringing back: a VM that finished its job and powered off, or was stopped, stays so. */
const RESTARTABLE = ["running", "starting", "paused"];

export interface RecoveryOptions {
  stateDir: string;
  agent: Agent;
  monitor: ClusterMonitor;
  token: string;
  ca: string;
  /** Every agent's URL, index = host. */
  urls: string[];
  log: (msg: string) => void;
  /** Ends this agent's process once its VMs are stopped (main.ts's shutdown path). */
  exit: () => void;
  /** How long the coordinator waits after the first report before it acts, so the other detectors' reports are recorded too. */
  settleMs: number;
}

export class Recovery {
  private ending = false;

  constructor(private readonly o: RecoveryOptions) {}

  private client(host: number): AgentClient {
    return new AgentClient(this.o.urls[host], this.o.token, { ca: this.o.ca });
  }

  private note(host: number, policy: string, a: Omit<RecoveryAction, "at">): void {
    this.o.monitor.noteRecovery(host, policy, { ...a, at: new Date().toISOString() });
  }

  /** The coordinator's hook for a newly lost host. */
  onFailure(rec: FailureRecord): void {
    setTimeout(() => {
      this.recover(rec.host).catch((err: Error) => this.o.log(`recovery of host ${rec.host} failed: ${err.message}`));
    }, this.o.settleMs);
  }

  private async recover(lost: number): Promise<void> {
    if (this.ending) return;
    let policy: RecoveryPolicy;
    try {
      policy = readRecoveryPolicy(this.o.stateDir);
    } catch (err) {
      // A broken policy file must not leave the cluster half-alive: the default applies, and the record says why.
      this.o.log(`${(err as Error).message}; applying terminate`);
      policy = "terminate";
    }
    const m = this.o.monitor;
    // A host heard from again while the reports settled was slow or restarting, not lost: nothing to recover.
    if (!m.dead.has(lost)) {
      this.o.log(`recovery of host ${lost}: it answers again; nothing done`);
      this.note(lost, policy, { action: "answered again before recovery; nothing done", ok: true });
      return;
    }
    const live = this.o.urls.map((_u, h) => h).filter((h) => !m.dead.has(h));
    this.o.log(`recovery of host ${lost}: policy ${policy}, survivors ${live.join(", ")}`);
    if (policy === "none") {
      this.note(lost, policy, { action: "recorded only (recovery: none)", ok: true });
      return;
    }
    if (policy === "terminate") return this.terminateAll(lost, live);
    const rec = m.view().failures.find((f) => f.host === lost);
    const vms = (rec?.replica?.vms ?? m.replicaOf(lost)?.vms ?? []).filter((v) => RESTARTABLE.includes(v.state));
    if (!vms.length) {
      this.note(lost, policy, {
        action: "nothing to restart",
        ok: true,
        detail: rec?.replica ? "no running VM on the lost host" : "no replica of the lost host",
      });
      return;
    }
    const load = new Map(live.map((h) => [h, 0]));
    for (const vm of vms) {
      // Fewest restarted VMs first, then the hosts after the lost one on the ring (spreads the load of several losses).
      const target = [...load.entries()].sort((a, b) => a[1] - b[1] || ring(a[0], lost, m.n) - ring(b[0], lost, m.n))[0]?.[0];
      if (target === undefined) break;
      load.set(target, load.get(target)! + 1);
      try {
        const v = await this.client(target).putVm(vm.name, vm.spec);
        this.note(lost, policy, { vm: vm.name, host: target, action: `restarted on host ${target}`, ok: true, detail: `pid ${v.observed.pid ?? "?"}` });
        this.o.log(`recovery: VM ${vm.name} of host ${lost} restarted on host ${target}`);
      } catch (err) {
        this.note(lost, policy, { vm: vm.name, host: target, action: `restart on host ${target} failed`, ok: false, detail: (err as Error).message });
        this.o.log(`recovery: VM ${vm.name} of host ${lost}: restart on host ${target} failed: ${(err as Error).message}`);
      }
    }
  }

  private async terminateAll(lost: number, live: number[]): Promise<void> {
    const self = this.o.monitor.self;
    const reason = `host ${lost} lost (detected by ${
      this.o.monitor
        .view()
        .failures.find((f) => f.host === lost)
        ?.detectedBy.map((d) => d.host)
        .join(",") ?? "?"
    })`;
    await Promise.all(
      live
        .filter((h) => h !== self)
        .map(async (h) => {
          try {
            await this.client(h).request("POST", "/v1/cluster/terminate", { by: self, reason }, 120000);
            this.note(lost, "terminate", { host: h, action: "terminated", ok: true });
          } catch (err) {
            this.note(lost, "terminate", { host: h, action: "terminate failed", ok: false, detail: (err as Error).message });
          }
        }),
    );
    this.note(lost, "terminate", { host: self, action: "terminated (coordinator)", ok: true });
    await this.end(`terminate: ${reason}`);
  }

  /** Stops every VM of this agent cleanly, then ends it. */
  async end(why: string): Promise<void> {
    if (this.ending) return;
    this.ending = true;
    this.o.log(`${why}: stopping every VM and ending`);
    this.o.monitor.stop();
    try {
      // Cleanly: each VM is asked to stop (its driver's graceful stop) before it is removed.
      await this.o.agent.powerOffAll();
    } catch (err) {
      this.o.log(`stopping the VMs: ${(err as Error).message}`);
    }
    this.o.exit();
  }

  /** Fencing: this host lost every peer it watches, so it is the one cut off. */
  onIsolated(): void {
    // Without a policy that acts, nobody takes over what this host runs: it keeps running, and says so.
    let policy: RecoveryPolicy = "terminate";
    try {
      policy = readRecoveryPolicy(this.o.stateDir);
    } catch {
      // a broken file: fence, as the others apply terminate
    }
    if (policy === "none") {
      this.o.log("cut off from every watched peer; recovery: none, so this host keeps its VMs running");
      return;
    }
    void this.end("cut off from every watched peer (fencing)");
  }

  /** The /v1/cluster/ routes of recovery (after the failure-detection ones). */
  async handle(req: http.IncomingMessage, url: URL, body: () => Promise<unknown>): Promise<[number, unknown]> {
    if (url.pathname === "/v1/cluster/terminate") {
      if (req.method !== "POST") throw new AgentRefusal(405, `${req.method} is not allowed on ${url.pathname}`);
      const b = (await body()) as { by?: unknown; reason?: unknown } | null;
      if (typeof b !== "object" || b === null || typeof b.by !== "number" || typeof b.reason !== "string" || b.reason.length > 2000)
        throw new AgentRefusal(400, "body: expected { by: <host>, reason: <text> }");
      const why = `terminate requested by host ${b.by}: ${b.reason}`;
      // Answer first: the coordinator waits for this, then the VMs stop and the agent ends.
      setImmediate(() => void this.end(why));
      return [200, { ok: true }];
    }
    if (url.pathname === "/v1/cluster/recovery") {
      if (req.method === "GET") return [200, { policy: readRecoveryPolicy(this.o.stateDir) }];
      if (req.method !== "PUT") throw new AgentRefusal(405, `${req.method} is not allowed on ${url.pathname}`);
      const b = (await body()) as { policy?: unknown } | null;
      if (typeof b !== "object" || b === null || !RECOVERY_POLICIES.includes(b.policy as RecoveryPolicy))
        throw new AgentRefusal(400, `body: expected { policy: ${RECOVERY_POLICIES.join(" | ")} }`);
      writeRecoveryPolicy(this.o.stateDir, b.policy as RecoveryPolicy);
      return [200, { policy: b.policy }];
    }
    throw new AgentRefusal(404, `no such endpoint ${url.pathname}`);
  }
}

/** Clockwise distance from `from` to h on a ring of n. */
function ring(h: number, from: number, n: number): number {
  return (((h - from) % n) + n) % n;
}

export interface FailureDetectionOptions {
  stateDir: string;
  agent: Agent;
  token: string;
  /** The agent's certificate chain (PEM): the cluster CA is its last certificate. */
  certChain: string;
  /** The server's options: its cluster routes are set once the membership is known. */
  serverOptions: { cluster?: (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => Promise<[number, unknown]> };
  log: (msg: string) => void;
  exit: () => void;
  periodMs?: number;
  suspectMs?: number;
}

/**
 * Starts heartbeats and recovery once <stateDir>/membership.json exists (the
 * tree bootstrap writes it after the agent came up): looked for every second.
 * Returns a stop function.
 */
export function startFailureDetection(o: FailureDetectionOptions): () => void {
  const { readMembership } = require("./membership") as typeof import("./membership");
  const { ClusterMonitor, caFromChain, readBody } = require("./heartbeat") as typeof import("./heartbeat");
  let monitor: ClusterMonitor | undefined;
  let broken = "";
  const tryStart = () => {
    let m;
    try {
      m = readMembership(o.stateDir);
    } catch (err) {
      if ((err as Error).message !== broken) o.log(`heartbeat: ${(broken = (err as Error).message)}`);
      return;
    }
    if (!m) return;
    clearInterval(poll);
    let ca: string;
    let mon: ClusterMonitor;
    let recovery: Recovery | undefined = undefined;
    try {
      ca = caFromChain(o.certChain);
      mon = new ClusterMonitor({
        membership: m,
        token: o.token,
        ca,
        periodMs: o.periodMs,
        suspectMs: o.suspectMs,
        stateDir: o.stateDir,
        log: o.log,
        replica: () => o.agent.replica(),
        onFailure: (rec) => recovery?.onFailure(rec),
        onIsolated: () => recovery?.onIsolated(),
      });
    } catch (err) {
      o.log(`heartbeat: not started: ${(err as Error).message}`);
      return;
    }
    recovery = new Recovery({
      stateDir: o.stateDir,
      agent: o.agent,
      monitor: mon,
      token: o.token,
      ca,
      urls: m.agents.map((a) => a.url),
      log: o.log,
      exit: o.exit,
      settleMs: mon.suspectMs,
    });
    const rec = recovery;
    o.serverOptions.cluster = async (req, res, url) => (await mon.handle(req, res, url)) ?? rec.handle(req, url, () => readBody(req));
    monitor = mon;
    mon.start();
  };
  const poll = setInterval(tryStart, 1000);
  poll.unref();
  tryStart();
  return () => {
    clearInterval(poll);
    monitor?.stop();
  };
}

// ---- the controller's side: what `pulumi refresh` shows ----

/** A cluster's agents as the controller knows them: URL and (for agents on this machine) state directory, index = host. */
export interface ClusterAgentsIndex {
  urls: string[];
  stateDirs: (string | null)[];
  ca: string | null;
}

/**
 * Where the controller remembers a cluster's agents by cluster key, so that a
 * VM whose agent is lost can find the cluster's failure record (a VM's own
 * inputs name only its agent). Written by the VirtualCluster on refresh.
 */
export function clusterIndexFile(clusterKey: string): string {
  if (!/^[0-9a-f]{10}$/.test(clusterKey)) throw new Error(`cluster key: expected 10 hex digits, found ${JSON.stringify(clusterKey)}`);
  const os = require("os") as typeof import("os");
  const root = process.env.VSE_CLUSTER_INDEX_DIR ?? path.join(os.homedir(), ".local", "state", "vse-provider", "cluster-agents");
  return path.join(root, `${clusterKey}.json`);
}

export function rememberClusterAgents(clusterKey: string, index: ClusterAgentsIndex): void {
  const fs = require("fs") as typeof import("fs");
  const file = clusterIndexFile(clusterKey);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileAtomic(file, JSON.stringify(index), 0o600);
}

export function forgetClusterAgents(clusterKey: string): void {
  const fs = require("fs") as typeof import("fs");
  fs.rmSync(clusterIndexFile(clusterKey), { force: true });
}

export function clusterAgentsOf(clusterKey: string): ClusterAgentsIndex | undefined {
  try {
    return readJson<ClusterAgentsIndex>(clusterIndexFile(clusterKey));
  } catch {
    return undefined;
  }
}

/**
 * The cluster's failure record as the controller reads it: from the
 * coordinator (the lowest host that answers, or whom it names), else, when no
 * agent answers (after a `terminate`), from the failures.json the agents on
 * this machine left in their state directories.
 */
export async function readClusterFailures(index: ClusterAgentsIndex, token: string): Promise<{ from: string; failures: FailureRecord[] } | undefined> {
  const { readFailures } = require("./heartbeat") as typeof import("./heartbeat");
  const ask = async (h: number) => {
    const c = new AgentClient(index.urls[h], token, index.ca ? { ca: index.ca } : {});
    return c.request<import("./heartbeat").FailureView>("GET", "/v1/cluster/failures", undefined, 5000);
  };
  for (let h = 0; h < index.urls.length; h++) {
    let v;
    try {
      v = await ask(h);
    } catch {
      continue;
    }
    if (v.coordinator !== h && v.coordinator >= 0) v = await ask(v.coordinator).catch(() => v!);
    return { from: `the coordinator, host ${v.self}`, failures: v.failures };
  }
  const merged = new Map<number, FailureRecord>();
  for (const [h, dir] of index.stateDirs.entries()) {
    for (const f of (dir ? readFailures(dir) : undefined) ?? []) {
      const prev = merged.get(f.host);
      if (!prev || f.detectedBy.length + (f.recovery?.actions.length ?? 0) > prev.detectedBy.length + (prev.recovery?.actions.length ?? 0))
        merged.set(f.host, f);
      void h;
    }
  }
  return merged.size ? { from: "the record the agents left on this machine", failures: [...merged.values()] } : undefined;
}

/** What happened to one VM whose agent (at agentUrl) does not answer, by the cluster's failure record. */
export function vmFate(
  failures: FailureRecord[],
  vm: string,
  agentUrl: string,
  urls: string[],
): { status: "lost" | "restarted" | "terminated"; message: string; host?: number; agentUrl?: string } | undefined {
  const by = (f: FailureRecord) => f.detectedBy.map((d) => d.host).join(",");
  const own = failures.find((f) => f.url === agentUrl);
  const ended = failures.find((f) => f.recovery?.policy === "terminate");
  if (own) {
    const restarted = own.recovery?.actions.find((a) => a.vm === vm && a.ok && a.host !== undefined);
    if (restarted)
      return {
        status: "restarted",
        message: `restarted on host ${restarted.host} at ${restarted.at}: host ${own.host} lost (detected by ${by(own)})`,
        host: restarted.host,
        agentUrl: urls[restarted.host!],
      };
    if (own.recovery?.policy === "terminate") return { status: "terminated", message: `terminated: host ${own.host} lost (detected by ${by(own)})` };
    const failed = own.recovery?.actions.find((a) => a.vm === vm && !a.ok);
    return { status: "lost", message: `host ${own.host} lost (detected by ${by(own)})${failed ? `; ${failed.action}: ${failed.detail ?? ""}` : ""}` };
  }
  if (ended) return { status: "terminated", message: `terminated: host ${ended.host} lost (detected by ${by(ended)})` };
  return undefined;
}
