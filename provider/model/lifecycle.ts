// The lifecycle table: for every field of every kind, what a change does to
// the VMs it affects. The provider's diff, the docs and the tests all read it.
//
//   in-place  applied without touching the running guest
//   restart   the VM's QEMU process is restarted with the new config
//   migrate   the running VM moves live to another host's agent (QEMU); elsewhere a replace
//   replace   the VM is deleted and created anew (new image, new identity)

export type Policy = "in-place" | "restart" | "migrate" | "replace";

export interface FieldRule {
  policy: Policy;
  /** The VirtualMachine input that carries this field, if any. */
  vmInput?: VmInputKey;
  why: string;
}

/** Inputs of a VirtualMachine resource, each with its own policy below. */
export type VmInputKey =
  | "cluster"
  | "vmName"
  | "host"
  | "agentUrl"
  | "token"
  | "agentCa"
  | "allocationRef"
  | "hypervisor"
  | "imageId"
  | "memoryMiB"
  | "vcpus"
  | "machine"
  | "accel"
  | "kernelArgs"
  | "config"
  | "markers"
  | "afterJob"
  | "jobTimeoutSeconds"
  | "state"
  | "job";

/**
 * One row per field path ("<Kind>.<path>"), or per block: a path ending in
 * ".*" covers every field under it that has no row of its own (lifecycleRule).
 */
export const LIFECYCLE: Record<string, FieldRule> = {
  "Environment.apiVersion": { policy: "in-place", why: "only one version exists" },
  "Environment.kind": { policy: "replace", why: "a different kind is a different object" },
  "Environment.metadata.name": { policy: "in-place", why: "VMs refer to the image by content, not by name" },
  "Environment.metadata.description": { policy: "in-place", why: "documentation only" },
  "Environment.spec.base": { policy: "replace", vmInput: "imageId", why: "a new image" },
  "Environment.spec.debian.release": { policy: "replace", vmInput: "imageId", why: "another Debian root filesystem, a new image" },
  "Environment.spec.debian.packages": { policy: "replace", vmInput: "imageId", why: "other packages, a new image (order and repetition do not count)" },
  "Environment.spec.debian.mirror": { policy: "replace", vmInput: "imageId", why: "packages from another archive, a new image" },
  "Environment.spec.kernelArgs": { policy: "restart", vmInput: "kernelArgs", why: "read by the kernel at boot" },
  "Environment.spec.warm": { policy: "replace", vmInput: "imageId", why: "a warm image's init waits for its identity; the image changes" },
  "Environment.spec.warmAhead": {
    policy: "in-place",
    why: "the Environment makes the snapshots at up (an update); running VMs are not touched, later ones restore them",
  },
  "Environment.spec.job.command": {
    policy: "replace",
    vmInput: "imageId",
    why: "the job is baked into the image's init; a warm image has none, its VMs are handed it (input `job`) and are replaced as well",
  },
  "Environment.spec.job.env": { policy: "replace", vmInput: "imageId", why: "baked into the image's init; handed over with the job in a warm image" },
  "Environment.spec.job.afterJob": { policy: "replace", vmInput: "imageId", why: "baked into the image's init" },
  "Environment.spec.job.timeoutSeconds": { policy: "in-place", vmInput: "jobTimeoutSeconds", why: "only how long the provider waits" },
  "VmProfile.apiVersion": { policy: "in-place", why: "only one version exists" },
  "VmProfile.kind": { policy: "replace", why: "a different kind is a different object" },
  "VmProfile.metadata.name": { policy: "in-place", why: "VMs take the profile's values, not its name" },
  "VmProfile.metadata.description": { policy: "in-place", why: "documentation only" },
  "VmProfile.spec.hypervisor": { policy: "replace", vmInput: "hypervisor", why: "another hypervisor runs the VM" },
  "VmProfile.spec.memory": { policy: "restart", vmInput: "memoryMiB", why: "QEMU sizes guest RAM at start" },
  "VmProfile.spec.vcpus": { policy: "restart", vmInput: "vcpus", why: "QEMU creates vCPUs at start" },
  "VmProfile.spec.machine": { policy: "restart", vmInput: "machine", why: "the machine type is fixed at start" },
  "VmProfile.spec.accel": { policy: "restart", vmInput: "accel", why: "the accelerator is fixed at start" },
  "VirtualCluster.apiVersion": { policy: "in-place", why: "only one version exists" },
  "VirtualCluster.kind": { policy: "replace", why: "a different kind is a different object" },
  "VirtualCluster.metadata.name": { policy: "replace", vmInput: "cluster", why: "VM names derive from the cluster name" },
  "VirtualCluster.metadata.description": { policy: "in-place", why: "documentation only" },
  "VirtualCluster.spec.environment": { policy: "replace", vmInput: "imageId", why: "another image (when its content differs)" },
  "VirtualCluster.spec.profile": { policy: "restart", vmInput: "config", why: "per changed profile field, as above" },
  "VirtualCluster.spec.nodes": { policy: "in-place", why: "adds or removes VMs; the others are untouched" },
  "VirtualCluster.spec.allocation.manager": { policy: "replace", vmInput: "agentUrl", why: "other agents on other hosts" },
  "VirtualCluster.spec.allocation.hosts": { policy: "replace", vmInput: "host", why: "VMs whose host changes move to another agent" },
  "VirtualCluster.spec.recovery": { policy: "in-place", why: "the agents are told the new policy; nothing restarts" },
  "VirtualCluster.spec.allocation.port": { policy: "replace", vmInput: "agentUrl", why: "the agents serve elsewhere: new agents" },
  // Every setting of a manager's block asks for a new allocation of that manager.
  "VirtualCluster.spec.allocation.slurm.*": { policy: "replace", vmInput: "agentUrl", why: "a new slurm allocation: new agents" },
  "VirtualCluster.spec.allocation.ssh.*": { policy: "replace", vmInput: "agentUrl", why: "a new ssh allocation: new agents" },
  "VirtualCluster.spec.allocation.gridengine.*": { policy: "replace", vmInput: "agentUrl", why: "a new gridengine allocation: new agents" },
  "VirtualCluster.spec.allocation.torque.*": { policy: "replace", vmInput: "agentUrl", why: "a new torque allocation: new agents" },
  "VirtualCluster.spec.allocation.alps.*": { policy: "replace", vmInput: "agentUrl", why: "a new alps allocation: new agents" },
  "VirtualCluster.spec.allocation.fanout": { policy: "replace", why: "part of the allocation block: new agents, started over a tree of the new fanout" },
  "VirtualCluster.spec.network": { policy: "replace", vmInput: "imageId", why: "the image gains the NIC driver and network set-up, and the VM a NIC" },
  "VirtualCluster.spec.overrides.vm": { policy: "restart", vmInput: "config", why: "per changed field, as below" },
  "VirtualCluster.spec.overrides.memory": { policy: "restart", vmInput: "memoryMiB", why: "QEMU sizes guest RAM at start" },
  "VirtualCluster.spec.overrides.host": {
    policy: "migrate",
    vmInput: "host",
    why: "QEMU live migration to the other host's agent (replace for hypervisors without it)",
  },
  "VirtualCluster.spec.overrides.vcpus": { policy: "restart", vmInput: "vcpus", why: "QEMU creates vCPUs at start" },
  "VirtualCluster.spec.overrides.state": {
    policy: "in-place",
    vmInput: "state",
    why: "the hypervisor pauses or resumes the same process (QMP stop/cont, virsh suspend/resume)",
  },
  "VirtualCluster.spec.vmState": { policy: "in-place", vmInput: "state", why: "as overrides.state, for every VM without its own" },
};

