import * as pulumi from "@pulumi/pulumi";
import type { AgentLaunch, AgentRecord } from "../allocation/local";

export interface VirtualClusterInputs {
  name: string;
  /** Root of the agents' state directories; each cluster gets <stateRoot>/clusters/<name>-<cluster key>/. */
  stateRoot: string;
  project: string;
  stack: string;
  manager: "local";
  hosts: number;
  /** The host's content-addressed image store the agents boot from (<cacheDir>/images). */
  imageStore: string;
  /** The site policy file the agents enforce; null: the permissive local default. */
  sitePolicyFile: string | null;
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
}

type Args = { [K in keyof VirtualClusterInputs]: pulumi.Input<VirtualClusterInputs[K]> };

function keyOf(i: VirtualClusterInputs): string {
  const { clusterKey } = require("../drivers/network") as typeof import("../drivers/network");
  return clusterKey(i.project, i.stack, i.name);
}

export function clusterDir(i: VirtualClusterInputs): string {
  const path = require("path") as typeof import("path");
  return path.join(i.stateRoot, "clusters", `${i.name}-${keyOf(i)}`);
}

function hostDir(i: VirtualClusterInputs, host: number): string {
  const path = require("path") as typeof import("path");
  return path.join(clusterDir(i), `host-${host}`);
}

function launchOf(i: VirtualClusterInputs, token: string): AgentLaunch {
  return { token, clusterKey: keyOf(i), imageStore: i.imageStore, policyFile: i.sitePolicyFile ?? undefined };
}

export async function clusterCreate(inputs: VirtualClusterInputs): Promise<pulumi.dynamic.CreateResult> {
  const { startLocalAgent, stopLocalAgent } = require("../allocation/local") as typeof import("../allocation/local");
  const { newClusterToken } = require("../agent/protocol") as typeof import("../agent/protocol");
  const clusterKey = keyOf(inputs);
  const launch = launchOf(inputs, newClusterToken(clusterKey));
  const agents: AgentRecord[] = [];
  try {
    for (let h = 0; h < inputs.hosts; h++) agents.push(await startLocalAgent(hostDir(inputs, h), launch, h));
  } catch (err) {
    // Leave nothing behind from a half-made cluster.
    for (const a of agents) await stopLocalAgent(a, launch).catch(() => undefined);
    const fs = require("fs") as typeof import("fs");
    fs.rmSync(clusterDir(inputs), { recursive: true, force: true });
    throw err;
  }
  return {
    id: `${inputs.project}.${inputs.stack}.${inputs.name}`,
    outs: { ...inputs, clusterKey, token: launch.token, agents: agents.map((a) => ({ ...a, healthy: true })) },
  };
}

const REPLACE_KEYS: (keyof VirtualClusterInputs)[] = ["name", "stateRoot", "project", "stack", "manager", "hosts"];
/** Fields the agents are started with: a change restarts them in place (they re-attach to their VMs). */
const RESTART_KEYS: (keyof VirtualClusterInputs)[] = ["imageStore", "sitePolicyFile"];

export async function clusterDiff(olds: VirtualClusterOutputs, news: VirtualClusterInputs): Promise<pulumi.dynamic.DiffResult> {
  const replaces = REPLACE_KEYS.filter((k) => olds[k] !== news[k]);
  const restarts = RESTART_KEYS.filter((k) => olds[k] !== news[k]);
  const unhealthy = (olds.agents ?? []).some((a) => !a.healthy);
  return { changes: replaces.length > 0 || restarts.length > 0 || unhealthy, replaces, deleteBeforeReplace: true };
}

/** Restarts agents that refresh found dead, or whose launch changed, on their old state, so they re-attach to their VMs. */
export async function clusterUpdate(olds: VirtualClusterOutputs, news: VirtualClusterInputs): Promise<pulumi.dynamic.UpdateResult> {
  const { agentHealthy, startLocalAgent, terminateLocalAgent } = require("../allocation/local") as typeof import("../allocation/local");
  const relaunch = RESTART_KEYS.some((k) => olds[k] !== news[k]);
  const launch = launchOf(news, olds.token);
  const agents = [];
  for (const a of olds.agents) {
    if (!relaunch && (await agentHealthy(a, olds.token))) {
      agents.push({ ...a, healthy: true });
      continue;
    }
    await terminateLocalAgent(a);
    agents.push({ ...(await startLocalAgent(a.stateDir, launch, a.host)), healthy: true });
  }
  return { outs: { ...news, clusterKey: olds.clusterKey, token: olds.token, agents } };
}

export async function clusterDelete(props: VirtualClusterOutputs): Promise<void> {
  const { stopLocalAgent } = require("../allocation/local") as typeof import("../allocation/local");
  const fs = require("fs") as typeof import("fs");
  const launch = launchOf(props, props.token);
  // Every host is tried, whatever failed before it; then the failures are reported together.
  const results = await Promise.allSettled((props.agents ?? []).map((a) => stopLocalAgent(a, launch)));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => (r.reason as Error).message);
  if (failed.length) throw new Error(`cluster ${props.name}: ${failed.join("\n")}`);
  fs.rmSync(clusterDir(props), { recursive: true, force: true });
}

export async function clusterRead(id: string, props: VirtualClusterOutputs): Promise<pulumi.dynamic.ReadResult> {
  const { agentHealthy } = require("../allocation/local") as typeof import("../allocation/local");
  const agents = [];
  for (const a of props.agents ?? []) agents.push({ ...a, healthy: await agentHealthy(a, props.token) });
  return { id, props: { ...props, agents } };
}

const MODULE = __filename;

// Kept tiny: serialized into the cluster's state, it only loads the code above.
const provider: pulumi.dynamic.ResourceProvider = {
  create: (inputs) => require(MODULE).clusterCreate(inputs),
  diff: (_id, olds, news) => require(MODULE).clusterDiff(olds, news),
  update: (_id, olds, news) => require(MODULE).clusterUpdate(olds, news),
  delete: (_id, props) => require(MODULE).clusterDelete(props),
  read: (id, props) => require(MODULE).clusterRead(id, props),
};

/** A virtual cluster: its node agents (one per allocated host) and their shared secret token. */
export class VirtualCluster extends pulumi.dynamic.Resource {
  declare readonly token: pulumi.Output<string>;
  declare readonly clusterKey: pulumi.Output<string>;
  declare readonly agents: pulumi.Output<VirtualClusterOutputs["agents"]>;

  constructor(name: string, args: Args, opts?: pulumi.CustomResourceOptions) {
    super(
      provider,
      name,
      { ...args, clusterKey: undefined, token: undefined, agents: undefined },
      { ...opts, hideDiffs: ["__provider"], additionalSecretOutputs: ["token"] },
      "vse",
      "VirtualCluster",
    );
  }
}
