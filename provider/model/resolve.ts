// The managers' facts only (a dependency-free table), never their allocators.
import { DECLARED_HOST_MANAGERS, managerFacts } from "../allocation/managers";
import { DefinitionError, DefinitionProblem } from "./errors";
import { Definitions, Located } from "./load";
import { applyPolicyDefaults, checkPolicy, checkPolicyConsistency, PolicyOptions, selectPolicy } from "./policy";
import { MAX_MEMORY_MIB, MIN_MEMORY_MIB, parseMemoryMiB } from "./units";
import type { VirtualCluster } from "./types.generated";

/** An environment with every default filled in: what the image is built from. */
export interface EnvironmentModel {
  name: string;
  base: "busybox" | "debian";
  /** Only for base "debian" (absent otherwise, so busybox models and their ids are unchanged). */
  debian?: DebianModel;
  /** Warm launch asked for (absent when not, so other models and their image ids are unchanged). */
  warm?: true;
  /** spec.warmAhead: the Environment resource makes the clusters' snapshots at `pulumi up` (resources/environment.ts). */
  warmAhead?: true;
  kernelArgs: string[];
  job: {
    command: string[];
    env: Record<string, string>;
    afterJob: "stay-up" | "power-off";
    timeoutSeconds: number;
  };
}

/** The Debian system of a "debian" environment, normalised: packages sorted and de-duplicated so their order never changes the image id. */
export interface DebianModel {
  release: "bookworm" | "trixie";
  packages: string[];
  mirror: string;
}

export const DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian";

/** A profile with units normalised and defaults filled in. */
export interface ProfileModel {
  name: string;
  hypervisor: NonNullable<import("./types.generated").VmProfile["spec"]["hypervisor"]>;
  memoryMiB: number;
  vcpus: number;
  machine: "microvm" | "q35" | "pc";
  accel: "auto" | "tcg" | "kvm";
}

/** One VM of a cluster: its own effective profile and its host. */
export interface VmModel {
  name: string;
  index: number;
  /** Index of the host (node agent) it runs on. */
  host: number;
  profile: ProfileModel;
  /** running (default) or paused: overrides[].state, else spec.vmState. Optional so that models made elsewhere need not name it. */
  state?: "running" | "paused";
}

export interface ClusterModel {
  name: string;
  environment: EnvironmentModel;
  profile: ProfileModel;
  allocation: AllocationModel;
  /** 'private': the VMs share a network of their own (see the schema); 'none': no NIC. */
  network: "none" | "private";
  /** What the cluster does when a host is lost (agent/recovery.ts); default none (recorded only). */
  recovery: "none" | "terminate" | "restart";
  vms: VmModel[];
}

type AllocationDef = NonNullable<VirtualCluster["spec"]["allocation"]>;
export type DeclaredHost = Extract<NonNullable<AllocationDef["hosts"]>, unknown[]>[number];

/**
 * Where a cluster's agents run: the definition's allocation block with its
 * defaults, `hosts` always the number of hosts, and for managers whose hosts
 * are declared by address, the list itself as `hostList`.
 */
export type AllocationModel = Omit<AllocationDef, "manager" | "hosts"> & {
  manager: NonNullable<AllocationDef["manager"]>;
  hosts: number;
  hostList?: DeclaredHost[];
};

