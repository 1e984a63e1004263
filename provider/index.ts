// The package as a library: declare environments, profiles and clusters from a
// Pulumi TypeScript program instead of YAML. Every object is validated by the
// same schema, references, units and site policy as the YAML definitions, and
// declares the same dynamic resources as the YAML program (provider/program).
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import { DefinitionError, DefinitionProblem } from "./model/errors";
import { API_VERSION, Definitions, loadObject, Located } from "./model/load";
import { ClusterModel, EnvironmentModel, environmentModel, ProfileModel, profileModel, resolveClusters } from "./model/resolve";
import type {
  Environment as EnvironmentDefinition,
  SitePolicy as SitePolicyDefinition,
  VirtualCluster as ClusterDefinition,
  VmProfile as ProfileDefinition,
} from "./model/types.generated";
import { hostKernel, imageRef, markersFor } from "./image/busybox";
import { environmentImageId } from "./image";
import { renderVmConfig } from "./render/render";
import { DEFAULT_CACHE_DIR, DEFAULT_STATE_DIR, resolveAccel, vmInputs } from "./program/plan";
import { Environment as EnvironmentResource } from "./resources/environment";
import { VmProfile as VmProfileResource } from "./resources/vm-profile";
import { VirtualCluster as VirtualClusterResource } from "./resources/virtual-cluster";
import { VirtualMachine } from "./resources/virtual-machine";

export { DefinitionError, formatProblem } from "./model/errors";
export type { DefinitionProblem } from "./model/errors";
export { loadDefinitions } from "./model/load";
export { resolveClusters } from "./model/resolve";
export type { ClusterModel, EnvironmentModel, ProfileModel, VmModel } from "./model/resolve";
export { planClusters } from "./program/plan";

export type EnvironmentSpec = EnvironmentDefinition["spec"];
export type VmProfileSpec = ProfileDefinition["spec"];
export type SitePolicySpec = SitePolicyDefinition["spec"];

function emptyDefinitions(): Definitions {
  return { environments: new Map(), profiles: new Map(), clusters: new Map(), policies: new Map() };
}

/** Validates one definition as the YAML loader would; throws DefinitionError naming the object and field. */
function validated<T>(
  kind: string,
  name: string,
  spec: unknown,
  description: string | undefined,
  pick: (d: Definitions) => Map<string, Located<T>>,
): Located<T> {
  const defs = emptyDefinitions();
  const problems: DefinitionProblem[] = [];
  const metadata = description === undefined ? { name } : { name, description };
  loadObject({ apiVersion: API_VERSION, kind, metadata, spec }, `${kind} "${name}"`, defs, problems);
  if (problems.length) throw new DefinitionError(problems);
  return pick(defs).get(name)!;
}

export interface EnvironmentArgs {
  /** As `spec` of a YAML Environment. */
  spec: EnvironmentSpec;
  description?: string;
  /** Where images are built and cached (default ~/.cache/vse-provider). */
  cacheDir?: string;
}

/** A VSE: the image a job runs in. */
export class Environment extends pulumi.ComponentResource {
  readonly definition: Located<EnvironmentDefinition>;
  readonly model: EnvironmentModel;
  readonly imageId: string;
  readonly cacheDir: string;
  readonly resource: EnvironmentResource;

  constructor(name: string, args: EnvironmentArgs, opts?: pulumi.ComponentResourceOptions) {
    super("vse:index:Environment", name, {}, opts);
    this.definition = validated("Environment", name, args.spec, args.description, (d) => d.environments);
    this.model = environmentModel(this.definition);
    this.cacheDir = path.resolve(args.cacheDir ?? DEFAULT_CACHE_DIR);
    this.imageId = environmentImageId(this.model, hostKernel());
    this.resource = new EnvironmentResource(name, { spec: this.model, imageId: this.imageId, cacheDir: this.cacheDir, extras: null }, { parent: this });
    this.registerOutputs({ imageId: this.imageId });
  }
}

export interface VmProfileArgs {
  /** As `spec` of a YAML VmProfile. */
  spec: VmProfileSpec;
  description?: string;
}