/** The rule of a field: its own row, else the row of the longest block ("<prefix>.*") it lies in. */
export function lifecycleRule(field: string): FieldRule | undefined {
  if (Object.hasOwn(LIFECYCLE, field)) return LIFECYCLE[field];
  for (let dot = field.lastIndexOf("."); dot > 0; dot = field.lastIndexOf(".", dot - 1)) {
    const block = `${field.slice(0, dot)}.*`;
    if (Object.hasOwn(LIFECYCLE, block)) return LIFECYCLE[block];
  }
  return undefined;
}

/** Policy per VirtualMachine input; the diff of a VM is the strongest policy of its changed inputs. */
export const VM_INPUT_POLICY: Record<VmInputKey, Policy> = {
  cluster: "replace",
  vmName: "replace",
  // With its host, a VM's agent changes too: that agentUrl change is the migration, not a replace.
  host: "migrate",
  agentUrl: "replace",
  token: "in-place",
  // A new CA comes with new agents (a replaced cluster), which agentUrl already accounts for.
  agentCa: "in-place",
  // Likewise: a new allocation comes with new agents.
  allocationRef: "in-place",
  hypervisor: "replace",
  imageId: "replace",
  memoryMiB: "restart",
  vcpus: "restart",
  machine: "restart",
  accel: "restart",
  kernelArgs: "restart",
  // A config change not explained by a field above (e.g. a template change) restarts the VM.
  config: "restart",
  markers: "replace",
  // Baked into the image as well (so imageId changes with it); the agent reads it to tell a power-off from a crash.
  afterJob: "replace",
  jobTimeoutSeconds: "in-place",
  // Pause and resume act on the running process: same pid, same guest memory.
  state: "in-place",
  // A warm image's job (its argv and environment), handed over after the restore: another job is another run.
  job: "replace",
};

const RANK: Record<Policy, number> = { "in-place": 0, restart: 1, migrate: 2, replace: 3 };

export function strongest(policies: Policy[]): Policy | undefined {
  return policies.sort((a, b) => RANK[b] - RANK[a])[0];
}

/** Hypervisors whose VMs can move live between hosts; elsewhere a change of host replaces the VM. */
export const MIGRATABLE_HYPERVISORS = ["qemu"];

/**
 * What a change does to one VM, in context: a migration needs a hypervisor
 * that migrates and agents that survive the change (not a replaced cluster).
 * The provider's diff and `vse plan` both decide with this.
 */
export function vmEffectiveChange(changed: string[], ctx: { hypervisor: string; agentsReplaced: boolean }): { policy?: Policy; replaces: string[] } {
  const c = vmChange(changed);
  if (c.policy === "migrate" && (ctx.agentsReplaced || !MIGRATABLE_HYPERVISORS.includes(ctx.hypervisor)))
    return { policy: "replace", replaces: [...c.replaces, "host"] };
  if (ctx.agentsReplaced && !c.replaces.includes("agentUrl")) return { policy: "replace", replaces: [...c.replaces, "agentUrl"] };
  return c;
}

/** What a change of the given VM inputs does to the VM. */
export function vmChange(changed: string[]): { policy?: Policy; replaces: string[] } {
  // A new agent URL that comes with a new host is where the VM migrates to.
  const known = changed.filter((k): k is VmInputKey => k in VM_INPUT_POLICY && !(k === "agentUrl" && changed.includes("host")));
  return {
    policy: strongest(known.map((k) => VM_INPUT_POLICY[k])),
    replaces: known.filter((k) => VM_INPUT_POLICY[k] === "replace"),
  };
}
