// Types only: the package's index loads the whole SDK (automation API, closure serializer, TypeScript).
import type * as pulumi from "@pulumi/pulumi";
import type { AllocationRequest, ClusterAgents } from "../allocation/allocator";
import type { AgentLaunch, AgentRecord } from "../allocation/local";
import type { AllocationModel } from "../model/resolve";
import { managerFacts } from "../allocation/managers";
import { info, warn } from "./engine-log";
import { ModuleProviderResource } from "./provider-module";

export interface VirtualClusterInputs {
  name: string;
  /** Root of the agents' state directories; each cluster gets <stateRoot>/clusters/<name>-<cluster key>/. */
  stateRoot: string;
  project: string;
  stack: string;
  manager: AllocationModel["manager"];
  hosts: number;
  /** The whole allocation block (hosts by address, port, the manager's own settings); `manager` and `hosts` repeat its two key fields. */
  allocation?: AllocationModel;
  /** The host's content-addressed image store the agents boot from (<cacheDir>/images). */
  imageStore: string;
  /** The site policy file the agents enforce; null: the permissive local default. */
  sitePolicyFile: string | null;
  /**
   * The images its VMs boot (ids in imageStore). Agents on declared hosts keep their own stores:
   * these are staged to them down the bootstrap tree, at create and whenever the list changes.
   */
  imageIds?: string[];
  /**
   * The warm-launch snapshots its VMs restore that the controller's store has (keys, drivers/qemu-warm.ts;
   * made by `vse warm`): staged like the images to agents on declared hosts, so that their first VMs come
   * up warm too. Without one a host's first warm VM boots cold and leaves one there.
   */
  snapshotKeys?: string[];
  /** spec.recovery: what the agents of declared hosts do when failure detection finds a host lost (agent/recovery.ts); absent: none. */
  recovery?: "none" | "terminate" | "restart";
  /**
   * What each VM of the cluster asks for, as site policy judges it (model/policy.ts VmPolicyFacts, plus its host).
   * The provider ignores it; it is here so that a policy pack (policy-pack/) can refuse the cluster before its agents start.
   */
  vmFacts?: { vm: string; host: number; hypervisor: string; memoryMiB: number; vcpus: number; base?: string; mirror?: string; kernelArgs: string[] }[];
}

export interface VirtualClusterOutputs extends VirtualClusterInputs {
  /** Derived from project, stack and name: libvirt domain names, MACs, the network and the state directory carry it. */
  clusterKey: string;
  /** The per-cluster bearer token of its agents (a secret). */
  token: string;
  agents: (AgentRecord & { healthy: boolean })[];
  /** The cluster CA's certificate when its agents serve HTTPS (hosts by address), else null. */
  ca: string | null;
  /** What the manager allocated (e.g. the scheduler's job id), and on refresh whether it still stands. */
  allocationInfo: Record<string, string>;
  /** Hosts failure detection found lost (agent/heartbeat.ts), as refresh read them from the coordinator's record. */
  failures?: { host: number; at: string; detectedBy: number[]; routes: string[]; recovery: string[] }[];
  /** A scheduler allocation's handle ("slurm:<job id>"), kept by the VMs; null for local and static hosts. */
  allocationRef: string | null;
}

type Args = { [K in keyof VirtualClusterInputs]: pulumi.Input<VirtualClusterInputs[K]> };

/** The inputs as the outputs record them: vmFacts (an entry per VM, for a policy pack, which judges inputs) stays in the inputs. */
function recorded(i: VirtualClusterInputs): Omit<VirtualClusterInputs, "vmFacts"> {
  const rest = { ...i };
  delete rest.vmFacts;
  return rest;
}

function keyOf(i: VirtualClusterInputs): string {
  const { clusterKey } = require("../drivers/network") as typeof import("../drivers/network");
  return clusterKey(i.project, i.stack, i.name);
}

export function clusterDir(i: VirtualClusterInputs): string {
  const path = require("path") as typeof import("path");
  return path.join(i.stateRoot, "clusters", `${i.name}-${keyOf(i)}`);
}

function launchOf(i: VirtualClusterInputs, token: string): AgentLaunch {
  return { token, clusterKey: keyOf(i), imageStore: i.imageStore, policyFile: i.sitePolicyFile ?? undefined };
}

function allocationOf(i: VirtualClusterInputs): AllocationModel {
  return i.allocation ?? { manager: i.manager, hosts: i.hosts };
}

