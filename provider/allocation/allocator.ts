// One interface for every allocation manager: where a cluster's node agents
// run, how they are started, checked, restarted and released. VirtualCluster
// (resources/virtual-cluster.ts) only talks to managers through it; each
// manager is one file in this folder, registered below.
import type { AgentClient } from "../agent/client";
import type { AllocationModel } from "../model/resolve";
import type { AgentLaunch, AgentRecord } from "./local";
import type { ManagerName } from "./managers";

export interface AllocationRequest {
  clusterName: string;
  clusterKey: string;
  /** <stateRoot>/clusters/<name>-<key>: the controller's directory for this cluster (host-<i>/ under it for agents on this machine). */
  clusterDir: string;
  launch: AgentLaunch;
  allocation: AllocationModel;
}

/** What a manager allocated: the agents by host index, and how to reach them. */
export interface ClusterAgents {
  /** Index = host. */
  agents: AgentRecord[];
  /** The cluster CA's certificate (PEM) when the agents serve HTTPS; null for unix-socket agents. */
  ca: string | null;
  /** What the manager allocated, shown in the cluster's outputs (e.g. { slurmJobId: "12" }). */
  info: Record<string, string>;
  /** A scheduler allocation's stable handle, "<manager>:<id>" (e.g. slurm:12): its VMs keep it to learn, with their agent gone, that it ended. */
  ref?: string;
}

export interface Allocator {
  /** Starts an agent on every host. All or nothing: on failure, whatever was started is stopped and removed again. */
  allocate(req: AllocationRequest): Promise<ClusterAgents>;
  /** Whether the recorded agent answers as itself. */
  healthy(req: AllocationRequest, state: ClusterAgents, agent: AgentRecord): Promise<boolean>;
  /** Ends the agent (not its VMs) if it still runs, and starts it again on the same state, so it re-attaches to its VMs. */
  restartAgent(req: AllocationRequest, state: ClusterAgents, agent: AgentRecord): Promise<AgentRecord>;
  /** Stops every agent and VM and releases the allocation; every host is tried, the failures are reported together. */
  release(req: AllocationRequest, state: ClusterAgents): Promise<void>;
  /** For refresh: whether the allocation still stands (e.g. a scheduler job cancelled outside Pulumi), and why not. */
  status?(req: AllocationRequest, state: ClusterAgents): Promise<{ active: boolean; reason?: string }>;
  /** For a ref's id (see ClusterAgents.ref): why the allocation ended (its agents powered their VMs off), or undefined while it stands. */
  ended?(id: string): Promise<string | undefined>;
}

// Loaded on use: a cluster of one manager never loads the others' code. One
// entry per manager of managers.ts (the type asks for each, and no other).
const ALLOCATORS: Record<ManagerName, () => Allocator> = {
  local: () => (require("./local") as typeof import("./local")).localAllocator,
  static: () => (require("./static") as typeof import("./static")).staticAllocator,
  slurm: () => (require("./slurm") as typeof import("./slurm")).slurmAllocator,
  ssh: () => (require("./ssh") as typeof import("./ssh")).sshAllocator,
  gridengine: () => (require("./gridengine") as typeof import("./gridengine")).gridEngineAllocator,
  torque: () => (require("./torque") as typeof import("./torque")).torqueAllocator,
  alps: () => (require("./alps") as typeof import("./alps")).alpsAllocator,
};

/** The managers with an allocator, in registry order. */
export const REGISTERED_MANAGERS = Object.keys(ALLOCATORS) as ManagerName[];

export function allocatorFor(manager: string): Allocator {
  // Own keys only: "constructor" or "toString" name no manager.
  const make = Object.hasOwn(ALLOCATORS, manager) ? ALLOCATORS[manager as ManagerName] : undefined;
  if (!make) throw new Error(`allocation.manager: expected one of ${REGISTERED_MANAGERS.join(", ")}, found ${JSON.stringify(manager)}`);
  return make();
}

/** Why the allocation behind ref ("<manager>:<id>") ended, or undefined while it stands (or the manager cannot tell). */
export async function allocationEnded(ref: string): Promise<string | undefined> {
  const m = /^([a-z]+):([A-Za-z0-9_.-]{1,64})$/.exec(ref);
  if (!m) throw new Error(`allocationRef: expected <manager>:<id>, found ${JSON.stringify(ref)}`);
  const a = allocatorFor(m[1]);
  return a.ended ? a.ended(m[2]) : undefined;
}

/** A client for one of the cluster's agents: over its unix socket, or over HTTPS with the cluster's CA pinned. */
export function agentClient(agentUrl: string, token: string, ca: string | null | undefined): AgentClient {
  const { AgentClient } = require("../agent/client") as typeof import("../agent/client");
  return new AgentClient(agentUrl, token, ca ? { ca } : {});
}

/** Runs fn for every item, all of them whatever fails; then throws the failures together. */
export async function allOrReport<T, R>(items: T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = await Promise.allSettled(items.map(fn));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
  if (failed.length) throw new Error(failed.join("\n"));
  return results.map((r) => (r as PromiseFulfilledResult<R>).value);
}
