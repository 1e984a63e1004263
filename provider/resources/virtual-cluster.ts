import * as pulumi from "@pulumi/pulumi";
import type { AgentRecord } from "../allocation/local";

export interface VirtualClusterInputs {
  name: string;
  /** Root of the agents' state directories; each cluster gets <stateRoot>/clusters/<project>.<stack>.<name>/. */
  stateRoot: string;
  project: string;
  stack: string;
  manager: "local";
  hosts: number;
}

export interface VirtualClusterOutputs extends VirtualClusterInputs {
  /** The per-cluster bearer token of its agents (a secret). */
  token: string;
  agents: (AgentRecord & { healthy: boolean })[];
}

type Args = { [K in keyof VirtualClusterInputs]: pulumi.Input<VirtualClusterInputs[K]> };

function clusterDir(i: VirtualClusterInputs): string {
  const path = require("path") as typeof import("path");
  return path.join(i.stateRoot, "clusters", `${i.project}.${i.stack}.${i.name}`);
}

function hostDir(i: VirtualClusterInputs, host: number): string {
  const path = require("path") as typeof import("path");
  return path.join(clusterDir(i), `host-${host}`);
}

export async function clusterCreate(inputs: VirtualClusterInputs): Promise<pulumi.dynamic.CreateResult> {
  const { newToken, startLocalAgent, stopLocalAgent } = require("../allocation/local") as typeof import("../allocation/local");
  const token = newToken();
  const agents: AgentRecord[] = [];
  try {
    for (let h = 0; h < inputs.hosts; h++) agents.push(await startLocalAgent(hostDir(inputs, h), token, h));
  } catch (err) {
    // Leave nothing behind from a half-made cluster.
    for (const a of agents) await stopLocalAgent(a, token).catch(() => undefined);
    throw err;
  }
  return { id: `${inputs.project}.${inputs.stack}.${inputs.name}`, outs: { ...inputs, token, agents: agents.map((a) => ({ ...a, healthy: true })) } };
}

export async function clusterDiff(olds: VirtualClusterOutputs, news: VirtualClusterInputs): Promise<pulumi.dynamic.DiffResult> {
  const keys: (keyof VirtualClusterInputs)[] = ["name", "stateRoot", "project", "stack", "manager", "hosts"];
  const replaces = keys.filter((k) => olds[k] !== news[k]);
  const unhealthy = (olds.agents ?? []).some((a) => !a.healthy);
  return { changes: replaces.length > 0 || unhealthy, replaces, deleteBeforeReplace: true };
}

/** Restarts agents that refresh found dead, on their old port and state, so they re-adopt their VMs. */
export async function clusterUpdate(olds: VirtualClusterOutputs, news: VirtualClusterInputs): Promise<pulumi.dynamic.UpdateResult> {
  const { agentHealthy, startLocalAgent } = require("../allocation/local") as typeof import("../allocation/local");
  const agents = [];
  for (const a of olds.agents) {
    agents.push(
      (await agentHealthy(a, olds.token)) ? { ...a, healthy: true } : { ...(await startLocalAgent(a.stateDir, olds.token, a.host, a.port)), healthy: true },
    );
  }
  return { outs: { ...news, token: olds.token, agents } };
}

export async function clusterDelete(props: VirtualClusterOutputs): Promise<void> {
  const { stopLocalAgent } = require("../allocation/local") as typeof import("../allocation/local");
  const fs = require("fs") as typeof import("fs");
  for (const a of props.agents ?? []) await stopLocalAgent(a, props.token);
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
  declare readonly agents: pulumi.Output<VirtualClusterOutputs["agents"]>;

  constructor(name: string, args: Args, opts?: pulumi.CustomResourceOptions) {
    super(
      provider,
      name,
      { ...args, token: undefined, agents: undefined },
      { ...opts, hideDiffs: ["__provider"], additionalSecretOutputs: ["token"] },
      "vse",
      "VirtualCluster",
    );
  }
}