export function environmentModel(l: Located<import("./types.generated").Environment>): EnvironmentModel {
  const s = l.doc.spec;
  return {
    name: l.doc.metadata.name,
    base: s.base ?? "busybox",
    ...(s.base === "debian"
      ? {
          debian: {
            release: s.debian?.release ?? "bookworm",
            packages: [...new Set(s.debian?.packages ?? [])].sort(),
            mirror: s.debian?.mirror ?? DEFAULT_DEBIAN_MIRROR,
          },
        }
      : {}),
    ...(s.warm ? { warm: true as const } : {}),
    ...(s.warmAhead ? { warmAhead: true as const } : {}),
    kernelArgs: [...(s.kernelArgs ?? [])],
    job: {
      command: [...s.job.command],
      // Sorted so that key order in YAML never changes the image id.
      env: Object.fromEntries(Object.entries(s.job.env ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
      afterJob: s.job.afterJob ?? "stay-up",
      timeoutSeconds: s.job.timeoutSeconds ?? 300,
    },
  };
}

function memory(value: number | string | undefined, fallback: number, where: () => DefinitionProblem, problems: DefinitionProblem[]): number {
  if (value === undefined) return fallback;
  try {
    const mib = parseMemoryMiB(value);
    if (mib < MIN_MEMORY_MIB || mib > MAX_MEMORY_MIB) {
      throw new Error(`expected between ${MIN_MEMORY_MIB} MiB and ${MAX_MEMORY_MIB} MiB, found ${mib} MiB`);
    }
    return mib;
  } catch (err) {
    problems.push({ ...where(), message: (err as Error).message });
    return fallback;
  }
}

export function profileModel(l: Located<import("./types.generated").VmProfile>, problems: DefinitionProblem[]): ProfileModel {
  const s = l.doc.spec;
  const where = () => ({ file: l.file, ...l.at(["spec", "memory"]), field: "spec.memory", message: "" });
  return {
    name: l.doc.metadata.name,
    hypervisor: s.hypervisor ?? "qemu",
    memoryMiB: memory(s.memory, 256, where, problems),
    vcpus: s.vcpus ?? 1,
    machine: s.machine ?? "pc",
    accel: s.accel ?? "auto",
  };
}

/** Edit distance, for "did you mean" suggestions. */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

function unknownReference(kind: string, name: string, known: Iterable<string>): string {
  const names = [...known];
  const best = names.map((n) => ({ n, d: editDistance(name, n) })).sort((x, y) => x.d - y.d)[0];
  const hint =
    best && best.d <= Math.max(2, Math.floor(name.length / 3))
      ? `; did you mean "${best.n}"?`
      : names.length
        ? `; known: ${names.join(", ")}`
        : `; no ${kind} is defined`;
  return `unknown ${kind} "${name}"${hint}`;
}

function allocationModel(a: AllocationDef, problem: (field: (string | number)[], message: string) => void): AllocationModel {
  const manager = a.manager ?? "local";
  const declared = a.hosts ?? 1;
  const byAddress = managerFacts(manager)?.hosts === "declared";
  // The slurm block reaches the manager as part of the allocation; with another manager it would be silently ignored.
  if (a.slurm !== undefined && manager !== "slurm")
    problem(["spec", "allocation", "slurm"], `settings of manager slurm, found with manager ${manager} (set manager: slurm or remove the block)`);
  if (byAddress && !Array.isArray(declared))
    problem(["spec", "allocation", "hosts"], `manager ${manager}: expected a list of hosts ({ address: <IPv4> } each), found the number ${declared}`);
  if (!byAddress && Array.isArray(declared))
    problem(
      ["spec", "allocation", "hosts"],
      `manager ${manager}: expected a number of hosts, found a list of addresses (declared hosts need manager ${DECLARED_HOST_MANAGERS.join(" or ")})`,
    );
  if (Array.isArray(declared)) {
    const seen = new Map<string, number>();
    declared.forEach((h, i) => {
      if (seen.has(h.address))
        problem(["spec", "allocation", "hosts", i, "address"], `address ${h.address} is declared twice (hosts[${seen.get(h.address)}] too)`);
      seen.set(h.address, i);
      if (/^(0\.|127\.|255\.|22[4-9]\.|23[0-9]\.)/.test(h.address))
        problem(
          ["spec", "allocation", "hosts", i, "address"],
          `expected a host's unicast address, found ${h.address} (loopback, multicast, broadcast and 0.x are not hosts)`,
        );
    });
  }
  return {
    ...a,
    manager,
    hosts: Array.isArray(declared) ? declared.length : declared,
    ...(Array.isArray(declared) ? { hostList: declared } : {}),
    // The k of the bootstrap tree (allocation/tree): only agents of declared hosts are started over a tree.
    ...(byAddress ? { fanout: a.fanout ?? 2 } : {}),
  };
}

function clusterModel(l: Located<VirtualCluster>, defs: Definitions, problems: DefinitionProblem[]): ClusterModel | undefined {
  const s = l.doc.spec;
  const name = l.doc.metadata.name;
  const problem = (field: (string | number)[], message: string) => problems.push({ file: l.file, ...l.at(field), field: field.join("."), message });
  const envDef = defs.environments.get(s.environment);
  const profDef = defs.profiles.get(s.profile);
  if (!envDef) problem(["spec", "environment"], unknownReference("Environment", s.environment, defs.environments.keys()));
  if (!profDef) problem(["spec", "profile"], unknownReference("VmProfile", s.profile, defs.profiles.keys()));
  if (!envDef || !profDef) return undefined;

  const profile = profileModel(profDef, problems);
  const nodes = s.nodes ?? 1;
  const allocation = allocationModel(s.allocation ?? {}, problem);
  const hosts = allocation.hosts;
  if (hosts > nodes) problem(["spec", "allocation", "hosts"], `expected at most ${nodes} hosts (one VM per host at least), found ${hosts}`);
  const seen = new Set<number>();
  (s.overrides ?? []).forEach((o, i) => {
    if (o.vm >= nodes) problem(["spec", "overrides", i, "vm"], `expected a VM index below ${nodes} (nodes), found ${o.vm}`);
    if (seen.has(o.vm)) problem(["spec", "overrides", i, "vm"], `VM ${o.vm} is overridden twice`);
    if (o.host !== undefined && o.host >= hosts)
      problem(["spec", "overrides", i, "host"], `expected a host index below ${hosts} (allocation.hosts), found ${o.host}`);
    seen.add(o.vm);
  });
  const vms: VmModel[] = [];
  for (let i = 0; i < nodes; i++) {
    const o = (s.overrides ?? []).find((x) => x.vm === i);
    const k = (s.overrides ?? []).indexOf(o!);
    const where = () => ({ file: l.file, ...l.at(["spec", "overrides", k, "memory"]), field: `spec.overrides.${k}.memory`, message: "" });
    vms.push({
      name: `${name}-${i}`,
      index: i,
      host: o?.host ?? i % hosts,
      profile: { ...profile, memoryMiB: memory(o?.memory, profile.memoryMiB, where, problems), vcpus: o?.vcpus ?? profile.vcpus },
      state: o?.state ?? s.vmState ?? "running",
    });
  }
  return { name, environment: environmentModel(envDef), profile, allocation, network: s.network ?? "none", recovery: s.recovery ?? "none", vms };
}

/**
 * Resolves references and defaults, merging the site policy (its defaults first,
 * then its limits); throws DefinitionError with every problem found.
 */
export function resolveClusters(input: Definitions, options: PolicyOptions = {}): ClusterModel[] {
  const problems: DefinitionProblem[] = [];
  // The user's own policy (in the definitions) and the site's: a VM must satisfy both, so a user's can only narrow the site's.
  const policies = [selectPolicy(input, problems), options.sitePolicy].filter((p): p is NonNullable<typeof p> => p !== undefined);
  const policyProblems = policies.flatMap((p) => checkPolicyConsistency(p));
  problems.push(...policyProblems);
  // The user's defaults fill first; the site's fill what is still unset.
  const defs = policies.reduce((d, p) => applyPolicyDefaults(d, p), input);
  const clusters: ClusterModel[] = [];
  for (const l of defs.clusters.values()) {
    const c = clusterModel(l, defs, problems);
    if (c) clusters.push(c);
  }
  // Warm launch restores QEMU snapshots; no other hypervisor can hand a guest its identity after a restore.
  for (const c of clusters) {
    if (c.environment.warm && c.profile.hypervisor !== "qemu") {
      const env = defs.environments.get(c.environment.name)!;
      problems.push({
        file: env.file,
        ...env.at(["spec", "warm"]),
        field: "spec.warm",
        message: `warm launch needs hypervisor "qemu"; cluster "${c.name}" runs this environment on "${c.profile.hypervisor}" (VmProfile "${c.profile.name}")`,
      });
    }
  }
  // Snapshots made ahead are warm-launch snapshots: without warm launch there is nothing to restore them.
  for (const l of defs.environments.values()) {
    const spec = l.doc.spec as { warm?: boolean; warmAhead?: boolean };
    if (spec.warmAhead && !spec.warm)
      problems.push({
        file: l.file,
        ...l.at(["spec", "warmAhead"]),
        field: "spec.warmAhead",
        message: "warmAhead makes warm-launch snapshots ahead: it needs spec.warm: true",
      });
  }
  // VM names must be unique across clusters: they are agent keys and URN names.
  const vmNames = new Map<string, string>();
  for (const c of clusters) {
    for (const vm of c.vms) {
      const other = vmNames.get(vm.name);
      if (other) {
        const l = defs.clusters.get(c.name)!;
        problems.push({
          file: l.file,
          ...l.at(["metadata", "name"]),
          field: "metadata.name",
          message: `VM name "${vm.name}" collides with a VM of cluster "${other}"`,
        });
      }
      vmNames.set(vm.name, c.name);
    }
  }
  // Clusters that resolved are checked even when others did not; a self-contradictory policy is fixed first.
  if (!policyProblems.length) for (const p of policies) problems.push(...checkPolicy(defs, p, clusters, options));
  if (problems.length) throw new DefinitionError(problems);
  return clusters;
}
