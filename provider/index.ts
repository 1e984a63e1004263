// The package as a library: declare environments, profiles and clusters from a
// Pulumi TypeScript program instead of YAML. Every object is validated by the
// same schema, references, units and site policy as the YAML definitions, and
// declares the same dynamic resources as the YAML program (provider/program).
import * as fs from "fs";
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
import { hostKernel, ImageExtras, imageRef, markersFor } from "./image/busybox";
import { environmentImageId } from "./image";
import { clusterKey } from "./drivers/network";
import { renderVmConfig } from "./render/render";
import { loadSitePolicy, sitePolicyFile as sitePolicyFileOf } from "./model/site-policy";
import { clusterBoot, DEFAULT_CACHE_DIR, DEFAULT_STATE_DIR, resolveAccel, vmInputs } from "./program/plan";
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

  private withNetwork?: { resource: EnvironmentResource; imageId: string };

  /**
   * The image a cluster's VMs boot: this one, or with what the cluster adds to
   * it (its private network), declared once per environment when a cluster
   * first needs it, as the YAML program declares "<environment>+network".
   */
  imageFor(extras: ImageExtras | undefined): { resource: EnvironmentResource; imageId: string } {
    if (!extras) return { resource: this.resource, imageId: this.imageId };
    if (!this.withNetwork) {
      const imageId = environmentImageId(this.model, hostKernel(), extras);
      const resource = new EnvironmentResource(`${this.model.name}+network`, { spec: this.model, imageId, cacheDir: this.cacheDir, extras }, { parent: this });
      this.withNetwork = { resource, imageId };
    }
    return this.withNetwork;
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

/** As `spec` of a YAML VirtualCluster (nodes, allocation, overrides, network, …), with the environment and profile as objects. */
export interface VirtualClusterArgs extends Omit<ClusterDefinition["spec"], "environment" | "profile"> {
  environment: Environment;
  profile: VmProfile;
  description?: string;
  /** The site's policy, merged as for YAML definitions (defaults first, then limits). */
  policy?: SitePolicySpec;
  /** Root of the node agents' state (default ~/.local/state/vse-provider). */
  stateRoot?: string;
  /** The site policy file the agents enforce (default <stateRoot>/site-policy.yaml when it exists, else the permissive local default). */
  sitePolicyFile?: string;
}

/** A set of VMs of one environment and profile, one VirtualMachine resource per VM, parented to the cluster. */
export class VirtualCluster extends pulumi.ComponentResource {
  readonly model: ClusterModel;
  readonly resource: VirtualClusterResource;
  readonly vms: VirtualMachine[] = [];

  constructor(name: string, args: VirtualClusterArgs, opts?: pulumi.ComponentResourceOptions) {
    super("vse:index:VirtualCluster", name, {}, opts);
    // Every spec field passes through as written, so a field the schema gains reaches the model as from YAML.
    const { environment: env, profile, description, policy, stateRoot, sitePolicyFile, ...rest } = args;
    const fields = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
    const spec: ClusterDefinition["spec"] = { ...fields, environment: env.definition.doc.metadata.name, profile: profile.definition.doc.metadata.name };
    const cluster = validated("VirtualCluster", name, spec, description, (d) => d.clusters);
    const defs = emptyDefinitions();
    defs.environments.set(spec.environment, env.definition);
    defs.profiles.set(spec.profile, profile.definition);
    defs.clusters.set(name, cluster);
    if (policy)
      defs.policies!.set(
        "policy",
        validated("SitePolicy", "policy", policy, undefined, (d) => d.policies!),
      );
    const root = path.resolve(stateRoot ?? DEFAULT_STATE_DIR);
    const siteFile = sitePolicyFile ? path.resolve(sitePolicyFile) : fs.existsSync(sitePolicyFileOf(root)) ? sitePolicyFileOf(root) : null;
    // The site's policy (what the agents enforce) applies besides the one given here, which can only narrow it.
    const sitePolicy = loadSitePolicy({ file: siteFile ?? undefined });
    this.model = resolveClusters(defs, { kernelRelease: () => hostKernel().release, sitePolicy })[0];

    // What the YAML program plans per cluster (planClusters in provider/program/plan.ts).
    const m = this.model;
    const key = clusterKey(pulumi.getProject(), pulumi.getStack(), name);
    const { network, extras, kernelArgs: kernelArgsOf, hostAddress } = clusterBoot(m, key);
    const image = env.imageFor(extras);
    this.resource = new VirtualClusterResource(
      name,
      {
        name,
        stateRoot: root,
        project: pulumi.getProject(),
        stack: pulumi.getStack(),
        manager: m.allocation.manager,
        hosts: m.allocation.hosts,
        allocation: m.allocation,
        imageStore: path.join(env.cacheDir, "images"),
        sitePolicyFile: siteFile,
        ...(m.allocation.hostList ? { imageIds: [image.imageId] } : {}),
      },
      // Its VMs wait for it (their agents come from it), so for its image and profile too: a VM lists one dependency, not three.
      { parent: this, dependsOn: [image.resource, profile.resource] },
    );
    for (const vm of m.vms) {
      // accel 'auto' is resolved by a probe boot, as in the YAML program; the config follows it.
      const accel = pulumi.output(resolveAccel(vm.profile.accel, env.cacheDir));
      const kernelArgs = kernelArgsOf(vm);
      this.vms.push(
        new VirtualMachine(
          vm.name,
          {
            // The same inputs as the YAML program declares (vmInputs), but accel and the config that follows it are Outputs here.
            ...vmInputs(
              m,
              { vm, accel: "tcg", config: "", imageId: image.imageId, markers: markersFor(image.imageId) },
              {
                agentUrl: this.resource.agents.apply((agents) => agents[vm.host].url),
                token: this.resource.token,
                agentCa: this.resource.ca,
                allocationRef: this.resource.allocationRef,
              },
            ),
            accel,
            config: accel.apply((a) =>
              renderVmConfig({
                cluster: name,
                clusterKey: key,
                vm,
                image: imageRef(image.imageId),
                accel: a,
                kernelArgs,
                network,
                hostAddress: hostAddress(vm),
              }),
            ),
          },
          { parent: this.resource },
        ),
      );
    }
    this.registerOutputs({});
  }
}
