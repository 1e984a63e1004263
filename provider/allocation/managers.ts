// What the model and the program need to know of each allocation manager,
// without loading the manager (its allocator pulls in execa, agent code…):
// one descriptor per manager, read by the registry (allocation/allocator.ts),
// the model (model/resolve.ts) and the plan (program/plan.ts). Adding a
// manager: its schema enum value, a descriptor here, its allocator file and
// its line in the registry (tests/allocation/managers.test.ts checks all four
// agree). No imports but types, so the model layer can read it.
import type { VirtualCluster } from "../model/types.generated";

export type ManagerName = NonNullable<NonNullable<VirtualCluster["spec"]["allocation"]>["manager"]>;

export interface ManagerFacts {
  /** How the definition gives the hosts: a number of hosts, or a list of declared addresses. */
  hosts: "count" | "declared";
  /** The allocation is a scheduler job with a handle of its own (VirtualCluster output allocationRef). */
  scheduler: boolean;
  /**
   * Its agents serve HTTPS on hosts of their own: bootstrapped as a tree, each with its own image
   * store (images are staged to it), watching each other for failures (recovery). The others share
   * this machine's store and a unix socket, or their transport (ssh) carries no heartbeats.
   */
  ownHosts: boolean;
}

/** In the schema enum's order: messages that list managers list them in this order. */
export const MANAGERS: Readonly<Record<ManagerName, ManagerFacts>> = {
  local: { hosts: "count", scheduler: false, ownHosts: false },
  static: { hosts: "declared", scheduler: false, ownHosts: true },
  slurm: { hosts: "count", scheduler: true, ownHosts: false },
  ssh: { hosts: "declared", scheduler: false, ownHosts: false },
  gridengine: { hosts: "count", scheduler: true, ownHosts: false },
  torque: { hosts: "count", scheduler: true, ownHosts: false },
  alps: { hosts: "count", scheduler: true, ownHosts: false },
};

/** The facts of manager, or undefined for a name that is none (not a key inherited from Object). */
export function managerFacts(manager: string): ManagerFacts | undefined {
  return Object.hasOwn(MANAGERS, manager) ? MANAGERS[manager as ManagerName] : undefined;
}

/** Managers whose hosts are declared by address (a list), not counted. */
export const DECLARED_HOST_MANAGERS: readonly ManagerName[] = (Object.keys(MANAGERS) as ManagerName[]).filter((m) => MANAGERS[m].hosts === "declared");
