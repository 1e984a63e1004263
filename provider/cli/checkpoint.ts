// `vse checkpoint save|restore|list`: checkpoints of a stack's VMs (agent/checkpoint.ts).
// The stack's state says which agents a cluster has (as for `vse status`).
//   save <vm>                 the VM's agent saves it into its host's store; the VM runs on
//   list                      the checkpoints in the stores of the stack's agents
//   restore <id> <vm> [--host n]
//                             the VM's running copy (if any) is stopped, then the agent of host n
//                             (default: the VM's own) starts it from the checkpoint
import type { CheckpointMeta } from "../agent/checkpoint";
import type { AgentClient } from "../agent/client";
import type { AccountingStackState } from "./accounting";

export type ClientFor = (url: string, token: string, ca: string | null) => AgentClient;

export const clientFor: ClientFor = (url, token, ca) => {
  const { AgentClient } = require("../agent/client") as typeof import("../agent/client");
  return new AgentClient(url, token, ca ? { ca } : {});
};

interface VmPlace {
  cluster: AccountingStackState["clusters"][number];
  ca: string | null;
  host: number | null;
}

function placeOf(state: AccountingStackState, vm: string): VmPlace {
  const v = state.vms.find((x) => x.name === vm);
  if (!v) throw new Error(`no VM named ${vm} in the stack (known: ${state.vms.map((x) => x.name).join(", ") || "none"})`);
  const cluster = state.clusters.find((c) => c.name === v.cluster);
  if (!cluster?.token) throw new Error(`VM ${vm}: its cluster ${v.cluster} has no agents or token in the stack's state`);
  return { cluster, ca: state.extra[cluster.name]?.ca ?? null, host: v.host };
}

function agentOf(p: VmPlace, host: number): { url: string } {
  const a = p.cluster.agents.find((x) => x.host === host);
  if (!a) throw new Error(`cluster ${p.cluster.name} has no agent of host ${host} (hosts: ${p.cluster.agents.map((x) => x.host).join(", ")})`);
  return a;
}

export async function saveVmCheckpoint(
  state: AccountingStackState,
  vm: string,
  client: ClientFor = clientFor,
): Promise<{ checkpoint: string; bytes: number; host: number }> {
  const p = placeOf(state, vm);
  const host = p.host ?? 0;
  const r = await client(agentOf(p, host).url, p.cluster.token!, p.ca).request<{ checkpoint: string; bytes: number }>(
    "POST",
    `/v1/vms/${encodeURIComponent(vm)}/checkpoint`,
    {},
    300000,
  );
  return { ...r, host };
}

export async function listStackCheckpoints(
  state: AccountingStackState,
  client: ClientFor = clientFor,
): Promise<(CheckpointMeta & { cluster: string; hosts: number[] })[]> {
  const byId = new Map<string, CheckpointMeta & { cluster: string; hosts: number[] }>();
  for (const c of state.clusters) {
    if (!c.token) continue;
    for (const a of c.agents) {
      const r = await client(a.url, c.token, state.extra[c.name]?.ca ?? null).request<{ checkpoints: CheckpointMeta[] }>("GET", "/v1/checkpoints");
      // Hosts may share one store (agents on one machine): a checkpoint is listed once, with every host that has it.
      for (const m of r.checkpoints) {
        const seen = byId.get(m.id);
        if (seen) seen.hosts.push(a.host);
        else byId.set(m.id, { ...m, cluster: c.name, hosts: [a.host] });
      }
    }
  }
  return [...byId.values()].sort((x, y) => x.takenAt.localeCompare(y.takenAt));
}

export async function restoreVmCheckpoint(
  state: AccountingStackState,
  id: string,
  vm: string,
  host: number | undefined,
  client: ClientFor = clientFor,
): Promise<{ host: number; pid: number | undefined; stoppedOn: number[] }> {
  if (!/^[0-9a-f]{64}$/.test(id)) throw new Error(`checkpoint: expected 64 hex digits, found ${JSON.stringify(id)}`);
  const p = placeOf(state, vm);
  const target = host ?? p.host ?? 0;
  const to = client(agentOf(p, target).url, p.cluster.token!, p.ca);
  const meta = (await to.request<{ checkpoints: CheckpointMeta[] }>("GET", "/v1/checkpoints")).checkpoints.find((m) => m.id === id);
  if (!meta) throw new Error(`host ${target} of cluster ${p.cluster.name} has no checkpoint ${id} in its store`);
  if (meta.vm !== vm) throw new Error(`checkpoint ${id} was taken of VM ${meta.vm}, not ${vm}`);
  // One copy of a VM at a time: a running one is stopped before the checkpoint is started.
  const stoppedOn: number[] = [];
  for (const a of p.cluster.agents) {
    const c = client(a.url, p.cluster.token!, p.ca);
    if (await c.getVm(vm)) {
      await c.deleteVm(vm);
      stoppedOn.push(a.host);
    }
  }
  const view = await to.putVm(vm, { ...meta.spec, restoreFrom: `checkpoint:${id}` });
  return { host: target, pid: view.observed.pid, stoppedOn };
}
