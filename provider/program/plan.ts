import * as os from "os";
import * as path from "path";
import { buildImage, DEFAULT_IMAGE_CACHE, hostKernel, ImageExtras, imageRef, markersFor } from "../image/busybox";
import { environmentImageId } from "../image";
import { probeKvm } from "../drivers/qemu";
import {
  CLUSTER_NETWORK_EXTRAS,
  ClusterNetwork,
  clusterKey,
  clusterNetwork,
  HOST_ADDRESS_PLACEHOLDER,
  LOOPBACK_HOST_ADDRESS,
  nicsFor,
} from "../drivers/network";
import { managerFacts } from "../allocation/managers";
import { DefinitionError, DefinitionProblem } from "../model/errors";
import { API_VERSION, Definitions, Located, loadDefinitions, loadObject } from "../model/load";
import type { SitePolicy } from "../model/types.generated";
import { ClusterModel, EnvironmentModel, ProfileModel, resolveClusters, VmModel } from "../model/resolve";
import { renderVmConfig } from "../render/render";
import type { VmInputKey } from "../model/lifecycle";

export const DEFAULT_CACHE_DIR = DEFAULT_IMAGE_CACHE;
export const DEFAULT_STATE_DIR = path.join(os.homedir(), ".local", "state", "vse-provider");

/** Everything the program declares for one VM, computed before any resource exists. */
export interface VmPlan {
  vm: VmModel;
  accel: "tcg" | "kvm";
  config: string;
  imageId: string;
  markers: { begin: string; end: string };
}

export interface ClusterPlan {
  model: ClusterModel;
  imageId: string;
  /** What the cluster adds to its environment's image (the network driver and set-up), if anything. */
  extras?: ImageExtras;
  vms: VmPlan[];
}

/**
 * How a cluster's VMs boot, the same for the YAML program and the library:
 * the network and image extras the cluster adds, and each VM's kernel
 * arguments. On a cluster network a cold guest learns its address from its
 * kernel command line; a warm one gets no per-VM arguments (all VMs restore one
 * snapshot) and derives its address from the MAC it is handed.
 */
export function clusterBoot(
  model: ClusterModel,
  key: string,
): { network?: ClusterNetwork; extras?: ImageExtras; kernelArgs: (vm: VmModel) => string[]; hostAddress: (vm: VmModel) => string } {
  const network = model.network === "private" ? clusterNetwork(key) : undefined;
  const extras = network ? CLUSTER_NETWORK_EXTRAS : undefined;
  const own = model.environment.kernelArgs;
  return {
    network,
    extras,
    hostAddress: (vm) => vmHostAddress(model, vm),
    kernelArgs: (vm) => (model.environment.warm ? [...own, "vse.warm=1"] : network ? [...own, `vse.ip=${nicsFor(key, vm.index)[0].ipv4}/16`] : own),
  };
}

/**
 * The address a VM's NICs are bound to, as its config states it: 127.0.0.1 for agents of this machine, the declared host's
 * address for hosts declared by address, and HOST_ADDRESS_PLACEHOLDER (the agent puts in its own) where the plan cannot know it
 * (hosts a resource manager picks at allocation time).
 */
export function vmHostAddress(model: ClusterModel, vm: VmModel): string {
  if (model.allocation.manager === "local") return LOOPBACK_HOST_ADDRESS;
  return model.allocation.hostList?.[vm.host]?.address ?? HOST_ADDRESS_PLACEHOLDER;
}

/** Resolves accel 'auto' by a real probe boot under KVM (cached per host setup). */
export async function resolveAccel(accel: ProfileModel["accel"], cacheDir: string): Promise<"tcg" | "kvm"> {
  if (accel !== "auto") return accel;
  const probeEnv: EnvironmentModel = {
    name: "kvm-probe",
    base: "busybox",
    kernelArgs: [],
    job: { command: ["true"], env: {}, afterJob: "power-off", timeoutSeconds: 30 },
  };
  const img = buildImage(probeEnv, cacheDir);
  const result = await probeKvm({ kernel: img.kernel, initrd: img.initrd, marker: `${markersFor(img.id).end} status=0==`, cacheDir });
  return result.kvm ? "kvm" : "tcg";
}

export interface PlanOptions {
  /** Resolves accel 'auto' without the probe boot (offline tools, CI without KVM); the default probes, as the program does. */
  resolveAccel?: (accel: ProfileModel["accel"], cacheDir: string) => Promise<"tcg" | "kvm">;
  /** Renders every profile as if it named this hypervisor (`vse render --hypervisor`); validated like the field itself. */
  hypervisor?: string;
  /** The Pulumi project and stack the clusters belong to: with the cluster's name they make its key (clusterKey). Defaults: "vse", "local". */
  project?: string;
  stack?: string;
  /** The site's policy (installed with the agents, site-policy.ts), checked besides any SitePolicy in the definitions. */
  sitePolicy?: Located<SitePolicy>;
}