function requestOf(i: VirtualClusterInputs, token: string): AllocationRequest {
  return { clusterName: i.name, clusterKey: keyOf(i), clusterDir: clusterDir(i), launch: launchOf(i, token), allocation: allocationOf(i) };
}

function allocatorOf(i: VirtualClusterInputs) {
  const { allocatorFor } = require("../allocation/allocator") as typeof import("../allocation/allocator");
  return allocatorFor(i.manager);
}

function stateOf(o: VirtualClusterOutputs): ClusterAgents {
  return { agents: o.agents ?? [], ca: o.ca ?? null, info: o.allocationInfo ?? {}, ...(o.allocationRef ? { ref: o.allocationRef } : {}) };
}

/** Stages the VMs' images, then their warm-launch snapshots, to agents that keep their own image store (those serving HTTPS); a host that has one already skips it. */
async function stageImages(req: AllocationRequest, state: ClusterAgents, imageIds: string[], snapshotKeys: string[] = []): Promise<void> {
  if (!state.ca || !ownHosts(req.allocation.manager)) return;
  const { stageClusterImage } = require("../allocation/staging") as typeof import("../allocation/staging");
  const staged = [...[...new Set(imageIds)].map((id) => ["image", id] as const), ...[...new Set(snapshotKeys)].map((k) => ["snapshot", k] as const)];
  for (const [kind, id] of staged) {
    const r = await stageClusterImage(req, state, id, { kind });
    const mib = (r.bytesTotal / 1048576).toFixed(1);
    await info(
      `cluster ${req.clusterName}: ${kind} ${id.slice(0, 12)} (${mib} MiB) on ${r.hosts.length} hosts: ${r.staged} staged down the tree (fanout ${r.fanout}), ${r.skipped} had it; ${r.seconds.toFixed(1)} s`,
    );
  }
}

/** Whether the manager's agents serve HTTPS on hosts of their own, with their own image stores, watching each other (allocation/managers.ts). */
function ownHosts(manager: string): boolean {
  return managerFacts(manager)?.ownHosts === true;
}

/** Agents that watch each other: those of hosts of their own, bootstrapped as a tree (their membership starts the heartbeats). */
function watching(req: AllocationRequest, state: ClusterAgents): boolean {
  return ownHosts(req.allocation.manager) && state.ca !== null;
}