/** The shape of a VM, independent of the hypervisor. */
export class VmProfile extends pulumi.ComponentResource {
  readonly definition: Located<ProfileDefinition>;
  readonly model: ProfileModel;
  readonly resource: VmProfileResource;

  constructor(name: string, args: VmProfileArgs, opts?: pulumi.ComponentResourceOptions) {
    super("vse:index:VmProfile", name, {}, opts);
    this.definition = validated("VmProfile", name, args.spec, args.description, (d) => d.profiles);
    const problems: DefinitionProblem[] = [];
    this.model = profileModel(this.definition, problems);
    if (problems.length) throw new DefinitionError(problems);
    this.resource = new VmProfileResource(name, { spec: this.model }, { parent: this });
    this.registerOutputs({});
  }
}

export interface VirtualClusterArgs {
  environment: Environment;
  profile: VmProfile;
  /** As the rest of `spec` of a YAML VirtualCluster: nodes, allocation, overrides. */
  nodes?: number;
  allocation?: ClusterDefinition["spec"]["allocation"];
  overrides?: ClusterDefinition["spec"]["overrides"];
  description?: string;
  /** The site's policy, merged as for YAML definitions (defaults first, then limits). */
  policy?: SitePolicySpec;
  /** Root of the node agents' state (default ~/.local/state/vse-provider). */
  stateRoot?: string;
}

/** A set of VMs of one environment and profile, one VirtualMachine resource per VM, parented to the cluster. */
export class VirtualCluster extends pulumi.ComponentResource {
  readonly model: ClusterModel;
  readonly resource: VirtualClusterResource;
  readonly vms: VirtualMachine[] = [];

  constructor(name: string, args: VirtualClusterArgs, opts?: pulumi.ComponentResourceOptions) {
    super("vse:index:VirtualCluster", name, {}, opts);
    const spec: ClusterDefinition["spec"] = { environment: args.environment.definition.doc.metadata.name, profile: args.profile.definition.doc.metadata.name };
    if (args.nodes !== undefined) spec.nodes = args.nodes;
    if (args.allocation !== undefined) spec.allocation = args.allocation;
    if (args.overrides !== undefined) spec.overrides = args.overrides;
    const cluster = validated("VirtualCluster", name, spec, args.description, (d) => d.clusters);
    const defs = emptyDefinitions();
    defs.environments.set(spec.environment, args.environment.definition);
    defs.profiles.set(spec.profile, args.profile.definition);
    defs.clusters.set(name, cluster);
    if (args.policy)
      defs.policies!.set(
        "policy",
        validated("SitePolicy", "policy", args.policy, undefined, (d) => d.policies!),
      );
    this.model = resolveClusters(defs, { kernelRelease: () => hostKernel().release })[0];

    const m = this.model;
    const env = args.environment;
    const image = imageRef(env.cacheDir, env.imageId);
    this.resource = new VirtualClusterResource(
      name,
      {
        name,
        stateRoot: path.resolve(args.stateRoot ?? DEFAULT_STATE_DIR),
        project: pulumi.getProject(),
        stack: pulumi.getStack(),
        manager: m.allocation.manager,
        hosts: m.allocation.hosts,
      },
      { parent: this },
    );
    for (const vm of m.vms) {
      // accel 'auto' is resolved by a probe boot, as in the YAML program; the config follows it.
      const accel = pulumi.output(resolveAccel(vm.profile.accel, env.cacheDir));
      this.vms.push(
        new VirtualMachine(
          vm.name,
          {
            // The same inputs as the YAML program declares (vmInputs), but accel and the config that follows it are Outputs here.
            ...vmInputs(
              m,
              { vm, accel: "tcg", config: "", imageId: env.imageId, markers: markersFor(env.imageId) },
              { agentUrl: this.resource.agents.apply((agents) => agents[vm.host].url), token: this.resource.token },
            ),
            accel,
            config: accel.apply((a) => renderVmConfig({ cluster: name, vm, image, accel: a, kernelArgs: m.environment.kernelArgs })),
          },
          { parent: this.resource, dependsOn: [env.resource, args.profile.resource] },
        ),
      );
    }
    this.registerOutputs({});
  }
}