/** The definitions with every VmProfile's spec.hypervisor set to hypervisor; throws DefinitionError when the schema refuses it. */
export function overrideHypervisor(defs: Definitions, hypervisor: string): Definitions {
  const problems: DefinitionProblem[] = [];
  loadObject(
    { apiVersion: API_VERSION, kind: "VmProfile", metadata: { name: "override" }, spec: { hypervisor } },
    "--hypervisor",
    { environments: new Map(), profiles: new Map(), clusters: new Map() },
    problems,
  );
  if (problems.length) throw new DefinitionError(problems);
  const profiles = new Map([...defs.profiles].map(([name, l]) => [name, { ...l, doc: { ...l.doc, spec: { ...l.doc.spec, hypervisor } } } as typeof l]));
  return { ...defs, profiles };
}

/** Loads definitions and computes every VM's rendered config: the part of the plan a reviewer reads. */
export async function planClusters(definitionPaths: string[], cacheDir = DEFAULT_CACHE_DIR, options: PlanOptions = {}): Promise<ClusterPlan[]> {
  const accelOf = options.resolveAccel ?? resolveAccel;
  const loaded = loadDefinitions(definitionPaths);
  const defs = options.hypervisor === undefined ? loaded : overrideHypervisor(loaded, options.hypervisor);
  // The kernel is only looked up first when a site policy restricts it.
  const clusters = resolveClusters(defs, { kernelRelease: () => hostKernel().release, sitePolicy: options.sitePolicy });
  const kernel = hostKernel();
  const accels = new Map<string, "tcg" | "kvm">();
  const plans: ClusterPlan[] = [];
  for (const model of clusters) {
    const key = clusterKey(options.project ?? "vse", options.stack ?? "local", model.name);
    const { network, extras, kernelArgs: kernelArgsOf, hostAddress } = clusterBoot(model, key);
    const id = environmentImageId(model.environment, kernel, extras);
    const image = imageRef(id);
    const vms: VmPlan[] = [];
    for (const vm of model.vms) {
      if (!accels.has(vm.profile.accel)) accels.set(vm.profile.accel, await accelOf(vm.profile.accel, cacheDir));
      const accel = accels.get(vm.profile.accel)!;
      const config = renderVmConfig({
        cluster: model.name,
        clusterKey: key,
        vm,
        image,
        accel,
        kernelArgs: kernelArgsOf(vm),
        network,
        hostAddress: hostAddress(vm),
      });
      vms.push({ vm, accel, config, imageId: id, markers: markersFor(id) });
    }
    plans.push({ model, imageId: id, extras, vms });
  }
  return plans;
}

/**
 * The inputs of the VirtualMachine resource the program (provider/program/index.ts)
 * declares for p, and `vse plan` compares. The agent URL and token come from the cluster
 * resource once it exists, so the caller supplies them: Outputs in the
 * program, stand-ins offline (see offlineAgentInputs).
 */
export function vmInputs<T, C>(model: ClusterModel, p: VmPlan, agent: { agentUrl: T; token: T; agentCa: C; allocationRef: C }) {
  return {
    cluster: model.name,
    vmName: p.vm.name,
    host: p.vm.host,
    agentUrl: agent.agentUrl,
    token: agent.token,
    agentCa: agent.agentCa,
    allocationRef: agent.allocationRef,
    hypervisor: p.vm.profile.hypervisor,
    imageId: p.imageId,
    memoryMiB: p.vm.profile.memoryMiB,
    vcpus: p.vm.profile.vcpus,
    machine: p.vm.profile.machine,
    accel: p.accel,
    kernelArgs: model.environment.kernelArgs.join(" "),
    config: p.config,
    markers: p.markers,
    afterJob: model.environment.job.afterJob,
    jobTimeoutSeconds: model.environment.job.timeoutSeconds,
    state: p.vm.state ?? "running",
    // A warm image has no job of its own: one snapshot of it serves any job, handed over after the restore.
    job: model.environment.warm ? { command: model.environment.job.command, env: model.environment.job.env } : null,
  } satisfies Record<VmInputKey, unknown>;
}

/**
 * Offline stand-ins for a VM's agent URL and token. A change of the cluster's
 * manager or host count replaces the VirtualCluster (new agents, new token),
 * so the stand-ins change exactly when the real values would.
 */
export function offlineAgentInputs(model: ClusterModel, p: VmPlan): { agentUrl: string; token: string; agentCa: string | null; allocationRef: string | null } {
  const cluster = `${model.name} (${model.allocation.manager}, ${model.allocation.hosts} hosts)`;
  const byAddress = model.allocation.hostList !== undefined;
  return {
    agentUrl: `agent of host ${p.vm.host} of cluster ${cluster}`,
    token: `token of cluster ${cluster}`,
    agentCa: byAddress ? `CA of cluster ${cluster}` : null,
    allocationRef: managerFacts(model.allocation.manager)?.scheduler ? `allocation of cluster ${cluster}` : null,
  };
}