/** Sets the recovery policy on every agent of the cluster (PUT /v1/cluster/recovery); the agents themselves default to none. */
async function setRecovery(req: AllocationRequest, state: ClusterAgents, policy: string, agents = state.agents): Promise<void> {
  if (!watching(req, state)) return;
  const { agentClient, allOrReport } = require("../allocation/allocator") as typeof import("../allocation/allocator");
  const { rememberClusterAgents } = require("../agent/recovery") as typeof import("../agent/recovery");
  // Where a VM whose agent is lost looks up the cluster's failure record.
  rememberClusterAgents(req.clusterKey, { urls: state.agents.map((a) => a.url), stateDirs: state.agents.map((a) => a.stateDir ?? null), ca: state.ca! });
  // An agent serves /v1/cluster/ once it has read the membership the bootstrap committed (it looks every second).
  const put = async (a: AgentRecord) => {
    const client = agentClient(a.url, req.launch.token, state.ca);
    for (const deadline = Date.now() + 15000; ;) {
      try {
        return await client.request("PUT", "/v1/cluster/recovery", { policy }, 10000);
      } catch (err) {
        if ((err as { status?: number }).status !== 404 || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  };
  await allOrReport(agents, put);
}

/** Waits until no agent of the cluster counts a peer as dead, for long enough that a silence begun earlier would show (at most a minute). */
async function untilAllHeard(req: AllocationRequest, state: ClusterAgents, quietMs = 5000): Promise<void> {
  const { agentClient } = require("../allocation/allocator") as typeof import("../allocation/allocator");
  const deadline = Date.now() + 60000;
  let quietSince = Date.now();
  while (Date.now() < deadline) {
    const views = await Promise.all(
      state.agents.map((a) =>
        agentClient(a.url, req.launch.token, state.ca)
          .request<{ dead: number[] }>("GET", "/v1/cluster/failures", undefined, 5000)
          .catch(() => ({ dead: [-1] })),
      ),
    );
    if (views.some((v) => v.dead.length > 0)) quietSince = Date.now();
    else if (Date.now() - quietSince >= quietMs) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  await warn(`cluster ${req.clusterName}: its agents still count a peer as lost a minute after their restart; recovery policy set back anyway`);
}

export async function clusterCreate(inputs: VirtualClusterInputs): Promise<pulumi.dynamic.CreateResult> {
  const { newClusterToken } = require("../agent/protocol") as typeof import("../agent/protocol");
  const clusterKey = keyOf(inputs);
  const req = requestOf(inputs, newClusterToken(clusterKey));
  // All or nothing: a manager that fails leaves nothing of a half-made cluster.
  const allocator = allocatorOf(inputs);
  const got = await allocator.allocate(req);
  try {
    await stageImages(req, got, inputs.imageIds ?? [], inputs.snapshotKeys);
    await setRecovery(req, got, inputs.recovery ?? "none");
  } catch (err) {
    await allocator.release(req, got).catch(() => undefined);
    throw err;
  }
  return {
    id: `${inputs.project}.${inputs.stack}.${inputs.name}`,
    outs: {
      ...recorded(inputs),
      clusterKey,
      token: req.launch.token,
      agents: got.agents.map((a) => ({ ...a, healthy: true })),
      ca: got.ca,
      allocationInfo: got.info,
      allocationRef: got.ref ?? null,
    },
  };
}

const REPLACE_KEYS: (keyof VirtualClusterInputs)[] = ["name", "stateRoot", "project", "stack", "manager", "hosts"];
/** Fields the agents are started with: a change restarts them in place (they re-attach to their VMs). */
const RESTART_KEYS: (keyof VirtualClusterInputs)[] = ["imageStore", "sitePolicyFile"];

/** The allocation as far as it decides where agents run; for `local` that is manager and host count alone (older stacks record no block). */
function placement(i: VirtualClusterInputs): string {
  return i.manager === "local" ? "" : JSON.stringify(allocationOf(i));
}

export async function clusterDiff(olds: VirtualClusterOutputs, news: VirtualClusterInputs): Promise<pulumi.dynamic.DiffResult> {
  const replaces: string[] = REPLACE_KEYS.filter((k) => olds[k] !== news[k]);
  if (!replaces.includes("hosts") && placement(olds) !== placement(news)) replaces.push("allocation");
  // A scheduler allocation that refresh found ended (cancelled, out of time) cannot be resumed: the next up makes a new one.
  if (!replaces.includes("allocation") && olds.allocationInfo?.allocation?.startsWith("ended")) replaces.push("allocation");
  const restarts = RESTART_KEYS.filter((k) => olds[k] !== news[k]);
  // Agents on hosts of their own are staged to and told the recovery policy: a change there is an update.
  if (ownHosts(news.manager)) {
    if (JSON.stringify(olds.imageIds ?? []) !== JSON.stringify(news.imageIds ?? [])) restarts.push("imageIds");
    if (JSON.stringify(olds.snapshotKeys ?? []) !== JSON.stringify(news.snapshotKeys ?? [])) restarts.push("snapshotKeys");
    if ((olds.recovery ?? "none") !== (news.recovery ?? "none")) restarts.push("recovery");
  }
  const unhealthy = (olds.agents ?? []).some((a) => !a.healthy);
  return { changes: replaces.length > 0 || restarts.length > 0 || unhealthy, replaces, deleteBeforeReplace: true };
}

/** Restarts agents that refresh found dead, or whose launch changed, on their old state, so they re-attach to their VMs. */
export async function clusterUpdate(olds: VirtualClusterOutputs, news: VirtualClusterInputs): Promise<pulumi.dynamic.UpdateResult> {
  const relaunch = RESTART_KEYS.some((k) => olds[k] !== news[k]);
  const req = requestOf(news, olds.token);
  const allocator = allocatorOf(news);
  const state = stateOf(olds);
  const policy = news.recovery ?? "none";
  const healthy = await Promise.all(state.agents.map((a) => allocator.healthy(req, state, a)));
  // An agent restarted on purpose is silent for a moment: its peers must not take that for a lost host and act on it.
  if (policy !== "none" && (relaunch || healthy.includes(false)))
    await setRecovery(
      req,
      state,
      "none",
      state.agents.filter((_a, i) => healthy[i]),
    );
  const agents = [];
  for (const [i, a] of state.agents.entries()) {
    if (!relaunch && healthy[i]) {
      agents.push({ ...a, healthy: true });
      continue;
    }
    agents.push({ ...(await allocator.restartAgent(req, state, a)), healthy: true });
  }
  // A restarted agent, or a new image, may need staging; hosts that have an image skip it.
  await stageImages(req, { ...state, agents }, news.imageIds ?? [], news.snapshotKeys);
  // The policy returns only once every agent hears all its peers again: a restart must not be acted on late.
  if (policy !== "none" && (relaunch || healthy.includes(false))) await untilAllHeard(req, { ...state, agents });
  await setRecovery(req, { ...state, agents }, policy);
  return {
    outs: {
      ...recorded(news),
      clusterKey: olds.clusterKey,
      token: olds.token,
      agents,
      ca: state.ca,
      allocationInfo: state.info,
      allocationRef: state.ref ?? null,
    },
  };
}

export async function clusterDelete(props: VirtualClusterOutputs): Promise<void> {
  // Every host is tried, whatever failed before it; then the failures are reported together.
  try {
    await allocatorOf(props).release(requestOf(props, props.token), stateOf(props));
  } catch (err) {
    throw new Error(`cluster ${props.name}: ${(err as Error).message}`);
  }
  const { forgetClusterAgents } = require("../agent/recovery") as typeof import("../agent/recovery");
  forgetClusterAgents(props.clusterKey);
}

export async function clusterRead(id: string, props: VirtualClusterOutputs): Promise<pulumi.dynamic.ReadResult> {
  const allocator = allocatorOf(props);
  const req = requestOf(props, props.token);
  const state = stateOf(props);
  const agents = [];
  for (const a of state.agents) agents.push({ ...a, healthy: await allocator.healthy(req, state, a) });
  const status = allocator.status ? await allocator.status(req, state) : undefined;
  const allocationInfo = status ? { ...state.info, allocation: status.active ? "active" : `ended${status.reason ? `: ${status.reason}` : ""}` } : state.info;
  return { id, props: { ...recorded(props), agents, ca: state.ca, allocationInfo, ...(await failuresOf(props, state)) } };
}

/** The cluster's failure record, for agents that watch each other (HTTPS); remembered by cluster key so its VMs find it too. */
async function failuresOf(props: VirtualClusterOutputs, state: ClusterAgents): Promise<Pick<VirtualClusterOutputs, "failures">> {
  if (!state.ca) return {};
  const { readClusterFailures, rememberClusterAgents } = require("../agent/recovery") as typeof import("../agent/recovery");
  const index = { urls: state.agents.map((a) => a.url), stateDirs: state.agents.map((a) => a.stateDir ?? null), ca: state.ca };
  rememberClusterAgents(props.clusterKey, index);
  const record = await readClusterFailures(index, props.token).catch(() => undefined);
  return {
    failures: (record?.failures ?? []).map((f) => ({
      host: f.host,
      at: f.firstDetectedAt,
      detectedBy: f.detectedBy.map((d) => d.host),
      routes: f.detectedBy.map((d) => d.route.join(" → ")),
      recovery: (f.recovery?.actions ?? []).map(
        (a) => `${f.recovery!.policy}: ${a.vm ? `VM ${a.vm} ` : ""}${a.action}${a.ok ? "" : ` (failed: ${a.detail ?? ""})`}`,
      ),
    })),
  };
}

/** What the dynamic-provider plugin runs for a cluster: its state names this module by path (provider-module.ts). */
export const provider: pulumi.dynamic.ResourceProvider = {
  create: (inputs) => clusterCreate(inputs),
  diff: (_id, olds, news) => clusterDiff(olds, news),
  update: (_id, olds, news) => clusterUpdate(olds, news),
  delete: (_id, props) => clusterDelete(props),
  read: (id, props) => clusterRead(id, props),
};

/** A virtual cluster: its node agents (one per allocated host) and their shared secret token. */
export class VirtualCluster extends ModuleProviderResource {
  declare readonly token: pulumi.Output<string>;
  declare readonly clusterKey: pulumi.Output<string>;
  declare readonly agents: pulumi.Output<VirtualClusterOutputs["agents"]>;
  declare readonly ca: pulumi.Output<string | null>;
  declare readonly allocationInfo: pulumi.Output<Record<string, string>>;
  declare readonly allocationRef: pulumi.Output<string | null>;

  constructor(name: string, args: Args, opts?: pulumi.CustomResourceOptions) {
    super(
      "VirtualCluster",
      __filename,
      name,
      { ...args, clusterKey: undefined, token: undefined, agents: undefined, ca: undefined, allocationInfo: undefined, allocationRef: undefined },
      { ...opts, additionalSecretOutputs: ["token"] },
    );
  }
}
